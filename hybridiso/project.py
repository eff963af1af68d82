"""A repository plus its manifest and state: what every command starts from.

Discovery (docs/faults.md row 22) gives the same project from every directory of the
repository, from each of its worktrees, and from inside an agent's
environment:

- a subdirectory or a user's linked worktree: git's common dir names the
  repository; the manifest is the main worktree's;
- a bare repository with linked worktrees: git runs against the bare dir, the
  manifest and the ignored files (``include:``) come from the worktree you
  stand in, and the workspace is fixed by the bare dir;
- a worktree or container agent's environment is a linked worktree of the
  repository, so that works by itself; a clone agent's environment is a
  repository of its own, which names its owner in a marker in its git dir
  (``hybridiso-owner``).  The marker is only believed when the owner's
  records list that clone at that path, so a changed marker cannot aim
  hybridiso anywhere else.

One identity, ``Project.id`` (12 hex digits of the sha256 of the resolved
common git dir), is the same from all of these places: it is the Docker
label ``dev.hybridiso.project``, the database branches' key, and the
``HYBRIDISO_PROJECT`` line of every environment's env file, which is how
``gc`` proves a directory in the workspace is one hybridiso made.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from hybridiso import envfile, git, json_data, names, safe_files
from hybridiso.errors import UserError
from hybridiso.process import CommandError
from hybridiso.manifest import MANIFEST_NAME, Agent, Manifest, RepoContext
from hybridiso.manifest_file import load_manifest
from hybridiso.state import PHASE_READY, AgentRecord, StateStore

# in a clone environment's git dir: the owning repository's common git dir
OWNER_MARKER = "hybridiso-owner"
STATE_FILE = "hybridiso/state.json"  # under the common dir (state.StateStore)


def project_id(common_dir: Path) -> str:
    """12 hex digits of the sha256 of the resolved common git dir: the value
    the ``dev.hybridiso.project`` label always had, so existing containers,
    networks and volumes stay this project's."""
    return hashlib.sha256(os.fsencode(common_dir)).hexdigest()[:12]


def project_name(repo: git.RepoInfo) -> str:
    """The repository's readable name: its main worktree's directory, or a
    bare repository's without ``.git`` (``shop.git`` -> ``shop``); a hidden
    bare dir (``proj/.bare``, a bare ``proj/.git``) is named by its folder."""
    if not repo.bare:
        return repo.main_root.name
    return _bare_home(repo.main_root).name


def _bare_home(bare_dir: Path) -> Path:
    """Where a bare repository "is": the dir itself (``shop.git``), or its
    folder when it hides inside one (``proj/.bare``)."""
    stem = bare_dir.name.removesuffix(".git")
    if not stem or stem.startswith("."):
        return bare_dir.parent
    return bare_dir.with_name(stem)


@dataclass(frozen=True)
class Project:
    repo: git.RepoInfo
    manifest: Manifest
    manifest_path: Path
    workspace: Path
    store: StateStore

    @property
    def root(self) -> Path:
        """Where git runs for the repository: its main worktree, or the bare dir."""
        return self.repo.main_root

    @property
    def checkout(self) -> Path:
        """The worktree whose manifest and ignored files (``include:``) are used."""
        return self.repo.checkout

    @property
    def id(self) -> str:
        return project_id(self.repo.common_dir)

    @property
    def name(self) -> str:
        return project_name(self.repo)

    def compose_project(self, agent: str) -> str:
        """The agent's compose project name.  It keeps the form it always had
        (a hash of the repository's root path: the main worktree, or the bare
        dir), which the common dir fixes, so it is the same from every
        worktree, and running agents and their named volumes keep theirs."""
        return names.compose_project_name(str(self.root), agent, self.name)

    def env_path(self, agent: Agent | str) -> Path:
        """``workspace/<name>``; the last component is never resolved, so a
        symlink there is seen for what it is (``record_problem``)."""
        name = agent if isinstance(agent, str) else agent.name
        path = self.workspace / name
        # names are validated, but never let a path leave the workspace (docs/faults.md row 3)
        if not name or path.parent != self.workspace or path.name != name:
            raise UserError(f"agent {name!r} would live outside the workspace {self.workspace}")
        return path

    def record_problem(self, name: str, record: AgentRecord) -> str | None:
        """Why hybridiso must not act on ``record`` (from ``state.json``, which
        anyone can edit), or None.  Every path it acts on is the agent's own
        place in the workspace, never a symlink, never the repository
        (docs/faults.md row 30)."""
        if record.name != name:
            return f"the record filed under {name!r} names agent {record.name!r}"
        try:
            expected = self.env_path(name)
        except UserError as e:
            return e.message
        if not isinstance(record.path, str) or os.path.normpath(record.path) != str(expected):
            return f"its recorded path {record.path} is not its place in the workspace ({expected})"
        for mine in {self.root, self.checkout, self.repo.common_dir}:
            if expected == mine or expected in mine.parents or mine in expected.parents:
                return f"its path {expected} overlaps the repository ({mine})"
        if os.path.islink(expected):
            return f"{expected} is a symlink; hybridiso never follows one it did not make"
        return self._checkout_problem(record) or self._branch_problem(name, record)

    def _checkout_problem(self, record: AgentRecord) -> str | None:
        """The checkout a record's includes were copied from is what precious
        files are compared with: one of the repository's own worktrees,
        never a place in the workspace (an env compared with itself would
        make its ``.env.local`` look like an untouched copy)."""
        if not record.checkout:
            return None
        if not isinstance(record.checkout, str) or not os.path.isabs(record.checkout):
            return f"its recorded checkout {record.checkout!r} is not a path"
        checkout = Path(os.path.realpath(record.checkout))
        if checkout == Path(os.path.realpath(self.checkout)):
            return None
        workspace = Path(os.path.realpath(self.workspace))
        if checkout == workspace or workspace in checkout.parents:
            return f"its recorded checkout {checkout} is in the workspace, not one of the repository's worktrees"
        try:
            trees = {Path(os.path.realpath(t.path)) for t in git.worktree_list(self.root)}
        except CommandError:
            trees = set()
        if checkout not in trees:
            return f"its recorded checkout {checkout} is not a worktree of the repository"
        return None

    def _branch_problem(self, name: str, record: AgentRecord) -> str | None:
        """A branch hybridiso says it created (and so deletes once merged or
        on ``down``) is the agent's own: its default ``hybridiso/<name>`` or
        the ``branch:`` the manifest gives it, never any other ref."""
        if not record.created_branch:
            return None
        allowed = {f"hybridiso/{name}"}
        agent = next((a for a in self.manifest.agents if a.name == name), None)
        if agent is not None:
            allowed.add(agent.branch_name)
        if record.branch not in allowed:
            return f"its recorded branch {record.branch!r} is not one hybridiso makes for it ({', '.join(sorted(allowed))})"
        return None

    def proves_made(self, path: Path, strategy: str, phase: str) -> bool:
        """True when ``path`` (an agent's place) is provably hybridiso's to
        remove: absent or empty, marked by its env file for this project, a
        linked worktree whose admin dir names it back, or a clone naming this
        repository as its owner.  A clone still being made (before its mark
        is written) is one when it has its own git dir.  Anything else at the
        place of a record (a forged one) is somebody's directory."""
        if not os.path.lexists(path):
            return True
        if not safe_files.is_plain_dir(path):
            return False
        if not any(True for _ in os.scandir(path)):
            return True
        if envfile.marked_for(path, self.id):
            return True
        dotgit = path / ".git"
        if os.path.isfile(dotgit) and not os.path.islink(dotgit):
            try:
                return git.worktree_admin_dir(self.repo.common_dir, path) is not None
            except UserError:
                return False  # two entries name it: never a guess
        if safe_files.is_plain_dir(dotgit):
            try:
                owner = safe_files.read_text(dotgit, OWNER_MARKER, limit=1 << 16)
            except safe_files.UnsafePath:
                return False
            if owner is not None:
                return Path(owner.strip()) == self.repo.common_dir
            return strategy == "clone" and phase != PHASE_READY
        return False

    def owns_worktree(self, path: Path, branch: str | None, records: dict[str, AgentRecord]) -> bool:
        """True when the worktree git lists at ``path`` is provably one
        hybridiso made: the place in the workspace of an agent that is
        recorded there, declared in the manifest, or on its default branch
        ``hybridiso/<name>``.  Anything else is the user's (docs/faults.md row 28)."""
        if path.parent != self.workspace:
            return False
        name = path.name
        record = records.get(name)
        if record is not None and isinstance(record.path, str) and os.path.normpath(record.path) == str(path):
            return True
        return any(a.name == name for a in self.manifest.agents) or branch == f"hybridiso/{name}"


def default_workspace(repo: git.RepoInfo) -> Path:
    """``<repo>.agents`` beside the repository: beside the main worktree, or
    beside a bare repository (``shop.git`` -> ``shop.agents``; a hidden bare
    dir ``proj/.bare`` -> ``proj.agents`` beside ``proj``)."""
    if not repo.bare:
        return repo.main_root.parent / f"{repo.main_root.name}.agents"
    home = _bare_home(repo.main_root)
    return home.parent / f"{home.name}.agents"


def workspace_problem(workspace: Path) -> str | None:
    """Why environments cannot be made in ``workspace`` (None: they can),
    found without making anything (``plan``): it, or the nearest directory
    above it that exists, must be a directory this user can write."""
    at = workspace
    while not os.path.lexists(at) and at.parent != at:
        at = at.parent
    if not at.is_dir():
        return f"the workspace {workspace} cannot be created: {at} is not a directory"
    if not os.access(at, os.W_OK | os.X_OK):
        return f"the workspace {workspace} cannot be created: {at} is not writable by this user (uid {os.getuid()})"
    return None


def require_workspace(workspace: Path) -> None:
    """One error naming the path and a fix when environments cannot be made
    in ``workspace``, before any agent is (issue 16: not one bare
    PermissionError per agent).  Nothing is left made: a directory is
    tried (and removed) in it, or in the nearest directory
    above it that exists: permission bits do not tell everything (root in
    /sys, a read-only mount, a full disk)."""
    why = workspace_problem(workspace)
    at = workspace
    while not os.path.lexists(at) and at.parent != at:
        at = at.parent
    if why is None:
        try:
            os.rmdir(tempfile.mkdtemp(prefix=".hybridiso-probe-", dir=at))
            return
        except OSError as e:
            why = f"the workspace {workspace} cannot be created: {e.strerror or e}"
    if not at.is_dir():
        hint = f"set `workspace:` in hybridiso.yaml to a directory you can write, or move {at} (not a directory) out of the way"
    elif os.access(at, os.W_OK | os.X_OK):
        hint = f"set `workspace:` in hybridiso.yaml to a directory on a file system you can write (not {at})"
    else:
        hint = (
            f"set `workspace:` in hybridiso.yaml to a directory you can write, or let the owner of {at} "
            f"make it yours: mkdir -p '{workspace}' && chown {os.getuid()}:{os.getgid()} '{workspace}'"
        )
    raise UserError(why, hint=hint)


def find_repo(cwd: Path) -> git.RepoInfo:
    """The repository ``cwd`` belongs to, seen the same from everywhere."""
    repo = git.discover(cwd)
    owner = _clone_owner(repo)
    if owner is not None:
        return owner
    if repo.bare:
        return _bare_checkout(repo, repo.toplevel)
    return repo


def load_project(cwd: Path, manifest_file: Path | None = None, *, manifest_optional: bool = False) -> Project:
    """The repository around ``cwd`` and its manifest.  With
    ``manifest_optional``, a repository without hybridiso.yaml gets the
    defaults (for commands that measure rather than manage, like
    ``report --compare``)."""
    repo = find_repo(cwd)
    path = manifest_file if manifest_file is not None else repo.checkout / MANIFEST_NAME
    if not path.is_absolute():
        path = (cwd / path).resolve()
    context = repo_context(repo)
    if manifest_optional and manifest_file is None and not path.exists():
        manifest = Manifest()
        check_workspace(manifest, path, context)
    else:
        manifest = load_manifest(path, context)  # the workspace is checked with the rest
    return Project(repo, manifest, path, manifest.workspace_path(context), StateStore(repo.common_dir))


def repo_context(repo: git.RepoInfo) -> RepoContext:
    """What the manifest check knows of the repository: where a relative
    workspace starts, and what a workspace must keep clear of (docs/faults.md row 29)."""
    try:
        trees = tuple(wt.path for wt in git.worktree_list(repo.main_root))
    except CommandError:  # git cannot list them: the other checks still hold
        trees = ()
    return RepoContext(repo.main_root, repo.common_dir, default_workspace(repo), trees)


def check_workspace(manifest: Manifest, path: Path, context: RepoContext) -> None:
    """The workspace check alone, for a manifest that was not read from a file."""
    from hybridiso.manifest import Checked, ManifestError
    from hybridiso.manifest_checks import workspace_problems

    problems = workspace_problems(Checked(manifest, {}, list(range(len(manifest.agents))), set()), context)
    if problems:
        raise ManifestError(path, problems)


# --- from inside an agent's environment ---------------------------------------


def write_owner_marker(clone_git_dir: Path, owner_common_dir: Path) -> None:
    """Name the owning repository in a clone environment's git dir (again
    only when it says something else: clones made before the marker existed
    get it from their next `up`)."""
    text = f"{owner_common_dir}\n"
    try:
        if safe_files.read_text(clone_git_dir, OWNER_MARKER, limit=1 << 16) == text:
            return
    except safe_files.UnsafePath:
        pass  # replaced, never followed: write_atomic renames over it
    safe_files.write_atomic(clone_git_dir, OWNER_MARKER, text, mode=0o644)


def _clone_owner(repo: git.RepoInfo) -> git.RepoInfo | None:
    """The owning repository when ``repo`` is a clone agent's environment."""
    if repo.bare or repo.toplevel != repo.main_root:
        return None  # a clone env is the main worktree of a repository of its own
    try:
        text = safe_files.read_text(repo.common_dir, OWNER_MARKER, limit=1 << 16)
    except safe_files.UnsafePath as e:
        raise UserError(f"{repo.toplevel} looks like an agent's clone, but {e.message}", hint=e.hint) from None
    if text is None:
        return None
    owner_common = Path(text.strip())
    record = None
    if owner_common.is_absolute() and safe_files.is_plain_dir(owner_common):
        record = _record_at(_records(owner_common), repo.toplevel, strategies=("clone",))
    if record is None:
        raise UserError(
            f"{repo.toplevel} is marked as an agent's clone of the repository at {owner_common}, "
            "but that repository's hybridiso records do not list it there",
            hint=f"run hybridiso from the repository itself; if this clone is a repository of its own now, "
            f"delete {repo.common_dir / OWNER_MARKER}",
        )
    try:
        owner = git.discover(owner_common)
    except git.BareRepository:
        owner = _bare_info(owner_common.resolve())
    if owner.common_dir != owner_common.resolve():
        raise UserError(f"{repo.common_dir / OWNER_MARKER} names {owner_common}, which is not a repository's git dir")
    if owner.bare:
        return _bare_checkout(owner, repo.toplevel)
    return owner


def _bare_info(common_dir: Path) -> git.RepoInfo:
    """A bare repository seen from one of its agents' clones (its checkout
    is filled in from the clone's record)."""
    return git.RepoInfo(
        toplevel=common_dir,
        common_dir=common_dir,
        main_root=common_dir,
        has_commits=git.resolve_commit(common_dir, "HEAD") is not None,
        shallow=(common_dir / "shallow").exists(),
        bare=True,
        checkout=common_dir,
    )


def _bare_checkout(repo: git.RepoInfo, standing_in: Path) -> git.RepoInfo:
    """A bare repository's manifest and files come from the worktree you
    stand in; from inside an agent's environment, from the worktree that
    agent was made from (its record's ``checkout``)."""
    records = _records(repo.common_dir)
    record = _record_at(records, standing_in)
    if record is None:
        if standing_in == repo.main_root:
            raise UserError(f"{repo.main_root} is a bare repository with no working tree", hint="run hybridiso from one of its worktrees")
        return replace(repo, checkout=standing_in)
    # the worktree it was made from, if that is still one of the repository's
    # own worktrees (not gone, not another agent's)
    checkout = record.get("checkout")
    trees = {wt.path.resolve() for wt in git.worktree_list(repo.main_root) if not wt.bare}
    agents = {os.path.normpath(r["path"]) for r in records.values() if isinstance(r.get("path"), str)}
    if isinstance(checkout, str) and checkout and Path(checkout) in trees and os.path.normpath(checkout) not in agents:
        return replace(repo, checkout=Path(checkout))
    raise UserError(
        f"{standing_in} is agent {record.get('name')}'s environment, and the worktree it was made from is not known any more",
        hint=f"run hybridiso from one of the repository's own worktrees (git -C '{repo.main_root}' worktree list)",
    )


def _records(common_dir: Path) -> dict[str, dict[str, Any]]:
    """The records in a repository's state file, read without trusting it:
    anything unreadable is no records (the state module rebuilds it)."""
    try:
        text = safe_files.read_text(common_dir, STATE_FILE)
        data = json_data.loads(text) if text else {}
    except (OSError, UserError, ValueError):
        return {}
    agents = data.get("agents") if isinstance(data, dict) else None
    return {k: v for k, v in agents.items() if isinstance(v, dict)} if isinstance(agents, dict) else {}


def _record_at(records: dict[str, dict[str, Any]], path: Path, strategies: tuple[str, ...] = ()) -> dict[str, Any] | None:
    for record in records.values():
        where = record.get("path")
        if isinstance(where, str) and os.path.normpath(where) == str(path) and (not strategies or record.get("strategy") in strategies):
            return record
    return None
