"""``hybridiso plan``: per agent, the strategy it gets and why, before anything is made."""
from __future__ import annotations

import argparse
import copy
import os
from dataclasses import replace
from typing import Any

from hybridiso import git, machine, output, ports, strategies
from hybridiso.envs import admission
from hybridiso.errors import UserError
from hybridiso.report import costs
from hybridiso.envs import branches, programs
from hybridiso.commands.common import add_json_flag, make_plan, project_from_args, record_problems
from hybridiso.planner import AgentPlan
from hybridiso.project import Project, workspace_problem
from hybridiso.envs.reconcile import adopt_from_reality
from hybridiso.state import PHASE_READY, AgentRecord, State

HELP = "show the strategy each agent will get, the reason, and projected costs"


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("plan", help=HELP, description=HELP + ". Changes nothing.")
    add_json_flag(p)


def _boundary(project: Project, p: AgentPlan, record: AgentRecord | None) -> dict[str, object] | None:
    """What a container agent's container will get (issue 12: plan says it);
    None for the others (and a strategy this version does not know)."""
    from hybridiso.env_context import EnvContext

    strategy = strategies.find(p.strategy)
    if strategy is None or not strategy.USES_DOCKER:
        return None
    if record is None:  # not made yet: what up would give it now
        record = AgentRecord(name=p.agent.name, strategy=p.strategy, branch=p.branch, path=p.path, base=project.manifest.base)
    else:
        record = copy.deepcopy(record)  # a plan changes nothing, not even in memory
    return strategy.planned_boundary(EnvContext(project, p.agent, record))


def up_would_refuse(project: Project, state: State, plan_agents: list[AgentPlan]) -> list[str]:
    """What `up` checks before it makes anything, said by `plan` too (issue
    16: plan must not accept what up refuses): the base, branches, records
    it must not act on, the workspace (when something is still to be made)
    and the port range."""
    made = {n for n, r in state.agents.items() if r.phase == PHASE_READY and os.path.isdir(r.path)}
    problems = [f"{why} ({name})" for name, why in record_problems(project, state)]
    if not project.repo.has_commits:
        problems.append("the repository has no commits yet: make a first commit")
    elif git.resolve_commit(project.root, project.manifest.base) is None:
        problems.append(f"base {project.manifest.base!r} does not name a commit: set `base:` in hybridiso.yaml")
    problems += branches.shadow_problems(branches.Refs.read(project.root), project.manifest.agents)
    if any(p.agent.name not in made for p in plan_agents):
        why = workspace_problem(project.workspace)
        if why:
            problems.append(f"{why}: set `workspace:` in hybridiso.yaml to a directory you can write")
    try:  # the leases up would take, taken nowhere
        ports.lease(
            {p.agent.name: p.agent.ports for p in plan_agents},
            {n: r.ports for n, r in state.agents.items()},
            project.manifest.ports.bounds(),
            {port: e.who() for port, e in ports.leased_elsewhere(project.repo.common_dir).items()},
        )
    except UserError as e:
        problems.append(f"{e.message}; {e.hint}" if e.hint else e.message)
    return [f"`up` will refuse: {p}" for p in problems]


def _parallelism(project: Project, agents: list[AgentPlan]) -> tuple[dict[str, Any], str | None]:
    """What `up` runs at once on this machine for this manifest (issue 15:
    envs/admission.py), and a warning when the container agents' memory
    limits, all running, add up to more than the machine has."""
    here = machine.capacity()
    limits = admission.setup_limits(project.manifest, here)
    with_setup = [p for p in agents if project.manifest.setup_for(p.agent)]
    compute = [p.agent.name for p in with_setup if admission.kind_of(p.agent) == admission.COMPUTE]
    io = [p.agent.name for p in with_setup if admission.kind_of(p.agent) == admission.IO]
    describe = limits.describe()
    if len(compute) > limits.compute:
        describe += f"; {len(compute)} agents have compute-bound setups: when they all run, {len(compute) - limits.compute} wait their turn"
    data: dict[str, Any] = {
        "cores": here.cores,
        "memory_total_bytes": here.memory_total,
        "memory_available_bytes": here.memory_available,
        "compute_setups": limits.compute,
        "compute_why": limits.compute_why,
        "io_setups": limits.io,
        "io_why": limits.io_why,
        "compute_agents": compute,
        "io_agents": io,
        "describe": describe,
    }
    limited = [(p.agent.name, admission.memory_of(p.agent)) for p in agents if strategies.uses_docker(p.strategy)]
    total = sum(m for _, m in limited)
    warning = None
    if here.memory_total is not None and total > here.memory_total:
        warning = (
            f"the container agents' memory limits add up to {output.human_bytes(total)} "
            f"({', '.join(f'{n} {output.human_bytes(m)}' for n, m in limited if m)}), more than this machine's "
            f"{output.human_bytes(here.memory_total)}: running them all at once can exhaust it"
        )
    return data, warning


def _shown(value: float | int | None, measured: bool, text: str) -> str:
    if value is None:
        return "unknown"
    return text if measured else f"~{text}"


def run(args: argparse.Namespace) -> int:
    project = project_from_args(args)
    state = project.store.load()
    adopt_from_reality(project, state)
    plan = make_plan(project, state)
    projection = costs.project_costs(project, state.agents)
    refused = up_would_refuse(project, state, list(plan.agents))
    missing: dict[str, list[str]] = {}
    for m in programs.setup_missing(project.manifest):  # docs/faults.md row 40: before `up` fails on it
        missing.setdefault(m.agent, []).append(f"{m.problem()}: install it, or change setup: in hybridiso.yaml")
    containers = [p for p in plan.agents if strategies.uses_docker(p.strategy) and p.agent.image]
    images, unchecked = programs.missing_images([p.agent.image for p in containers if p.agent.image])
    for p in containers:
        if p.agent.image in images:
            missing.setdefault(p.agent.name, []).append(
                f"image {p.agent.image!r} is not on this machine: `up` pulls it, and fails if it cannot (docker pull / docker build it first)"
            )
    rows: list[dict[str, Any]] = []
    for p in plan.agents:
        aside = state.set_aside.get(p.agent.name)
        if aside is not None:  # `up` leaves it alone: say so instead of a plan for it
            strategy = str(aside.raw.get("strategy"))
            p = replace(p, strategy=strategy, reason=f"left alone: its record names strategy {strategy!r}, unknown to this hybridiso")
        record = state.agents.get(p.agent.name)
        leased = record.ports if record else {}
        ports = ", ".join(f"{n}={leased[n]}" if n in leased else f"{n}=(new)" for n in p.agent.ports) or "-"
        est = projection.for_strategy(p.strategy)
        rows.append(
            {
                "agent": p.agent.name,
                "strategy": p.strategy,
                "reason": p.reason,
                "branch": p.branch,
                "path": p.path,
                "ports": {n: leased.get(n) for n in p.agent.ports},
                "exists": record is not None,
                "projected_disk_bytes": est.disk_bytes,
                "projected_disk_measured": est.disk_measured,
                "projected_startup_seconds": est.startup_seconds,
                "projected_startup_measured": est.startup_measured,
                "projection_source": projection.describe([p.strategy]),
                "_disk_text": _shown(est.disk_bytes, est.disk_measured, output.human_bytes(est.disk_bytes)),
                "_startup_text": _shown(est.startup_seconds, est.startup_measured, f"{est.startup_seconds or 0:.1f}s"),
                "warnings": [*p.warnings, *missing.get(p.agent.name, [])],
                "boundary": _boundary(project, p, record),
                "_ports_text": ports,
            }
        )
    parallelism, memory_warning = _parallelism(project, list(plan.agents))
    if memory_warning:
        refused.append(memory_warning)
    if args.json:
        output.print_json(
            {
                "agents": [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows],
                "warnings": [*refused, *plan.warnings],
                "projection": projection.describe({r["strategy"] for r in rows}),
                "parallelism": parallelism,
            }
        )
        return 0
    if not rows:
        output.message("no agents in the manifest; add some under `agents:` in hybridiso.yaml (docs/manifest.md)")
        return 0
    output.print_table(
        [
            [
                r["agent"],
                r["strategy"],
                r["reason"],
                r["branch"],
                r["_ports_text"],
                r["_disk_text"],
                r["_startup_text"],
            ]
            for r in rows
        ],
        ["AGENT", "STRATEGY", "WHY", "BRANCH", "PORTS", "DISK*", "STARTUP*"],
    )
    output.message(f"* {projection.describe(sorted({r['strategy'] for r in rows}))}")
    output.message(f"setups at once: {parallelism['describe']}")
    for r in rows:
        boundary = r["boundary"]
        if isinstance(boundary, dict):
            from hybridiso.containers.build import describe_boundary

            output.message(f"  {r['agent']} gets: {describe_boundary(boundary)}")
    for w in [*refused, *plan.warnings]:
        output.warn(w)
    if unchecked:
        output.warn(f"container agents' images were not checked: {unchecked}")
    # one line per warning, naming every agent it is about (setup defaults
    # are often the same for all of them)
    by_text: dict[str, list[str]] = {}
    for r in rows:
        for w in r["warnings"]:
            by_text.setdefault(w, []).append(r["agent"])
    for w, agents in by_text.items():
        output.warn(f"{', '.join(agents)}: {w}")
    return 0
