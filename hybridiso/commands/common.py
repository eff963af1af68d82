"""What several commands share: loading the project, planning, contexts."""
from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

from hybridiso import git, planner
from hybridiso.errors import UserError
from hybridiso.project import Project, load_project
from hybridiso.state import PHASE_READY, State
from hybridiso.env_context import unsafe_record


def project_from_args(args: argparse.Namespace, *, manifest_optional: bool = False) -> Project:
    return load_project(Path(args.directory).resolve(), Path(args.file) if args.file else None, manifest_optional=manifest_optional)


def checked_out_elsewhere(project: Project, state: State) -> dict[str, str]:
    """Branches checked out by worktrees that are not hybridiso environments."""
    return _branch_holders(project, state)[0]


def checked_out_by_agents(project: Project, state: State) -> dict[str, str]:
    """Branches the agents' existing environments have checked out (a
    worktree or container agent's worktree): branch -> agent."""
    return _branch_holders(project, state)[1]


def _branch_holders(project: Project, state: State) -> tuple[dict[str, str], dict[str, str]]:
    ours = {project.env_path(n): n for n, r in state.agents.items() if project.record_problem(n, r) is None}
    ours.update({project.env_path(a): a.name for a in project.manifest.agents})
    holders: dict[str, str] = {}
    agents: dict[str, str] = {}
    for wt in git.worktree_list(project.root):
        if wt.branch is None:
            continue
        if wt.path in ours:
            agents[wt.branch] = ours[wt.path]
            continue
        holders[wt.branch] = "the main worktree" if wt.path == project.root else f"the worktree at {wt.path}"
    return holders, agents


def make_plan(project: Project, state: State) -> planner.Plan:
    check_branches(project, state)
    paths = {a.name: str(project.env_path(a)) for a in project.manifest.agents}
    existing = {n: r.strategy for n, r in state.agents.items()}
    clone_cost = None
    if project.manifest.disk_budget:  # what a clone takes here, as plan projects it (issue 16)
        from hybridiso.report import costs

        clone_cost = costs.project_costs(project, state.agents).for_strategy(planner.BUDGETED).disk_bytes
    elsewhere, by_agents = _branch_holders(project, state)  # one pass over the records and worktrees for both
    return planner.plan(
        project.manifest,
        paths,
        elsewhere,
        existing=existing,
        clone_cost_bytes=clone_cost,
        held_by_agents=by_agents,
    )


def check_branches(project: Project, state: State) -> None:
    """Agents' new branches that git could not create beside the
    repository's (``feat`` when ``feat/x`` exists): a manifest error with
    the line, before anything is created (docs/faults.md row 39)."""
    from hybridiso.manifest import ManifestError
    from hybridiso.manifest_checks import existing_branch_problems

    if not project.manifest.agents:
        return
    # a record still 'creating' may not have made its branch: check it again
    made = [n for n, r in state.agents.items() if r.phase == PHASE_READY]
    problems = existing_branch_problems(project.manifest, git.local_branches(project.root), made)
    if problems:
        raise ManifestError(project.manifest_path, problems)


def check_names(project: Project, names: Sequence[str], state: State | None = None) -> list[str]:
    known = {a.name for a in project.manifest.agents} | set(state.agents if state else ()) | set(state.set_aside if state else ())
    unknown = [n for n in names if n not in known]
    if unknown:
        listing = ", ".join(sorted(known)) or "none"
        raise UserError(
            f"unknown agent{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)} (agents: {listing})",
            hint="agents are declared under `agents:` in hybridiso.yaml",
        )
    return list(dict.fromkeys(names))


def record_problems(project: Project, state: State, names: Sequence[str] | None = None) -> list[tuple[str, str]]:
    """(agent, why) for each record (of ``names``, default all) whose path
    hybridiso must not act on."""
    wanted = state.agents if names is None else [n for n in names if n in state.agents]
    found = []
    for name in sorted(wanted):
        why = project.record_problem(name, state.agents[name])
        if why:
            found.append((name, why))
    return found


def check_records(project: Project, state: State, names: Sequence[str] | None = None) -> None:
    """Refuse, before anything is touched, when a record to act on points
    anywhere but its agent's place in the workspace (docs/faults.md row 30)."""
    problems = record_problems(project, state, names)
    if problems:
        raise unsafe_record(project, problems)


def int_in(low: int, high: int) -> Callable[[str], int]:
    """An argparse ``type``: a whole number from ``low`` to ``high``.
    Anything else is a usage error (exit 2), before the command starts."""

    def parse(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is out of range: use {low} to {high}")
        return value

    parse.__name__ = "number"  # argparse names the type in its messages
    return parse


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")
