"""The registry of isolation strategies: one line per strategy module.

Every name here is in ``names.STRATEGY_NAMES`` (the list the core below this
layer reads: the manifest's ``isolation``, the state file), in the same
order, and each strategy says of itself what ``names`` tells the core
(``UNTRUSTED_FILES``, a repository of its own): checked when this module is
imported, so a strategy added to one and not the other fails at once.
"""
from __future__ import annotations

from collections.abc import Mapping

from hybridiso import names
from hybridiso.errors import UserError
from hybridiso.project import Project
from hybridiso.strategies import clone, container, worktree
from hybridiso.strategies.base import Strategy

__all__ = ["STRATEGIES", "Strategy", "disagreements", "find", "get", "ports_taken_by_others", "uses_docker"]

STRATEGIES: dict[str, Strategy] = {
    worktree.NAME: worktree,
    clone.NAME: clone,
    container.NAME: container,
}


def disagreements(registry: Mapping[str, Strategy]) -> list[str]:
    """How ``registry`` and the names table disagree (nothing when they agree)."""
    problems = []
    if tuple(registry) != tuple(names.STRATEGY_NAMES):
        problems.append(f"the registry has {', '.join(registry)}, names.STRATEGY_NAMES has {', '.join(names.STRATEGY_NAMES)}")
    for name, s in registry.items():
        if s.NAME != name:
            problems.append(f"{name} is registered under another name than its NAME {s.NAME!r}")
        if s.UNTRUSTED_FILES != (name in names.UNTRUSTED_FILES):
            problems.append(f"{name}: UNTRUSTED_FILES is {s.UNTRUSTED_FILES}, names.UNTRUSTED_FILES says otherwise")
        if (not s.SHARES_REFS) != (name in names.OWN_REPOSITORY):
            problems.append(f"{name}: SHARES_REFS is {s.SHARES_REFS}, names.OWN_REPOSITORY says otherwise")
    return problems


if disagreements(STRATEGIES):  # a programming error: fail on import, not on some later run
    raise RuntimeError("; ".join(disagreements(STRATEGIES)))


def get(name: str) -> Strategy:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise UserError(f"unknown isolation strategy {name!r} (known: {', '.join(sorted(STRATEGIES))})") from None


def find(name: str) -> Strategy | None:
    """The strategy named ``name``; None for a name this version does not
    know (a record set aside, a plan row that says so)."""
    return STRATEGIES.get(name)


def uses_docker(name: str) -> bool:
    found = find(name)
    return found is not None and found.USES_DOCKER


def ports_taken_by_others(project: Project, leases: Mapping[str, Mapping[str, int]], strategy_of: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """Of ``leases`` (agent -> port name -> port), the ports another program
    holds, asked of each agent's strategy (``strategy_of``: agent -> name)."""
    taken: dict[str, dict[str, str]] = {}
    for name, s in STRATEGIES.items():
        mine = {a: p for a, p in leases.items() if strategy_of.get(a) == name}
        if mine:
            taken.update(s.ports_taken_by_others(project, mine))
    return taken
