"""``clone``: a full, independent repository, made cheaply.

``git clone --local`` hard-links the object files (no copy, no network) and the
clone is independent from then on: it has its own refs, config, hooks and
remotes.  Where hard links are impossible (the workspace on another file
system) the objects are copied (``--no-hardlinks``), and the record and ``up``
say so (docs/faults.md row 36).  ``origin`` points where the user's origin points, so the
agent can push; the remote ``hybridiso-base`` is the local repository, which is
where ``sync`` fetches from.  What the repository ignores through its own
``info/exclude`` and ``core.excludesFile`` the clone ignores too, so files
``include:`` copies never look like the agent's work.  docs/clone-strategy.md
has the measurements behind the choice of ``--local`` over ``--shared``,
``--reference`` and partial clones.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from hybridiso import cleanup, envfile, git, output, safe_files
from hybridiso.env_context import EnvContext
from hybridiso.strategies.base import Observation, host_setup
from hybridiso.work.inventory import MainRepo, SnapshotPlan, WorkReport, add_submodule_work, store_work

NAME = "clone"
SHARES_REFS = False
BASE_REMOTE = "hybridiso-base"


def create(ctx: EnvContext) -> None:
    """``ctx.path`` is absent or empty (lifecycle.prepare checked it)."""
    repo, path, branch = ctx.project.root, ctx.path, ctx.record.branch
    path.parent.mkdir(parents=True, exist_ok=True)
    ctx.record.clone_objects = git.clone_local(repo, path, BASE_REMOTE, ctx.project.repo.common_dir)
    made = git.current_branch(path)  # git clone's local copy of the repository's HEAD branch
    copy_ignore_rules(ctx)
    urls = git.config_values(repo, "remote.origin.url")
    if urls:
        pushes = [_from(repo, u) for u in git.config_values(repo, "remote.origin.pushurl")]
        git.add_remote(path, "origin", _from(repo, urls[-1]), pushes)
    existing = git.branch_commit(repo, branch)
    track = ctx.record.track if existing is None else ""
    start = existing or (git.resolve_commit(repo, track) if track else None) or ctx.record.base_commit or "HEAD"
    git.checkout_new_branch(path, branch, start)
    if track.startswith("refs/remotes/origin/") and urls:
        # `branch: feature` that only origin has: tracks origin/feature in the
        # clone as in the repository (its remote-tracking refs mirrored locally)
        git.fetch(path, BASE_REMOTE, "+refs/remotes/origin/*:refs/remotes/origin/*")
        git.set_upstream(path, branch, track.removeprefix("refs/remotes/"))
    if made and made != branch:
        # a stale copy of that branch nobody moves: it would keep whatever base
        # later drops (a purged secret, docs/faults.md row 35) and look like a branch of
        # the agent's; base lives in refs/remotes/hybridiso-base/ instead
        git.delete_branch(path, made)


EXCLUDE_HEADER = (
    "# written by hybridiso: the repository's own info/exclude, so the clone ignores\n"
    "# what the repository ignores (files include: copies are not the agent's work)\n"
)


def copy_ignore_rules(ctx: EnvContext) -> None:
    """The clone's ``info/exclude`` is the repository's, plus the env file;
    a ``core.excludesFile`` the repository's own config sets is set in the
    clone too (a global one applies to both already).  Written without
    following a symlink the agent may have put there (sync refreshes it)."""
    common = ctx.project.repo.common_dir
    try:
        theirs = safe_files.read_text(common, "info/exclude") or ""
    except (OSError, safe_files.UnsafePath) as e:
        # the clone then shows those files as untracked: the safe side (seen as work)
        output.warn(f"{ctx.name}: the repository's info/exclude is not copied into the clone: {e}")
        theirs = ""
    lines = theirs.splitlines()
    if f"/{envfile.ENV_FILE}" not in lines:
        lines.append(f"/{envfile.ENV_FILE}")
    text = EXCLUDE_HEADER + "\n".join(lines) + "\n"
    if safe_files.read_text(ctx.path, ".git/info/exclude") != text:
        safe_files.write_atomic(ctx.path, ".git/info/exclude", text, mode=0o644, dir_mode=0o755)
    excludes = git.local_config_path(ctx.project.root, "core.excludesFile")
    if excludes is not None:
        absolute = str((ctx.project.root / excludes).resolve()) if not Path(excludes).is_absolute() else excludes
        if git.local_config_path(ctx.path, "core.excludesFile") != absolute:
            git.set_config(ctx.path, "core.excludesFile", absolute)


def _from(repo: Path, url: str) -> str:
    """``url`` as seen from ``repo``, so it means the same in the clone: a
    relative path (``../origin.git``) is made absolute; URLs (``https://``,
    ``git@host:path``) are kept as written."""
    is_url = "://" in url or (":" in url and "/" not in url.split(":", 1)[0])
    if is_url or Path(url).is_absolute():
        return url
    return str((repo / url).resolve())


def start(ctx: EnvContext) -> None:
    return None


def remove(ctx: EnvContext) -> None:
    cleanup.remove_tree_or_explain(ctx.path, f"agent {ctx.name}")


def observe(ctx: EnvContext) -> Observation:
    exists = ctx.path.is_dir()
    registered = (ctx.path / ".git").is_dir()
    branch = git.current_branch(ctx.path) if registered else None
    head = git.resolve_commit(ctx.path, "HEAD") if registered else None
    problems = () if registered or not exists else ("directory exists but is not a git clone",)
    return Observation(exists, registered, branch, head, None, problems)


def inventory(ctx: EnvContext, main: MainRepo) -> WorkReport:
    """A clone is a repository of its own: every ref (other branches, tags,
    notes, ...), the stash, the HEAD reflog and its submodules can hold
    commits that exist nowhere else (issue 11, docs/faults.md row 23).  Only what the
    main repository's refs reach is safe: the clone's own remote-tracking
    refs (``hybridiso-base/*``, ``origin/*``) are refs the agent can move or
    forge, and a branch it pushed may since have been deleted there."""
    report = WorkReport()
    path = ctx.path
    if not path.is_dir():
        return report  # its repository went with its directory
    problem, blocker = _git_dir_problem(path)
    if problem:
        report.readable = False
        report.unreadable.append(f"{path}: {problem}")
        report.force_blocker = blocker
        report.repair = "restore its .git directory (or move the files you need out of it)"
        # its own objects are gone (or unreadable): the files can still be
        # saved into the main repository, on top of where the clone started
        report.snapshot = SnapshotPlan(main.common_dir, False, ctx.record.base_commit)
        return report
    found = store_work(path, path / ".git", branch=ctx.record.branch, safe_prefixes=(), count_tags=True, main=main)
    report.commits, report.refs, report.stash = found.commits, found.refs, found.stash
    report.detached, report.head, report.tips = found.detached, found.head, found.tips
    report.worktrees = found.worktrees
    add_submodule_work(report, path)
    return report


def _git_dir_problem(path: Path) -> tuple[str, str]:
    """(why git cannot read the clone, why --force cannot save it); ("", "")
    when it can.  A ``.git`` directory git cannot read may still hold the
    only copy of commits: --force refuses to delete it (docs/faults.md row 24)."""
    dotgit = path / ".git"
    if not os.path.lexists(dotgit):
        return "its .git directory is missing, so git cannot read it", ""
    if dotgit.is_symlink() or not dotgit.is_dir():
        return "its .git is not the clone's own directory (a file or a symlink), so git cannot read it as this clone", ""
    loc = git.locate(path)
    if loc.toplevel is None or loc.git_dir is None:
        blocker = f"its .git directory may hold commits git cannot read; repair it (`git -C '{path}' fsck`) or move it out of the workspace"
        return f"git cannot read its .git directory: {loc.why}", blocker
    if os.path.realpath(loc.toplevel) != os.path.realpath(path) or os.path.realpath(loc.git_dir) != os.path.realpath(dotgit):
        return f"git reads it as {loc.git_dir}, not as its own .git directory", "its .git directory is not the clone's own"
    return "", ""


def exec_argv(ctx: EnvContext, argv: Sequence[str], env: dict[str, str]) -> tuple[list[str], Path | None]:
    return list(argv), ctx.path


run_setup = host_setup  # setup runs in the environment's directory, on the host
