"""What several commands share: loading the project, planning, contexts."""
from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from hybridiso import git, planner
from hybridiso.errors import UserError
from hybridiso.project import Project, load_project
from hybridiso.state import State
from hybridiso.strategies.base import EnvContext


def project_from_args(args: argparse.Namespace, *, manifest_optional: bool = False) -> Project:
    return load_project(Path(args.directory).resolve(), Path(args.file) if args.file else None, manifest_optional=manifest_optional)


def checked_out_elsewhere(project: Project, state: State) -> dict[str, str]:
    """Branches checked out by worktrees that are not hybridiso environments."""
    ours = {Path(r.path).resolve() for r in state.agents.values()}
    ours |= {project.env_path(a) for a in project.manifest.agents}
    holders: dict[str, str] = {}
    for wt in git.worktree_list(project.root):
        if wt.branch is None or wt.path.resolve() in ours:
            continue
        holders[wt.branch] = "the main worktree" if wt.path.resolve() == project.root else f"the worktree at {wt.path}"
    return holders


def make_plan(project: Project, state: State) -> planner.Plan:
    paths = {a.name: str(project.env_path(a)) for a in project.manifest.agents}
    existing = {n: r.strategy for n, r in state.agents.items()}
    return planner.plan(
        project.manifest,
        paths,
        checked_out_elsewhere(project, state),
        existing=existing,
    )


def check_names(project: Project, names: Sequence[str], state: State | None = None) -> list[str]:
    known = {a.name for a in project.manifest.agents} | set(state.agents if state else ())
    unknown = [n for n in names if n not in known]
    if unknown:
        listing = ", ".join(sorted(known)) or "none"
        raise UserError(
            f"unknown agent{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)} (agents: {listing})",
            hint="agents are declared under `agents:` in hybridiso.yaml",
        )
    return list(dict.fromkeys(names))


def context(project: Project, state: State, name: str) -> EnvContext:
    record = state.agents[name]
    agent = next((a for a in project.manifest.agents if a.name == name), None)
    return EnvContext(project, agent, record, persist=lambda: project.store.save(state))


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")
