"""``hybridiso status``: every agent, from git (and Docker), not just the state file."""
from __future__ import annotations

import argparse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hybridiso import git, output, strategies
from hybridiso.commands.common import add_json_flag, check_names, context, project_from_args
from hybridiso.measure import du_bytes
from hybridiso.envfile import ENV_FILE
from hybridiso.health import repo_problems
from hybridiso.lifecycle import log_path
from hybridiso.project import Project
from hybridiso.reconcile import adopt_from_reality
from hybridiso.state import PHASE_READY, State

HELP = "show each agent's environment: strategy, branch, drift, dirty files, ports, disk"


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("status", help=HELP, description=HELP + ".")
    p.add_argument("agents", nargs="*", metavar="AGENT")
    p.add_argument("--no-disk", action="store_true", help="skip measuring disk use (faster on huge trees)")
    add_json_flag(p)


@dataclass
class AgentStatus:
    agent: str
    strategy: str
    state: str
    branch: str
    path: str
    ahead: int | None = None
    behind: int | None = None
    dirty: int | None = None
    ports: dict[str, int] = field(default_factory=dict)
    process: str | None = None
    disk_bytes: int | None = None
    problems: list[str] = field(default_factory=list)
    in_manifest: bool = True
    boundary: dict[str, Any] | None = None  # a container agent's: what Docker says it got (issue 12)


def collect(project: Project, state: State, names: list[str], with_disk: bool = True) -> list[AgentStatus]:
    base = project.manifest.base
    base_commit = git.resolve_commit(project.root, base)
    manifest_names = [a.name for a in project.manifest.agents]
    ordered = manifest_names + sorted(n for n in state.agents if n not in manifest_names)
    wanted = [n for n in ordered if not names or n in names]

    def one(name: str) -> AgentStatus:
        record = state.agents.get(name)
        if record is None:
            return AgentStatus(name, "-", "not created", "-", str(project.env_path(name)))
        ctx = context(project, state, name)
        strategy = strategies.get(record.strategy)
        obs = strategy.observe(ctx)
        st = AgentStatus(
            name,
            record.strategy,
            record.phase,
            record.branch,
            record.path,
            ports=dict(record.ports),
            process=obs.process,
            problems=list(obs.problems),
            in_manifest=name in manifest_names,
            boundary=dict(obs.boundary) if obs.boundary is not None else None,
        )
        if record.phase != PHASE_READY:
            st.state = "creating (interrupted or failed; `up` redoes it)"
            log = log_path(project, name, "setup")
            if log.exists():
                st.problems.append(f"setup log: {log}")
        if not obs.exists:
            st.state = "missing"
            st.problems.append("the directory was deleted; `up` recreates it, `gc` cleans up")
            return st
        if not st.in_manifest:
            st.problems.append("not in the manifest any more; `hybridiso down` removes it")
        if obs.registered:
            st.dirty = sum(1 for _, n in git.status_porcelain(ctx.path) if n != ENV_FILE)
            if obs.head and base_commit:
                cwd = project.root if strategy.SHARES_REFS else ctx.path
                if strategy.SHARES_REFS or git.resolve_commit(ctx.path, base_commit):
                    st.ahead, st.behind = git.ahead_behind(cwd, base_commit, obs.head)
                    if st.behind:  # drift from base (issue 5)
                        st.problems.append(f"{st.behind} commits behind {base}: `hybridiso sync` rebases it")
            if obs.branch and obs.branch != record.branch:
                st.problems.append(f"checked out branch is {obs.branch!r}, expected {record.branch!r}")
        if with_disk:
            # a worktree's .git is a one-line file; a clone's .git is its own
            st.disk_bytes = du_bytes(Path(record.path), exclude=".git" if strategy.SHARES_REFS else None)
        return st

    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(one, wanted))


def run(args: argparse.Namespace) -> int:
    project = project_from_args(args)
    state = project.store.load()
    rebuilt = state.rebuilt_from
    adopt_from_reality(project, state)
    names = check_names(project, args.agents, state)
    rows = collect(project, state, names, with_disk=not args.no_disk)
    if rebuilt:
        output.warn(rebuilt)
    if args.json:
        output.print_json([asdict(r) for r in rows])
        return 0
    if not rows:
        output.message("no agents in the manifest; add some under `agents:` in hybridiso.yaml")
        return 0
    table = []
    for r in rows:
        drift = "-" if r.ahead is None else f"+{r.ahead}/-{r.behind}"
        ports = ", ".join(f"{k}={v}" for k, v in r.ports.items()) or "-"
        state_text = r.state if r.process is None else f"{r.state}, {r.process}"
        table.append(
            [r.agent, r.strategy, state_text, r.branch, drift, "-" if r.dirty is None else r.dirty, ports, output.human_bytes(r.disk_bytes), r.path]
        )
    output.print_table(table, ["AGENT", "STRATEGY", "STATE", "BRANCH", "AHEAD/BEHIND", "DIRTY", "PORTS", "DISK", "PATH"])
    for r in rows:
        if r.boundary is not None:
            from hybridiso.container_build import describe_boundary

            output.message(f"  {r.agent} gets: {describe_boundary(r.boundary)}")
        for p in r.problems:
            output.message(f"  {r.agent}: {p}")
    for line in repo_problems(project, state, names):  # prunable worktrees, stale records and locks
        output.message(f"  {line}")
    return 0
