"""Create and remove one environment, the same steps for every strategy.

A template method (like tox's ``ToxEnv``): the strategy lays down files and
starts what runs; this module does what every environment needs around that
(submodules, includes, env file, setup, timings) and the safety checks before
removal (FAULTS #5: nothing the user made is lost).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from hybridiso import branches, envfile, git, includes, output, process_groups, ready_marker, service_branches, setup_runner, strategies
from hybridiso.errors import Cancelled, UserError
from hybridiso.manifest import Agent
from hybridiso.project import Project, write_owner_marker
from hybridiso.state import PHASE_READY, AgentRecord, ProcessGroup
from hybridiso.strategies.base import EnvContext

ENV_EXCLUDE = "/" + envfile.ENV_FILE
PRECIOUS_DEFAULT = (".env", ".env.*", "*.local")
BACKUP_PREFIX = "refs/hybridiso/backup"


def environment_for(project: Project, agent: Agent | None, record: AgentRecord) -> dict[str, str]:
    extra = project.manifest.env_for(agent) if agent is not None else {}
    extra = {**extra, **record.extra.get("env", {})}
    return envfile.agent_environment(
        record.name, record.strategy, record.branch, Path(record.path), record.ports, extra, project.id
    )


def log_path(project: Project, name: str, what: str) -> Path:
    return log_file(project, name, what).path


def log_file(project: Project, name: str, what: str) -> setup_runner.LogFile:
    """``logs/<agent>/<what>.log`` in the state dir, walked from the git dir
    without following a symlink (FAULTS #31)."""
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
    record.extra["owns_path"] = True


def _branch_free(ctx: EnvContext) -> None:
    """git checks a branch out in one worktree at a time: name the checkout
    that holds it (FAULTS #2: never git's raw "already used by worktree")."""
    for wt in git.worktree_list(ctx.project.root):
        if wt.branch == ctx.record.branch and wt.path.resolve() != ctx.path.resolve():
            hint = (
                # never a repository-wide `git worktree prune` (FAULTS #28)
                f"its directory is gone (moved, or on a disk not mounted now?): put it back, or if it is gone "
                f"for good, `git worktree remove --force '{wt.path}'` frees the branch"
                if wt.prunable
                else f"switch that checkout to another branch (git -C '{wt.path}' switch -), or give agent {ctx.name} another `branch:`"
            )
            raise UserError(f"branch {ctx.record.branch} is checked out at {wt.path}; agent {ctx.name} needs it for its own worktree", hint=hint)


def stop_setups(ctx: EnvContext) -> None:
    """Stop what is left of setup commands a killed run recorded (FAULTS
    #38: they would write on into the environment made again at the same
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


def rollback(ctx: EnvContext) -> None:
    """Undo a creation that never reached ``ready``: only what it made."""
    stop_setups(ctx)  # first: nothing may write into what is being removed
    changed = service_branches.changed(ctx)
    if changed:
        # FAULTS #25/#26: data written into an unfinished environment is work
        raise UserError(
            f"agent {ctx.name} was never finished, but {'; '.join(changed)}; nothing was rolled back",
            hint=f"`hybridiso down --force {ctx.name}` dumps the data and removes it; then `hybridiso up` creates it again",
        )
    strategy = strategies.get(ctx.record.strategy)
    if ctx.record.extra.get("owns_path"):
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
    strategy.create(ctx)
    record.timings["create"] = round(time.monotonic() - t0, 3)
    _check(ctx)
    t = time.monotonic()
    if git.init_submodules(ctx.path):
        record.timings["submodules"] = round(time.monotonic() - t, 3)
    if record.strategy == "clone":
        clone_git_dir = git.git_dir(ctx.path)
        git.add_exclude(clone_git_dir, ENV_EXCLUDE)
        # a command run from inside the clone acts on this project (FAULTS #22)
        write_owner_marker(clone_git_dir, project.repo.common_dir)
    t = time.monotonic()
    service_env = service_branches.provision(ctx)
    if service_env:
        record.extra["env"] = {**record.extra.get("env", {}), **service_env}
        record.timings["services"] = round(time.monotonic() - t, 3)
    t = time.monotonic()
    included = includes.copy_includes(project.checkout, ctx.path, project.manifest.include_for(ctx.agent))
    record.extra["included"] = included.copied
    for rel in included.kept:
        output.warn(f"{ctx.name}: include {rel} was not copied: the branch has its own file there, kept as it is")
    envfile.write_env_file(ctx.path, environment_for(project, ctx.agent, record))
    record.timings["includes"] = round(time.monotonic() - t, 3)
    _check(ctx)
    run_setup(ctx)
    _check(ctx)
    t = time.monotonic()
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
            setup_runner.run_setup(
                commands,
                ctx.path,
                environment_for(ctx.project, ctx.agent, ctx.record),
                log_file(ctx.project, ctx.name, "setup"),
                ctx.cancel,
                ctx.name,
                run=run_label,
                on_start=lambda group: _started(ctx, group),
            )
        except setup_runner.SetupInterrupted:
            raise Cancelled(ctx.name) from None
        finally:
            # finished, failed or stopped: nothing of it is left to find
            # (a command that succeeded may leave a daemon on purpose)
            ctx.record.setup_processes = []
            # what setup wrote into an untouched database branch is part of
            # what hybridiso made, not the agent's work (FAULTS #26): a
            # failed or interrupted setup's too, so its rollback may drop it
            service_branches.rebaseline(ctx, quiet)
    ctx.record.setup_hash = digest
    ctx.record.timings["setup"] = round(time.monotonic() - t, 3)
    return True


# --- removal ------------------------------------------------------------------


@dataclass
class WorkReport:
    modified: list[str] = field(default_factory=list)
    untracked: list[str] = field(default_factory=list)
    precious: list[str] = field(default_factory=list)
    commits: list[str] = field(default_factory=list)
    # database branches whose data changed, one line each (FAULTS #26)
    databases: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.modified or self.untracked or self.precious or self.commits or self.databases)

    @property
    def in_git(self) -> bool:
        """Work that a backup ref can hold (files and commits)."""
        return bool(self.modified or self.untracked or self.precious or self.commits)

    def describe(self, limit: int = 5) -> str:
        parts = []
        for label, items in (
            ("modified", self.modified),
            ("untracked", self.untracked),
            ("ignored but precious", self.precious),
            ("commits not in base", self.commits),
        ):
            if items:
                shown = ", ".join(items[:limit]) + (f" (+{len(items) - limit} more)" if len(items) > limit else "")
                parts.append(f"{len(items)} {label}: {shown}")
        parts += self.databases
        return "; ".join(parts)


def precious_patterns(project: Project, agent: Agent | None) -> list[str]:
    manifest_patterns = project.manifest.include_for(agent) if agent is not None else project.manifest.defaults.include
    return includes.patterns_for(project.checkout, [*manifest_patterns, *PRECIOUS_DEFAULT])


def precious_work(project: Project, agent: Agent | None, path: Path, source_root: Path | None = None) -> list[str]:
    """Ignored files under ``path`` that matter (``.env`` and the like, and
    what ``include:`` lists), except an include copied in and left alone
    (compared with ``source_root``, the checkout it was copied from: by
    default the one this command uses)."""
    found = []
    source_root = source_root or project.checkout
    for rel in includes.ignored_files_matching(path, precious_patterns(project, agent)):
        if rel == envfile.ENV_FILE:
            continue
        source = source_root / rel
        if source.is_file() and _same_content(source, path / rel):
            continue
        found.append(rel)
    return found


def inspect_work(ctx: EnvContext) -> WorkReport:
    # the databases first: they are work whatever became of the directory
    report = WorkReport(databases=service_branches.changed(ctx))
    if not ctx.path.is_dir() or not git.ok(ctx.path, "rev-parse", "--git-dir"):
        return report
    for code, name in git.status_porcelain(ctx.path):
        if name == envfile.ENV_FILE:
            continue
        (report.untracked if code == "??" else report.modified).append(name)
    # a bare repository's agent got its includes from the worktree it was made from
    made_from = Path(ctx.record.checkout) if ctx.record.checkout else None
    report.precious = precious_work(ctx.project, ctx.agent, ctx.path, made_from)
    base = git.resolve_commit(ctx.project.root, ctx.record.base) or ctx.record.base_commit
    if base:
        report.commits = strategies.get(ctx.record.strategy).unmerged_commits(ctx, base)
    return report


def _same_content(a: Path, b: Path) -> bool:
    try:
        return a.stat().st_size == b.stat().st_size and a.read_bytes() == b.read_bytes()
    except OSError:
        return False


def save_backup(ctx: EnvContext, report: WorkReport) -> str | None:
    """Save all of the env's work (commits, changes, untracked and precious
    files) as one commit under refs/hybridiso/backup/; return the ref."""
    if report.empty:
        return None
    commit = git.snapshot_worktree(ctx.path, report.precious)
    ref = f"{BACKUP_PREFIX}/{ctx.name}/{time.strftime('%Y%m%d-%H%M%S')}"
    strategies.get(ctx.record.strategy).save_ref(ctx, commit, ref)
    return ref


def work_at_risk(ctx: EnvContext, *, keep_branch: bool, report: WorkReport | None = None) -> WorkReport:
    """What removing the environment would lose (``down`` refuses unless forced)."""
    report = report if report is not None else inspect_work(ctx)
    # a worktree's commits live on in its branch unless we delete the branch,
    # which we only do for a branch we created
    branch_kept = keep_branch or (strategies.get(ctx.record.strategy).SHARES_REFS and not ctx.record.created_branch)
    return WorkReport(report.modified, report.untracked, report.precious, [] if branch_kept else report.commits, report.databases)


def refusal(ctx: EnvContext, losing: WorkReport) -> UserError:
    ways = ["commit it" + (" and merge it" if losing.commits else "")] if losing.in_git else []
    if losing.commits and not (losing.modified or losing.untracked or losing.precious):
        ways.append("`hybridiso down --keep-branch` keeps the commits on their branch")
    if losing.in_git:
        ways.append("`--force` saves all of it to a backup ref under refs/hybridiso/backup/ first")
    if losing.databases:
        ways.append(f"`--force` dumps the changed databases (pg_dump) to {service_branches.dump_dir(ctx)}/ before it drops them")
    return UserError(f"agent {ctx.name} has work that `down` would lose: {losing.describe()}", hint=", or ".join(ways))


def remove(ctx: EnvContext, *, force: bool, keep_branch: bool) -> tuple[str | None, WorkReport, list[service_branches.Released]]:
    """Remove one environment.  Refuses (UserError) when work would be lost,
    unless ``force``, which first saves it to a backup ref and dumps the
    databases whose data changed; returns the ref, the work found and what
    became of the databases."""
    # a killed run's setup would write on while (and after) we look (FAULTS #38)
    stop_setups(ctx)
    report = inspect_work(ctx)
    losing = work_at_risk(ctx, keep_branch=keep_branch, report=report)
    backup: str | None = None
    if not losing.empty:
        if not force:
            raise refusal(ctx, losing)
        # before anything is removed: --force must be able to dump what changed
        service_branches.ensure_dumpable(ctx, service_branches.check(ctx) if losing.databases else [])
        backup = save_backup(ctx, losing) if losing.in_git else None
    strategy = strategies.get(ctx.record.strategy)
    if keep_branch and ctx.record.strategy == "clone" and ctx.path.is_dir():
        pushed = git.run(ctx.path, "push", "-q", "--no-verify", str(ctx.project.root), f"HEAD:refs/heads/{ctx.record.branch}", check=False)
        if pushed.returncode != 0:
            # e.g. the branch is checked out in the repository, or moved on there
            raise UserError(
                f"agent {ctx.name}: --keep-branch could not update branch {ctx.record.branch} in {ctx.project.root}: "
                + (pushed.stderr.strip().splitlines() or ["git push failed"])[-1],
                hint=f"check {ctx.record.branch} out nowhere (or merge it by hand), then run down again; nothing was removed",
            )
    strategy.remove(ctx)
    try:
        # written to since it was checked: kept (the record stays), or dumped with --force
        released = service_branches.release(ctx, dump=force)
    except UserError as e:
        raise UserError(f"agent {ctx.name}: its environment was removed, but {e.message}", hint=e.hint) from None
    if strategy.SHARES_REFS and not keep_branch and ctx.record.created_branch:
        if git.branch_exists(ctx.project.root, ctx.record.branch):
            git.delete_branch(ctx.project.root, ctx.record.branch)
    return backup, report, released
