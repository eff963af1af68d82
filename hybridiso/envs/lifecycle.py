"""Create and remove one environment, the same steps for every strategy.

A template method (like tox's ``ToxEnv``): the strategy lays down files and
starts what runs; this module does what every environment needs around that
(submodules, includes, env file, setup, timings) and the safety checks before
removal (docs/faults.md row 5: nothing the user made is lost).
"""
from __future__ import annotations

import dataclasses
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from hybridiso import envfile, git, output, process_groups, ready_marker, safe_files, setup_runner, strategies
from hybridiso.work import backups
from hybridiso.envs import branches
from hybridiso.envs import includes
from hybridiso.services import branches as service_branches
from hybridiso.errors import Cancelled, UserError
from hybridiso.process import CommandError
from hybridiso.manifest import Agent
from hybridiso.project import Project, write_owner_marker
from hybridiso.state import PHASE_READY, AgentRecord, ProcessGroup
from hybridiso.env_context import EnvContext, environment_for
from hybridiso.strategies.base import Strategy
from hybridiso.work.inventory import MainRepo, Tip, WorkReport, submodule_key

__all__ = ["WorkReport"]  # re-exported: callers know it as lifecycle.WorkReport

ENV_EXCLUDE = "/" + envfile.ENV_FILE
PRECIOUS_DEFAULT = (".env", ".env.*", "*.local")
# a half-written checkout file larger than this is kept as work, not compared
MAX_CUT_SHORT_BYTES = 64 * 1024 * 1024


def log_path(project: Project, name: str, what: str) -> Path:
    return log_file(project, name, what).path


def log_file(project: Project, name: str, what: str) -> setup_runner.LogFile:
    """``logs/<agent>/<what>.log`` in the state dir, walked from the git dir
    without following a symlink (docs/faults.md row 31)."""
    store = project.store
    rel = PurePosixPath(*store.logs_dir.relative_to(store.anchor).parts, name, f"{what}.log")
    return setup_runner.LogFile(store.anchor, rel)


def _check(ctx: EnvContext) -> None:
    if ctx.cancel.is_set():
        raise Cancelled(ctx.name)


def prepare(ctx: EnvContext, refs: branches.Refs | None = None, carried: AgentRecord | None = None) -> None:
    """Check the target and note what this run is about to create, so the
    record (saved by the caller before any git call) can roll it back.

    Where the branch starts is decided here, as git would (branches.py): an
    existing branch is checked out and forks from where it left base; one
    that only a remote has is created from it, tracking it.  ``carried`` is
    the previous record of an environment made again (its directory was
    deleted by hand, or its creation was undone): a branch hybridiso made
    then stays hybridiso's, with the base it forked from (issue 11)."""
    path = ctx.path
    if path.is_symlink() or (path.exists() and (not path.is_dir() or any(path.iterdir()))):
        raise UserError(
            f"{path} already exists and is not a hybridiso environment of agent {ctx.name}",
            hint="move it away, or run `hybridiso gc` to find orphan directories",
        )
    record = ctx.record
    strategy = strategies.get(record.strategy)
    if strategy.SHARES_REFS:
        _branch_free(ctx)
    refs = refs if refs is not None else branches.Refs.read(ctx.project.root)
    explicit = ctx.agent is not None and ctx.agent.branch is not None
    start = branches.start_for(refs, record.branch, explicit=explicit)
    if carried is not None and carried.branch != record.branch:
        carried = None
    if start.commit is not None and record.base_commit is not None:
        record.base_commit = branches.fork_point(ctx.project.root, start.commit, record.base_commit, carried.base_commit if carried else None)
    record.track = start.track
    # the branch is ours to delete (down, gc, rollback) when this run makes
    # it, or when hybridiso made it for this agent before (carried)
    made_now = not start.exists and not start.track
    made_before = carried is not None and carried.created_branch and start.exists
    record.created_branch = strategy.SHARES_REFS and (made_now or made_before)
    record.owns_path = True
    if ctx.agent is not None:  # in the journal before any file is copied
        record.include_patterns = includes.patterns_for(ctx.project.checkout, ctx.project.manifest.include_for(ctx.agent))


def _branch_free(ctx: EnvContext) -> None:
    """git checks a branch out in one worktree at a time: name the checkout
    that holds it (docs/faults.md row 2: never git's raw "already used by worktree")."""
    for wt in git.worktree_list(ctx.project.root):
        if wt.branch == ctx.record.branch and wt.path.resolve() != ctx.path.resolve():
            hint = (
                # never a repository-wide `git worktree prune` (docs/faults.md row 28)
                f"its directory is gone (moved, or on a disk not mounted now?): put it back, or if it is gone "
                f"for good, `git worktree remove --force '{wt.path}'` frees the branch"
                if wt.prunable
                else f"switch that checkout to another branch (git -C '{wt.path}' switch -), or give agent {ctx.name} another `branch:`"
            )
            raise UserError(f"branch {ctx.record.branch} is checked out at {wt.path}; agent {ctx.name} needs it for its own worktree", hint=hint)


def stop_setups(ctx: EnvContext) -> None:
    """Stop what is left of setup commands a killed run recorded (docs/faults.md
    row 38: they would write on into the environment made again at the same
    path).  Only processes proven to be those commands are signalled."""
    record = ctx.record
    if not record.setup_processes:
        return
    left = process_groups.stop(record.setup_processes)
    if left:
        raise UserError(
            f"agent {ctx.name}: setup processes of an earlier run could not be stopped: {', '.join(left)}",
            hint="stop them yourself (kill -9 PID), then run the command again",
        )
    record.setup_processes = []


def stop_execs(ctx: EnvContext, *, force: bool) -> None:
    """A command ``hybridiso exec`` started in the environment still runs:
    removing the directory under it would lose what it writes next.
    Refused; ``--force`` stops it first (its whole tree, by its token)."""
    group = process_groups.exec_group(ctx.project.id, ctx.name)
    running = process_groups.exec_holders(group.token)
    if not running:
        return
    if not force:
        raise UserError(
            f"agent {ctx.name}: a command `hybridiso exec` started still runs in {ctx.path}: {process_groups.listing(running)}; nothing was removed",
            hint=f"wait for it to finish, or `hybridiso down --force {ctx.name}` stops it and saves the work first",
        )
    left = process_groups.stop([group])
    if left:
        raise UserError(
            f"agent {ctx.name}: commands `hybridiso exec` started could not be stopped: {', '.join(left)}; nothing was removed",
            hint="stop them yourself (kill -9 PID), then run the command again",
        )


def rollback(ctx: EnvContext, *, check_work: bool) -> None:
    """Undo a creation that never reached ``ready``: only what it made.

    ``check_work``: the creation is an earlier run's (a crash, a ``kill
    -9``), so anything may have been written into it since: when the
    inventory finds work, nothing is removed and ``WorkKept`` says what
    (docs/faults.md row 25).  This run's own half-made environments (Ctrl-C, a full
    disk) are rolled back without it: they hold only what this run made.
    Data written into its database branches is work either way (what setup
    wrote is part of what hybridiso made: setup re-takes the baseline)."""
    stop_setups(ctx)  # first: nothing may write into what is being removed
    changed = service_branches.changed(ctx)
    if changed:
        # docs/faults.md rows 25, 26: data written into an unfinished environment is work
        raise WorkKept(
            f"agent {ctx.name} was never finished, but {'; '.join(changed)}; nothing was rolled back",
            hint=f"`hybridiso down --force {ctx.name}` dumps the data and removes it; then `hybridiso up` creates it again",
        )
    strategy = strategies.get(ctx.record.strategy)
    if not check_work:
        # if this fails half-way, the next run finishes it without asking
        # again: nobody else could have written into it when it was decided
        ctx.record.begin_removal(ctx.path)
    elif ctx.record.owns_path and not ctx.record.removal_begun(ctx.path):
        # the branch survives a rollback once it moved (below); a clone's does not
        losing = work_at_risk(ctx, keep_branch=strategy.SHARES_REFS)
        if not losing.empty:
            raise WorkKept(
                f"agent {ctx.name}: its unfinished environment (an earlier `up` stopped half-way) holds work: {losing.describe()}; "
                "kept it and its record",
                hint=f"look in {ctx.path}: `hybridiso down {ctx.name}` names what is there and `--force` saves it to a backup "
                f"(`hybridiso restore {ctx.name}`), then `hybridiso up {ctx.name}` creates it anew",
            )
    if ctx.record.owns_path:
        strategy.remove(ctx)
    service_branches.release(ctx)
    if strategy.SHARES_REFS and ctx.record.created_branch:
        tip = git.branch_commit(ctx.project.root, ctx.record.branch)
        # a branch that moved has commits somebody made: keep it
        if tip is not None and tip == ctx.record.base_commit:
            git.delete_branch(ctx.project.root, ctx.record.branch)


def create(ctx: EnvContext) -> None:
    """Bring one environment to ``ready``; record timings of each step."""
    assert ctx.agent is not None
    project, record = ctx.project, ctx.record
    strategy = strategies.get(record.strategy)
    record.checkout = str(project.checkout)
    t0 = time.monotonic()
    with ctx.steps.step("create"):
        strategy.create(ctx)
    record.timings["create"] = round(time.monotonic() - t0, 3)
    _check(ctx)
    t = time.monotonic()
    with ctx.steps.step("includes"):
        if git.init_submodules(ctx.path):
            record.timings["submodules"] = round(time.monotonic() - t, 3)
        if not strategy.SHARES_REFS:  # a repository of its own
            clone_git_dir = git.git_dir(ctx.path)
            git.add_exclude(clone_git_dir, ENV_EXCLUDE)
            # a command run from inside the clone acts on this project (docs/faults.md row 22)
            write_owner_marker(clone_git_dir, project.repo.common_dir)
        t = time.monotonic()
        service_env = service_branches.provision(ctx)
        if service_env:
            record.service_env = {**record.service_env, **service_env}
            record.timings["services"] = round(time.monotonic() - t, 3)
        t = time.monotonic()
        included = includes.copy_includes(project.checkout, ctx.path, project.manifest.include_for(ctx.agent))
        record.included = included.copied
        for rel in included.kept:
            output.warn(f"{ctx.name}: include {rel} was not copied: the branch has its own file there, kept as it is")
        envfile.write_env_file(ctx.path, environment_for(project, ctx.agent, record))
        record.timings["includes"] = round(time.monotonic() - t, 3)
    _check(ctx)
    run_setup(ctx)
    _check(ctx)
    t = time.monotonic()
    with ctx.steps.step("start"):
        strategy.start(ctx)  # a new environment: whatever it did, it was created
    record.timings["start"] = round(time.monotonic() - t, 3)
    record.timings["total"] = round(time.monotonic() - t0, 3)
    # last: what proves it finished when the state file is lost (issue 11)
    ready_marker.mark(project.repo.common_dir, ctx.path, ctx.name)
    record.phase = PHASE_READY


def _started(ctx: EnvContext, group: ProcessGroup) -> None:
    ctx.record.setup_processes.append(group)
    ctx.persist()


def run_setup(ctx: EnvContext, run_label: str = "up") -> bool:
    """Run setup when it never ran or its inputs (commands, lockfiles) changed."""
    assert ctx.agent is not None
    stop_setups(ctx)  # a killed run's setup must not run on beside this one, or beside nothing
    commands = ctx.project.manifest.setup_for(ctx.agent)
    digest = setup_runner.setup_hash(ctx.path, commands)
    if digest == ctx.record.setup_hash:
        return False
    t = time.monotonic()
    if commands:
        quiet = service_branches.settled(ctx)
        try:
            # `up` admits it when the machine has room for it (issue 15)
            with ctx.steps.step("setup"):
                t = time.monotonic()  # its time, not the wait for room
                # where the work runs: on the host, or in the agent's image (issue 12)
                strategies.get(ctx.record.strategy).run_setup(
                    ctx,
                    commands,
                    environment_for(ctx.project, ctx.agent, ctx.record),
                    log_file(ctx.project, ctx.name, "setup"),
                    run_label=run_label,
                    on_start=lambda group: _started(ctx, group),
                )
        except setup_runner.SetupInterrupted:
            raise Cancelled(ctx.name) from None
        finally:
            # finished, failed or stopped: nothing of it is left to find
            # (a command that succeeded may leave a daemon on purpose)
            ctx.record.setup_processes = []
            # what setup wrote into an untouched database branch is part of
            # what hybridiso made, not the agent's work (docs/faults.md row 26): a
            # failed or interrupted setup's too, so its rollback may drop it
            service_branches.rebaseline(ctx, quiet)
    ctx.record.setup_hash = digest
    ctx.record.timings["setup"] = round(time.monotonic() - t, 3)
    return True


# --- removal ------------------------------------------------------------------


class WorkKept(UserError):
    """A rollback found work in an unfinished environment and kept it (docs/faults.md row 25)."""


def precious_patterns(project: Project, agent: Agent | None, record: AgentRecord | None = None) -> list[str]:
    """What makes an ignored file precious: the manifest's ``include:`` for
    the agent, the patterns the record kept from when it was created (the
    agent may have left the manifest since), the files that were copied in,
    ``.worktreeinclude`` and the usual secrets (``.env``, ``*.local``)."""
    manifest_patterns = project.manifest.include_for(agent) if agent is not None else project.manifest.defaults.include
    kept: list[str] = []
    if record is not None:
        # a tampered state file must not make this fail (nor make less precious)
        patterns = record.include_patterns if isinstance(record.include_patterns, list) else []
        copied = record.included
        kept = [p for p in patterns if isinstance(p, str)]
        kept += [_literal(rel) for rel in (copied if isinstance(copied, list) else []) if isinstance(rel, str)]
    return includes.patterns_for(project.checkout, list(dict.fromkeys([*manifest_patterns, *kept, *PRECIOUS_DEFAULT])))


def _literal(rel: str) -> str:
    """A gitignore pattern matching exactly the file ``rel``."""
    escaped = "".join("\\" + c if c in "*?[]\\!# " else c for c in rel)
    return "/" + escaped


def precious_work(project: Project, agent: Agent | None, path: Path, record: AgentRecord | None = None) -> list[str]:
    """Ignored files under ``path`` that matter (``.env`` and the like, and
    what ``include:`` lists), except an include copied in and left alone
    (compared with the checkout it was copied from: a bare repository's
    agent got its includes from the worktree it was made from)."""
    source_root = Path(record.checkout) if record is not None and record.checkout else project.checkout
    found = []
    for rel in includes.ignored_files_matching(path, precious_patterns(project, agent, record)):
        if rel == envfile.ENV_FILE:
            continue
        source = source_root / rel
        if source.is_file() and _same_content(source, path / rel):
            continue
        found.append(rel)
    return found


def main_repo(project: Project) -> MainRepo:
    """The main repository's refs and stash, read once for many inventories."""
    return MainRepo.load(project.root, project.repo.common_dir)


def prefetch(main: MainRepo, contexts: list[EnvContext]) -> None:
    """Read what the inventories of ``contexts`` will ask of git about
    their linked worktrees (HEADs, reflogs) in two processes for all of
    them (issue 15).  Only environments whose files the host trusts: what
    an agent's container wrote is read on its own, as before."""
    admins, branches = [], []
    for ctx in contexts:
        strategy = strategies.get(ctx.record.strategy)
        if not strategy.SHARES_REFS or strategy.UNTRUSTED_FILES:
            continue
        try:
            admin = main.admin_dir(ctx.path)
        except git.AmbiguousWorktree:
            continue  # refused by its own inventory
        if admin is not None:
            admins.append(admin)
            branches.append(ctx.record.branch)
    if admins:
        main.prefetch(admins, branches)


def inspect_work(ctx: EnvContext, main: MainRepo | None = None) -> WorkReport:
    """Everything the environment holds that removing it could lose: its
    strategy's inventory (git: commits, refs, stash, reflog, submodules,
    unreadable) plus its files.  ``main`` is shared by callers that inspect
    many environments (gc)."""
    strategy = strategies.get(ctx.record.strategy)
    # the databases first: they are work whatever became of the directory
    databases = service_branches.changed(ctx)
    report = _files_and_git(ctx, strategy, main)
    report.databases = databases
    return report


def _files_and_git(ctx: EnvContext, strategy: Strategy, main: MainRepo | None) -> WorkReport:
    try:
        report = strategy.inventory(ctx, main if main is not None else main_repo(ctx.project))
    except CommandError as e:
        # git fails on what it reads there (a corrupt ref, a broken pack): that is no proof of no work
        report = WorkReport(readable=False)
        why = _last_words(e)
        report.unreadable.append(f"{ctx.path}: git fails reading it ({why})")
        report.force_blocker = f"git fails reading it ({why}); repair it (`git fsck`) first"
        return report
    if not report.readable and ctx.record.phase != PHASE_READY and _only_checkout_leftovers(ctx):
        # a creation killed before its repository was whole (a clone half
        # made): nothing in it but what that run was checking out
        return dataclasses.replace(report.without("unreadable"), force_blocker="", snapshot=None)
    if not report.readable or not ctx.path.is_dir():
        return report
    try:
        # index flags (--skip-worktree, --assume-unchanged) hide nothing here (attack11 #1)
        for code, name in git.work_status(ctx.path):
            if name == envfile.ENV_FILE:
                continue
            (report.untracked if code == "??" else report.modified).append(name)
        ignored = git.ignored_entries(ctx.path, leave_out=(envfile.ENV_FILE,))
        # a precious file is an ignored one (git.ignored_entries lists every
        # ignored path, inside untracked folders too): none ignored, none
        # precious, and its own listing is not asked for (issue 15)
        report.precious = precious_work(ctx.project, ctx.agent, ctx.path, ctx.record) if ignored else []
        _sort_ignored(ctx, report, ignored)
        _nested_repositories(ctx, report)
        if ctx.record.phase != PHASE_READY:
            _drop_checkout_leftovers(ctx, report)
    except CommandError as e:
        # e.g. a corrupt index, a submodule path made a symlink: its files
        # cannot be listed, so nothing can tell they are safe (docs/faults.md row 24)
        why = _last_words(e)
        report.readable = False
        report.unreadable.append(f"{ctx.path}: git cannot list its files ({why})")
        report.force_blocker = report.force_blocker or f"git cannot list its files ({why}); fix that in {ctx.path} first"
    return report


def _sort_ignored(ctx: EnvContext, report: WorkReport, ignored: list[git.Ignored]) -> None:
    """Ignored files are work unless the repository's own rules ignore them
    (docs/lifecycle.md, "Ignored files"): a rule is the repository's when it
    is a ``.gitignore`` with the same content in the commit the environment
    was made from (or synced onto), a line of the repository's
    ``info/exclude`` (or the env file's), or the repository's
    ``core.excludesFile``.  A rule the environment added -- a ``.gitignore``
    the commit lacks or that was changed, a line added to a clone's
    ``info/exclude``, a ``core.excludesFile`` set in its config -- hides
    nothing: what it ignores is ``hidden`` work.  What the repository's rules
    ignore is named (``ignored``) and disposable, unless precious."""
    entries = [e for e in ignored if e.entry not in report.precious]
    if not entries:
        return
    rules = _RepoRules(ctx, {e.source for e in entries})
    for e in entries:
        (report.ignored if rules.owns(e) else report.hidden).append(e.entry)


class _RepoRules:
    """Which ignore rules are the repository's own (see ``_sort_ignored``)."""

    def __init__(self, ctx: EnvContext, sources: set[str]) -> None:
        self.env = ctx.path
        common = ctx.project.repo.common_dir
        self.main_exclude = os.path.realpath(common / "info" / "exclude")
        text = safe_files.read_text(common, "info/exclude") if os.path.isfile(self.main_exclude) else ""
        self.main_lines = {line.strip() for line in (text or "").splitlines()} | {ENV_EXCLUDE}
        self._excludes_file: str | None = None
        self.root = ctx.project.root
        per_dir = sorted(s for s in sources if s and not os.path.isabs(s) and PurePosixPath(s).name == ".gitignore" and not s.startswith(".git/"))
        base = ctx.record.base_commit if isinstance(ctx.record.base_commit, str) and ctx.record.base_commit else "HEAD"
        here = git.blob_ids(ctx.path, [s for s in per_dir if _regular(ctx.path / s)])
        there = git.tree_blobs_at(ctx.path, base, per_dir)
        self.same = {s for s in per_dir if s in here and here[s] == there.get(s)}

    def owns(self, e: git.Ignored) -> bool:
        if not e.source:
            return False
        if e.source in self.same:
            return True
        path = os.path.realpath(os.path.join(self.env, e.source))
        if path == self.main_exclude:
            return True  # the user's own repository's file (a worktree shares it)
        if path == os.path.realpath(self.env / ".git" / "info" / "exclude"):
            return e.pattern.strip() in self.main_lines  # a clone's copy of it
        if self._excludes_file is None:
            self._excludes_file = git.excludes_file(self.root) or ""
        return path == self._excludes_file


def _nested_repositories(ctx: EnvContext, report: WorkReport) -> None:
    """A git repository inside the environment that is no submodule of it (a
    ``git init``, a worktree of this or another repository): its commits live
    in its own object store (or nowhere but its HEAD), which a backup cannot
    hold, so even ``--force`` refuses, naming it (attack11 #2)."""
    submodules_known = (ctx.path / ".gitmodules").is_file()
    found = []
    for name in [*report.untracked, *report.hidden, *report.modified]:
        rel = name.rstrip("/")
        if name in report.modified and submodules_known:
            continue  # a gitlink: work.add_submodule_work saves what it holds
        repo = _nested_repo(ctx.path, rel, deep=name.endswith("/") and name in report.hidden)
        if repo is not None:
            found.append(repo)
    if found:
        shown = ", ".join(found[:3]) + (f" (+{len(found) - 3} more)" if len(found) > 3 else "")
        report.force_blocker = report.force_blocker or (
            f"{shown} {'is a git repository' if len(found) == 1 else 'are git repositories'} of its own inside the environment "
            "(not a submodule), whose commits and files a backup cannot hold: move it out of the environment "
            "(or push its commits somewhere and delete it) first"
        )


MAX_NESTED_SCAN = 20000


def _nested_repo(env: Path, rel: str, *, deep: bool) -> str | None:
    """``rel`` when it is a repository (holds a ``.git``); with ``deep``, the
    first repository under it (``rel`` itself when it is too big to look
    through: refusing is the safe side)."""
    path = env / rel
    if path.is_symlink() or not path.is_dir():
        return None
    if os.path.lexists(path / ".git"):
        return rel
    if not deep:
        return None
    seen = 0
    for top, dirs, files in os.walk(path):
        seen += len(dirs) + len(files)
        if ".git" in dirs or ".git" in files:
            return os.path.relpath(top, env)
        if seen > MAX_NESTED_SCAN:
            return rel
    return None


def _only_checkout_leftovers(ctx: EnvContext) -> bool:
    """True when every file of an unfinished environment (its .git aside)
    is one the commit it was being made from has, with that content."""
    root = ctx.project.root
    found: list[str] = []
    for top, dirs, files in os.walk(ctx.path):
        if top == os.fspath(ctx.path):
            dirs[:] = [d for d in dirs if d != ".git"]
            files = [f for f in files if f not in (".git", envfile.ENV_FILE)]
        for name in [*files, *(d for d in dirs if os.path.islink(os.path.join(top, d)))]:
            path = os.path.join(top, name)
            if not _regular(Path(path)):
                return False  # a symlink, a FIFO: not something a checkout of ours leaves half-made
            found.append(path)
    if not found:
        return True
    trees = [git.tree_blobs(root, c) for c in {ctx.record.base_commit, git.branch_commit(root, ctx.record.branch)} if c]
    blobs = git.blob_ids(root, found)
    for path in found:
        rel = os.path.relpath(path, ctx.path)
        if not any(tree.get(rel) == blobs.get(path) for tree in trees):
            return False
    return True


def _last_words(e: CommandError) -> str:
    return (e.last_words or f"git exit {e.result.returncode}").removeprefix("fatal: ").removeprefix("error: ")


def _drop_checkout_leftovers(ctx: EnvContext, report: WorkReport) -> None:
    """An unfinished creation (a ``kill -9`` during checkout) leaves files
    git never indexed: deletions of what it had not written yet, and files
    it wrote, identical to the commit it was checking out.  Neither is work;
    anything else in it is (docs/faults.md row 25)."""
    tree = git.tree_blobs(ctx.path, "HEAD")
    # regular files only: git hash-object would follow a symlink (to
    # /dev/zero, say) and read it; a symlink stays work
    same = git.blob_ids(ctx.path, [n for n in report.untracked if n in tree and _regular(ctx.path / n)])
    report.untracked = [n for n in report.untracked if not (n in same and (same[n] == tree[n] or _cut_short(ctx.path, n, tree[n])))]
    deleted = {n for code, n in git.status_porcelain(ctx.path) if "D" in code}
    report.modified = [n for n in report.modified if n not in deleted]
    # where the checkout was going, not where anyone moved it: a clone killed
    # during its first checkout is on the branch git clone makes
    report.head = []


def _cut_short(root: Path, rel: str, blob: str) -> bool:
    """The file git was writing when it was killed: its bytes are the start
    of the commit's blob, so all of it is in git already."""
    try:
        data = safe_files.read_bytes(root, rel, limit=MAX_CUT_SHORT_BYTES)
    except (OSError, safe_files.UnsafePath):
        return False
    if data is None:
        return False
    start = git.blob_head(root, blob, len(data) + 1)
    return start is not None and len(start) > len(data) and start.startswith(data)


MAX_IGNORED_BACKUP_BYTES = 64 * 1024 * 1024


def _small_file(path: Path) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISLNK(st.st_mode) or (stat.S_ISREG(st.st_mode) and st.st_size <= MAX_IGNORED_BACKUP_BYTES)


def _regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _same_content(a: Path, b: Path) -> bool:
    try:
        return a.stat().st_size == b.stat().st_size and a.read_bytes() == b.read_bytes()
    except OSError:
        return False


def save_backup(ctx: EnvContext, report: WorkReport) -> str | None:
    """Save ALL of the env's work under one new, unique namespace
    ``refs/hybridiso/backup/<agent>/<id>/`` (hybridiso/work/backups.py): a commit
    of its files (on top of its HEAD), and every other piece the inventory
    found (branches, tags, stash entries, detached commits, submodules),
    their objects brought into the main repository.  Returns the namespace."""
    if report.empty:
        return None
    if report.force_blocker:
        raise UserError(
            f"agent {ctx.name} has work that `down` would lose: {report.describe()}; --force cannot save it: {report.force_blocker}",
            hint="nothing was removed",
        )
    strategy = strategies.get(ctx.record.strategy)
    tips = list(report.tips)
    if ctx.path.is_dir() and report.readable:
        # every file the inventory counted, ignored or not (attack11 #6), and
        # the ignored files the repository's rules ignore, one by one (a file
        # renamed to an ignored name may be the only copy of an edit)
        report.ignored_saved = [n for n in report.ignored if not n.endswith("/") and _small_file(ctx.path / n)]
        snapshot = git.snapshot_worktree(ctx.path, [*report.precious, *report.hidden, *report.ignored_saved])
        tips.insert(0, Tip("files", snapshot, None if strategy.SHARES_REFS else ctx.path, "files"))
    elif ctx.path.is_dir() and report.snapshot is not None:
        plan = report.snapshot
        patterns = precious_patterns(ctx.project, ctx.agent, ctx.record)
        try:
            snapshot = git.snapshot_directory(ctx.path, plan.git_dir, patterns, plan.parent, own_index=plan.own_index)
        except CommandError:
            if not plan.own_index:
                raise
            # its admin dir is broken too (a garbage HEAD): the files alone, from the repository's side
            common = ctx.project.repo.common_dir
            snapshot = git.snapshot_directory(ctx.path, common, patterns, ctx.record.base_commit, own_index=False)
        tips.insert(0, Tip("files", snapshot, None, "files"))
    for sub in report.submodule_repos:
        key = f"submodules/{submodule_key(sub.path)}/files"
        tips.append(Tip(key, git.snapshot_worktree(sub.repo), sub.repo, "submodules"))
        tips += sub.tips
    return backups.save(ctx.project.root, ctx.project.repo.common_dir, ctx.name, tips)


def work_at_risk(ctx: EnvContext, *, keep_branch: bool, report: WorkReport | None = None, main: MainRepo | None = None) -> WorkReport:
    """What removing the environment would lose (``down`` refuses unless forced)."""
    report = report if report is not None else inspect_work(ctx, main)
    # a worktree's commits live on in its branch unless we delete the branch,
    # which we only do for a branch we created
    branch_kept = keep_branch or (strategies.get(ctx.record.strategy).SHARES_REFS and not ctx.record.created_branch)
    if ctx.record.removal_begun(ctx.path):
        # an earlier removal checked (and saved) the work, then stopped
        # half-way, taking the .git link with it: finish it
        report = report.without("unreadable")
    return report.without("commits") if branch_kept else report


def refusal(ctx: EnvContext, losing: WorkReport) -> UserError:
    ways = []
    if losing.modified or losing.untracked or losing.precious or losing.hidden or losing.commits:
        ways.append("commit it" + (" and merge it" if losing.commits else ""))
    if losing.refs or losing.stash or losing.detached or losing.head:
        ways.append("bring it onto the agent's branch (or push it)")
    if losing.worktrees:
        ways.append(f"bring the commits of its linked worktrees onto a branch and remove them (`git -C {ctx.path} worktree remove <path>`)")
    if any(t.category == "refs" and t.key.startswith("refs/remotes/") for t in losing.tips):  # the refs, not how they are shown
        ways.append("fetch or push those commits into the repository (only its own refs prove a commit safe)")
    if losing.submodules:
        ways.append("push the submodules' commits")
    if losing.unreadable and losing.repair:
        ways.append(losing.repair)
    if losing.commits and losing.files_only().empty and losing.without("commits").empty:
        ways.append("`hybridiso down --keep-branch` keeps the commits on their branch")
    if losing.force_blocker:
        hint = (", or ".join(ways) + "; " if ways else "") + f"--force cannot save it: {losing.force_blocker}"
    else:
        if losing.in_git:
            ways.append(f"`--force` saves all of it under {backups.PREFIX}/{ctx.name}/ first (`hybridiso restore {ctx.name}` brings it back)")
        if losing.databases:
            ways.append(f"`--force` dumps the changed databases (pg_dump) to {service_branches.dump_dir(ctx)}/ before it drops them")
        hint = ", or ".join(ways)
    return UserError(f"agent {ctx.name} has work that `down` would lose: {losing.describe()}", hint=hint)


class HasWork(Exception):
    """``remove(only_if_clean=True)`` found work: nothing was removed or
    saved; the caller removes it the one-by-one way (issue 15)."""


PendingBranch = tuple[EnvContext, WorkReport]


def remove(
    ctx: EnvContext,
    *,
    force: bool,
    keep_branch: bool,
    starting: Callable[[], None] | None = None,
    main: MainRepo | None = None,
    only_if_clean: bool = False,
    branch_later: list[PendingBranch] | None = None,
) -> tuple[str | None, WorkReport, list[service_branches.Released]]:
    """Remove one environment.  Refuses (UserError) when work would be lost,
    unless ``force``, which first saves it to a backup and dumps the
    database branches whose data changed; returns the backup, the work found
    and what became of the databases.  ``starting`` runs
    once the work is checked (and saved), before anything is deleted: the
    caller records that a removal began (a retry then finishes it).
    ``main``: the repository's refs as read before (valid until a removal).
    ``only_if_clean``: raise ``HasWork`` instead of refusing or saving when
    anything is at risk.  ``branch_later``: the agent branch is not deleted
    here but appended, for ``delete_branches_as_judged`` (one transaction
    for many removals)."""
    # a removal this record began (and judged) may have taken the marks already
    own_repository = not strategies.get(ctx.record.strategy).SHARES_REFS
    if not ctx.record.removal_begun(ctx.path) and not ctx.project.proves_made(ctx.path, own_repository, ctx.record.phase):
        # a forged or stale record at somebody's directory: not even --force
        raise UserError(
            f"agent {ctx.name}: nothing shows hybridiso made {ctx.path} (no {envfile.ENV_FILE} of this project, "
            "no git link of its own); nothing was removed",
            hint=f"if it is yours, move it out of the workspace; `hybridiso down {ctx.name}` then forgets the record",
        )
    # a killed run's setup would write on while (and after) we look (docs/faults.md row 38)
    stop_setups(ctx)
    stop_execs(ctx, force=force)
    report = inspect_work(ctx, main)
    losing = work_at_risk(ctx, keep_branch=keep_branch, report=report)
    backup: str | None = None
    if not losing.empty:
        if only_if_clean:
            raise HasWork(ctx.name)
        if not force:
            raise refusal(ctx, losing)
        # before anything is removed: --force must be able to dump what changed
        service_branches.ensure_dumpable(ctx, service_branches.check(ctx) if losing.databases else [])
        try:
            backup = save_backup(ctx, losing) if losing.in_git else None
            report.ignored_saved = losing.ignored_saved
        except CommandError as e:
            raise UserError(
                f"agent {ctx.name}: saving its work failed: {_last_words(e)}; nothing was removed",
                hint=f"`hybridiso down {ctx.name}` names what is there; move it out of {ctx.path} yourself if git cannot read it",
            ) from None
    strategy = strategies.get(ctx.record.strategy)
    if keep_branch and not strategy.SHARES_REFS and ctx.path.is_dir() and report.readable:
        _bring_branch_home(ctx)
    if starting is not None:
        starting()
    strategy.remove(ctx)
    try:
        # written to since it was checked: kept (the record stays), or dumped with --force
        released = service_branches.release(ctx, dump=force)
    except UserError as e:
        raise UserError(f"agent {ctx.name}: its environment was removed, but {e.message}", hint=e.hint) from None
    if strategy.SHARES_REFS and not keep_branch and ctx.record.created_branch:
        if branch_later is not None:
            branch_later.append((ctx, report))
        else:
            _delete_branch_as_judged(ctx, report)
    return backup, report, released


def delete_branches_as_judged(pending: list[PendingBranch]) -> None:
    """``_delete_branch_as_judged`` for many removals: ONE ``update-ref``
    transaction deleting each branch at the commit its work check saw;
    when any moved since (or is gone), each is done on its own, which keeps
    and names the moved ones."""
    if not pending:
        return
    root = pending[0][0].project.root
    judged = {f"refs/heads/{ctx.record.branch}": report.branch_tip for ctx, report in pending}
    if all(judged.values()) and len(judged) == len(pending) and git.delete_refs_if(root, {r: t for r, t in judged.items() if t}):
        return
    for ctx, report in pending:
        _delete_branch_as_judged(ctx, report)


def _delete_branch_as_judged(ctx: EnvContext, report: WorkReport) -> None:
    """Delete the agent branch only at the commit the work check saw: one
    the agent moved since (a commit from another shell) stays, and is said."""
    ref = f"refs/heads/{ctx.record.branch}"
    tip = git.branch_commit(ctx.project.root, ctx.record.branch)
    if tip is None:
        return
    if report.branch_tip is None or tip != report.branch_tip or not git.delete_ref_if(ctx.project.root, ref, tip):
        output.warn(f"{ctx.name}: branch {ctx.record.branch} moved while it was being removed (now {tip[:7]}); it is kept")


def _bring_branch_home(ctx: EnvContext) -> None:
    """``--keep-branch`` of an environment with its own refs: its branch (not
    whatever HEAD is on now) is pushed into the repository."""
    branch = ctx.record.branch
    source = f"refs/heads/{branch}" if git.branch_exists(ctx.path, branch) else "HEAD"
    pushed = git.run(ctx.path, "push", "-q", "--no-verify", str(ctx.project.root), f"{source}:refs/heads/{branch}", check=False)
    if pushed.returncode != 0:
        # e.g. the branch is checked out in the repository, or moved on there
        raise UserError(
            f"agent {ctx.name}: --keep-branch could not update branch {branch} in {ctx.project.root}: "
            + (pushed.stderr.strip().splitlines() or ["git push failed"])[-1],
            hint=f"check {branch} out nowhere (or merge it by hand), then run down again; nothing was removed",
        )
