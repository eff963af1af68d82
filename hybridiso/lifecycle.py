"""Create and remove one environment, the same steps for every strategy.

A template method (like tox's ``ToxEnv``): the strategy lays down files and
starts what runs; this module does what every environment needs around that
(submodules, includes, env file, setup, timings) and the safety checks before
removal (FAULTS #5: nothing the user made is lost).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from hybridiso import envfile, git, includes, service_branches, setup_runner, strategies
from hybridiso.errors import Cancelled, UserError
from hybridiso.manifest import Agent
from hybridiso.project import Project
from hybridiso.state import PHASE_READY, AgentRecord
from hybridiso.strategies.base import EnvContext

ENV_EXCLUDE = "/" + envfile.ENV_FILE
PRECIOUS_DEFAULT = (".env", ".env.*", "*.local")
BACKUP_PREFIX = "refs/hybridiso/backup"


def environment_for(project: Project, agent: Agent | None, record: AgentRecord) -> dict[str, str]:
    extra = project.manifest.env_for(agent) if agent is not None else {}
    extra = {**extra, **record.extra.get("env", {})}
    return envfile.agent_environment(
        record.name, record.strategy, record.branch, Path(record.path), record.ports, extra
    )


def log_path(project: Project, name: str, what: str) -> Path:
    return project.store.logs_dir / name / f"{what}.log"


def _check(ctx: EnvContext) -> None:
    if ctx.cancel.is_set():
        raise Cancelled(ctx.name)


def prepare(ctx: EnvContext) -> None:
    """Check the target and note what this run is about to create, so the
    record (saved by the caller before any git call) can roll it back."""
    path = ctx.path
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise UserError(
            f"{path} already exists and is not a hybridiso environment of agent {ctx.name}",
            hint="move it away, or run `hybridiso gc` to find orphan directories",
        )
    strategy = strategies.get(ctx.record.strategy)
    if strategy.SHARES_REFS:
        _branch_free(ctx)
    ctx.record.created_branch = strategy.SHARES_REFS and not git.branch_exists(ctx.project.root, ctx.record.branch)
    ctx.record.extra["owns_path"] = True


def _branch_free(ctx: EnvContext) -> None:
    """git checks a branch out in one worktree at a time: name the checkout
    that holds it (FAULTS #2: never git's raw "already used by worktree")."""
    for wt in git.worktree_list(ctx.project.root):
        if wt.branch == ctx.record.branch and wt.path.resolve() != ctx.path.resolve():
            hint = (
                "its directory is gone: `git worktree prune` frees the branch"
                if wt.prunable
                else f"switch that checkout to another branch (git -C '{wt.path}' switch -), or give agent {ctx.name} another `branch:`"
            )
            raise UserError(f"branch {ctx.record.branch} is checked out at {wt.path}; agent {ctx.name} needs it for its own worktree", hint=hint)


def rollback(ctx: EnvContext) -> None:
    """Undo a creation that never reached ``ready``: only what it made."""
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
    t0 = time.monotonic()
    strategy.create(ctx)
    record.timings["create"] = round(time.monotonic() - t0, 3)
    _check(ctx)
    t = time.monotonic()
    if git.init_submodules(ctx.path):
        record.timings["submodules"] = round(time.monotonic() - t, 3)
    if record.strategy == "clone":
        git.add_exclude(git.git_dir(ctx.path), ENV_EXCLUDE)
    t = time.monotonic()
    service_env = service_branches.provision(ctx)
    if service_env:
        record.extra["env"] = {**record.extra.get("env", {}), **service_env}
        record.timings["services"] = round(time.monotonic() - t, 3)
    t = time.monotonic()
    copied = includes.copy_includes(project.root, ctx.path, project.manifest.include_for(ctx.agent))
    record.extra["included"] = copied
    envfile.write_env_file(ctx.path, environment_for(project, ctx.agent, record))
    record.timings["includes"] = round(time.monotonic() - t, 3)
    _check(ctx)
    run_setup(ctx)
    _check(ctx)
    t = time.monotonic()
    strategy.start(ctx)  # a new environment: whatever it did, it was created
    record.timings["start"] = round(time.monotonic() - t, 3)
    record.timings["total"] = round(time.monotonic() - t0, 3)
    record.phase = PHASE_READY


def run_setup(ctx: EnvContext) -> bool:
    """Run setup when it never ran or its inputs (commands, lockfiles) changed."""
    assert ctx.agent is not None
    commands = ctx.project.manifest.setup_for(ctx.agent)
    digest = setup_runner.setup_hash(ctx.path, commands)
    if digest == ctx.record.setup_hash:
        return False
    t = time.monotonic()
    if commands:
        try:
            # where the work runs: on the host, or in the agent's image (issue 12)
            strategies.get(ctx.record.strategy).run_setup(
                ctx, commands, environment_for(ctx.project, ctx.agent, ctx.record), log_path(ctx.project, ctx.name, "setup")
            )
        except setup_runner.SetupInterrupted:
            raise Cancelled(ctx.name) from None
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

    @property
    def empty(self) -> bool:
        return not (self.modified or self.untracked or self.precious or self.commits)

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
        return "; ".join(parts)


def precious_patterns(project: Project, agent: Agent | None) -> list[str]:
    manifest_patterns = project.manifest.include_for(agent) if agent is not None else project.manifest.defaults.include
    return includes.patterns_for(project.root, [*manifest_patterns, *PRECIOUS_DEFAULT])


def precious_work(project: Project, agent: Agent | None, path: Path) -> list[str]:
    """Ignored files under ``path`` that matter (``.env`` and the like, and
    what ``include:`` lists), except an include copied in and left alone."""
    found = []
    for rel in includes.ignored_files_matching(path, precious_patterns(project, agent)):
        if rel == envfile.ENV_FILE:
            continue
        source = project.root / rel
        if source.is_file() and _same_content(source, path / rel):
            continue
        found.append(rel)
    return found


def inspect_work(ctx: EnvContext) -> WorkReport:
    report = WorkReport()
    if not ctx.path.is_dir() or not git.ok(ctx.path, "rev-parse", "--git-dir"):
        return report
    for code, name in git.status_porcelain(ctx.path):
        if name == envfile.ENV_FILE:
            continue
        (report.untracked if code == "??" else report.modified).append(name)
    report.precious = precious_work(ctx.project, ctx.agent, ctx.path)
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
    return WorkReport(report.modified, report.untracked, report.precious, [] if branch_kept else report.commits)


def refusal(ctx: EnvContext, losing: WorkReport) -> UserError:
    ways = ["commit it" + (" and merge it" if losing.commits else "")]
    if losing.commits and not (losing.modified or losing.untracked or losing.precious):
        ways.append("`hybridiso down --keep-branch` keeps the commits on their branch")
    ways.append("`--force` saves all of it to a backup ref under refs/hybridiso/backup/ first")
    return UserError(f"agent {ctx.name} has work that `down` would lose: {losing.describe()}", hint=", or ".join(ways))


def remove(ctx: EnvContext, *, force: bool, keep_branch: bool) -> tuple[str | None, WorkReport]:
    """Remove one environment.  Refuses (UserError) when work would be lost,
    unless ``force``, which first saves it to a backup ref."""
    report = inspect_work(ctx)
    losing = work_at_risk(ctx, keep_branch=keep_branch, report=report)
    backup: str | None = None
    if not losing.empty:
        if not force:
            raise refusal(ctx, losing)
        backup = save_backup(ctx, losing)
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
    service_branches.release(ctx)
    if strategy.SHARES_REFS and not keep_branch and ctx.record.created_branch:
        if git.branch_exists(ctx.project.root, ctx.record.branch):
            git.delete_branch(ctx.project.root, ctx.record.branch)
    return backup, report
