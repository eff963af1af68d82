"""The decision rules of docs/architecture.md ("isolation: auto"), in one place.

``decide`` is pure: it gets an agent and the facts it depends on and returns a
strategy with the one-line reason ``plan`` prints.  The rules are tested as a
table in tests/test_planner.py.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from hybridiso.manifest import Agent, Manifest, parse_size
from hybridiso.output import plural

CONTAINER_NEEDS = ("network-isolation", "resource-limits", "untrusted-code")
# the rules' names for two strategies other modules ask about: the cheapest
# one (every agent's checkout at the least: doctor's disk check), and the one
# ``disk_budget`` weighs (a repository of its own per agent)
CHEAPEST = "worktree"
BUDGETED = "clone"


@dataclass(frozen=True)
class Decision:
    strategy: str
    reason: str


@dataclass(frozen=True)
class Facts:
    """What the rules need to know beyond the agent itself."""

    container_services: frozenset[str] = frozenset()
    # branch -> who has it checked out ("agent ui", "the main worktree", a path)
    branches_checked_out: Mapping[str, str] = field(default_factory=dict)


def decide(agent: Agent, facts: Facts) -> Decision:
    if agent.isolation != "auto":
        return Decision(agent.isolation, f"isolation: {agent.isolation} is set in the manifest")
    for need in CONTAINER_NEEDS:
        if need in agent.workload.needs:
            return Decision("container", f"needs {need}, which only a container gives")
    for svc in agent.services:
        if svc in facts.container_services:
            return Decision("container", f"uses service {svc!r}, which runs in a container")
    if agent.resources is not None:
        return Decision("container", "sets resources:, and CPU/memory/pids limits need a container")
    if agent.healthcheck is not None:
        return Decision("container", "sets healthcheck:, which runs in the agent's container")
    # an image or a command is only ever used by a container: giving the
    # agent a worktree would drop them without a word (issue 11)
    if agent.image:
        return Decision("container", f"has an image ({agent.image}), which runs in a container")
    if agent.command is not None:
        return Decision("container", "sets command:, which runs in the agent's container")
    if "own-refs" in agent.workload.needs:
        return Decision("clone", "needs own-refs (history rewrites, own remotes/config/hooks), which a worktree shares")
    holder = facts.branches_checked_out.get(agent.branch_name)
    if holder is not None:
        return Decision("clone", f"branch {agent.branch_name!r} is already checked out by {holder}")
    return Decision("worktree", "needs nothing beyond its own files: a worktree is the cheapest")


@dataclass(frozen=True)
class AgentPlan:
    agent: Agent
    strategy: str
    reason: str
    branch: str
    path: str
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Plan:
    agents: tuple[AgentPlan, ...]
    warnings: tuple[str, ...] = ()


def plan(
    manifest: Manifest,
    paths: Mapping[str, str],
    checked_out_elsewhere: Mapping[str, str],
    *,
    existing: Mapping[str, str] | None = None,
    clone_cost_bytes: int | None = None,
    cores: int | None = None,
    held_by_agents: Mapping[str, str] | None = None,
) -> Plan:
    """Decide every agent's strategy.

    ``checked_out_elsewhere``: branches checked out by worktrees hybridiso does
    not manage (the main worktree, the user's own).  ``existing``: the strategy
    an already-created agent has; it is kept, because switching a live
    environment silently would lose its state (the choice is saved per env).
    ``held_by_agents``: branches the existing environments have checked out
    (branch -> agent); they hold them whatever the manifest's order, as they
    do for ``up`` (issue 16: an agent listed before the holder was planned a
    worktree that ``up`` then refused).
    """
    existing = existing or {}
    held = dict(held_by_agents or {})
    container_services = frozenset(n for n, s in manifest.services.items() if s.runs_in_container)
    taken: dict[str, str] = dict(checked_out_elsewhere)
    decided: list[tuple[Agent, Decision, list[str]]] = []
    for agent in manifest.agents:
        notes: list[str] = []
        # what the others hold: every existing environment's branch, and
        # those of the agents decided before this one
        others = {**{b: f"agent {n}" for b, n in held.items() if n != agent.name}, **taken}
        if agent.name in existing:
            decision = Decision(existing[agent.name], f"already created as a {existing[agent.name]}")
            wanted = decide(agent, Facts(container_services, others))
            if wanted.strategy != decision.strategy:
                notes.append(
                    f"the manifest now asks for {wanted.strategy} ({wanted.reason}); "
                    f"run `hybridiso down {agent.name}` then `up` to switch"
                )
            else:
                notes += _unused_settings(agent, wanted)
        else:
            decision = decide(agent, Facts(container_services, others))
            notes += _unused_settings(agent, decision)
        if decision.strategy in ("worktree", "container"):
            holder = others.get(agent.branch_name)
            if holder is not None and agent.name not in existing:
                # docs/faults.md row 2: `up` refuses it before any git call; say so now
                notes.append(
                    f"branch {agent.branch_name!r} is checked out by {holder}, and a {decision.strategy} needs "
                    "it checked out too: `up` will refuse; give the agent another branch"
                )
            else:  # one refused gets nothing: the holder keeps its branch
                taken.setdefault(agent.branch_name, f"agent {agent.name}")
        decided.append((agent, decision, notes))

    warnings: list[str] = []
    if manifest.disk_budget and clone_cost_bytes:
        budget = parse_size(manifest.disk_budget)
        clones = [(a, d, n) for a, d, n in decided if d.strategy == BUDGETED and a.name not in existing]
        total = clone_cost_bytes * len(clones)
        if clones and total > budget:
            for i, (a, d, n) in enumerate(decided):
                # only a choice made by the rules can be overridden; an explicit
                # isolation: clone or a branch already checked out cannot
                if d.strategy == BUDGETED and a.isolation == "auto" and "own-refs" in a.workload.needs and a.name not in existing:
                    n.append(f"disk_budget {manifest.disk_budget} is too small for {plural(len(clones), 'clone')}; using a worktree instead")
                    decided[i] = (a, Decision(CHEAPEST, d.reason + " (but disk_budget pushes it to a worktree)"), n)
            warnings.append(
                f"clones would need about {total // (1 << 20)} MiB, over disk_budget {manifest.disk_budget}"
            )
    cores = cores or os.cpu_count() or 1
    compute = [a.name for a, _, _ in decided if a.workload.compute_bound]
    if len(compute) > cores:
        warnings.append(
            f"{len(compute)} compute-bound agents ({', '.join(compute)}) on {cores} cores: "
            f"this machine sustains about {cores} at full speed"
        )
    return Plan(
        tuple(
            AgentPlan(a, d.strategy, d.reason, a.branch_name, paths[a.name], tuple(n)) for a, d, n in decided
        ),
        tuple(warnings),
    )


def _unused_settings(agent: Agent, decision: Decision) -> list[str]:
    """What the manifest asks for that the strategy the agent gets does not
    give: said by `plan` and `up`, never dropped silently."""
    notes = []
    if decision.strategy != "container":
        unused = [key for key, value in (("image", agent.image), ("command", agent.command)) if value]
        if unused:
            notes.append(f"{' and '.join(unused)} {'is' if len(unused) == 1 else 'are'} not used: it gets a {decision.strategy} ({decision.reason})")
    elif "own-refs" in agent.workload.needs and agent.isolation == "auto":
        notes.append(
            "needs own-refs, but a container shares the repository's refs like a worktree: "
            "set isolation: clone if its refs must be its own (the image is then not used)"
        )
    return notes
