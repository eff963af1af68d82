"""What ``gc`` finds, and what it may do about each finding.

Each finder returns ``Finding``s; nothing here changes anything.  A finding
with ``action="keep"`` says why it is kept (unmerged or uncommitted work is
never deleted: FAULTS #5, #6).  Docker and database finders plug in through
``FINDERS`` like the git ones.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from hybridiso import envfile, git, lifecycle, strategies
from hybridiso.project import Project
from hybridiso.state import PHASE_READY, State
from hybridiso.strategies.base import EnvContext


@dataclass
class Finding:
    kind: str  # merged | zombie | upstream-deleted | orphan-dir | docker | database
    target: str  # agent name, path, or resource name
    action: str  # remove | keep
    reason: str
    agent: str | None = None
    detail: dict[str, object] = field(default_factory=dict)


Finder = Callable[[Project, State], list[Finding]]


def _ctx(project: Project, state: State, name: str) -> EnvContext:
    agent = next((a for a in project.manifest.agents if a.name == name), None)
    return EnvContext(project, agent, state.agents[name])


def _tip_in_main(ctx: EnvContext) -> str | None:
    """The env's branch tip as a commit the main repository can see."""
    if strategies.get(ctx.record.strategy).SHARES_REFS:
        return git.branch_commit(ctx.project.root, ctx.record.branch)
    if not (ctx.path / ".git").is_dir():
        return None
    ref = f"refs/hybridiso/gc/{ctx.name}"
    git.run(ctx.path, "push", "-q", "--no-verify", "--force", str(ctx.project.root), f"HEAD:{ref}")
    return git.resolve_commit(ctx.project.root, ref)


def find_agents(project: Project, state: State) -> list[Finding]:
    base = git.resolve_commit(project.root, project.manifest.base)
    findings: list[Finding] = []
    for name in sorted(state.agents):
        ctx = _ctx(project, state, name)
        record = ctx.record
        obs = strategies.get(record.strategy).observe(ctx)
        if not obs.exists:
            findings.append(_zombie(ctx, base))
            continue
        if record.phase != PHASE_READY or base is None:
            continue
        tip = _tip_in_main(ctx)
        how = git.merged_into(project.root, tip, base, record.base_commit) if tip else None
        upstream_gone = _upstream_deleted(ctx)
        if how is None and not upstream_gone:
            continue
        work = lifecycle.inspect_work(ctx)
        dirty = lifecycle.WorkReport(work.modified, work.untracked, work.precious)
        kind = "merged" if how else "upstream-deleted"
        why = f"merged into {project.manifest.base} ({how})" if how else f"its branch was deleted upstream (origin/{record.branch})"
        if not dirty.empty:
            findings.append(Finding(kind, name, "keep", f"{why}, but it has uncommitted work: {dirty.describe()}", name))
        elif how:
            findings.append(Finding(kind, name, "remove", why, name, {"delete_branch": True}))
        else:
            # not merged: remove the env, keep its branch (the commits stay)
            findings.append(Finding(kind, name, "remove", why + "; the branch is kept with its commits", name, {"delete_branch": False}))
    return findings


def _zombie(ctx: EnvContext, base: str | None) -> Finding:
    record, root = ctx.record, ctx.project.root
    tip = git.branch_commit(root, record.branch) if strategies.get(record.strategy).SHARES_REFS else None
    delete_branch = bool(record.created_branch and tip)
    reason = f"its directory {record.path} is gone (zombie)"
    if delete_branch and tip and base:
        own = git.unique_commits(root, base, tip)
        if own and not git.merged_into(root, tip, base, record.base_commit):
            delete_branch = False
            reason += f"; branch {record.branch} is kept: {len(own)} commits not in base"
    return Finding("zombie", ctx.name, "remove", reason, ctx.name, {"delete_branch": delete_branch})


def _upstream_deleted(ctx: EnvContext) -> bool:
    """The branch was on origin once (remembered by gc/sync) and is not now."""
    root, branch = ctx.project.root, ctx.record.branch
    if git.remote_url(root, "origin") is None:
        return False
    here = git.remote_branch_exists(root, "origin", branch)
    if here:
        ctx.record.extra["seen_upstream"] = True
        return False
    return bool(ctx.record.extra.get("seen_upstream"))


def find_orphan_dirs(project: Project, state: State) -> list[Finding]:
    if not project.workspace.is_dir():
        return []
    known = {Path(r.path).resolve() for r in state.agents.values()}
    known |= {wt.path.resolve() for wt in git.worktree_list(project.root)}
    findings = []
    for entry in sorted(project.workspace.iterdir()):
        if not entry.is_dir() or entry.resolve() in known or entry.name.startswith("."):
            continue
        leftovers = _only_our_leftovers(entry)
        if leftovers:
            findings.append(Finding("orphan-dir", str(entry), "remove", f"neither git nor the state knows it; it holds only {leftovers}"))
        else:
            findings.append(Finding("orphan-dir", str(entry), "keep", "neither git nor the state knows it, but it holds files hybridiso did not make: remove it by hand if it is yours to lose"))
    return findings


def _only_our_leftovers(path: Path) -> str | None:
    """A description if ``path`` holds nothing but what hybridiso or a pruned
    worktree leaves (nothing, our env file, a .git file pointing nowhere)."""
    names = set(os.listdir(path))
    if not names:
        return "nothing"
    if names <= {envfile.ENV_FILE, ".git"}:
        git_file = path / ".git"
        if git_file.is_file():
            target = git_file.read_text(encoding="utf-8", errors="replace").removeprefix("gitdir:").strip()
            if Path(target).exists():
                return None
        elif git_file.exists():
            return None
        return "hybridiso's env file / a dangling .git file"
    return None


def find_database_branches(project: Project, state: State) -> list[Finding]:
    """Database branches on the manifest's servers that no live agent owns."""
    servers = {s.url for s in project.manifest.services.values() if s.kind == "postgres" and s.url}
    if not servers:
        return []
    from hybridiso import databases
    from hybridiso.errors import UserError

    owned = {info["name"] for r in state.agents.values() for info in r.extra.get("databases", {}).values()}
    from hybridiso.service_branches import branch_prefix

    prefix = branch_prefix(project)
    findings = []
    for url in sorted(servers):
        assert url is not None
        try:
            names = databases.list_branches(url, prefix)
        except UserError as e:
            findings.append(Finding("database", url.rsplit("@", 1)[-1], "keep", f"cannot check: {e.message}"))
            continue
        for name in names:
            if name not in owned:
                findings.append(Finding("database", name, "remove", "database branch of an agent that no longer exists", None, {"server": url}))
    return findings


FINDERS: list[Finder] = [find_agents, find_orphan_dirs, find_database_branches]
