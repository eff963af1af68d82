"""The registry of isolation strategies: one line per strategy module."""
from __future__ import annotations

from typing import cast

from hybridiso.errors import UserError
from hybridiso.strategies import clone, container, worktree
from hybridiso.strategies.base import Strategy

STRATEGIES: dict[str, Strategy] = {
    worktree.NAME: cast(Strategy, worktree),
    clone.NAME: cast(Strategy, clone),
    container.NAME: cast(Strategy, container),
}


def get(name: str) -> Strategy:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise UserError(f"unknown isolation strategy {name!r} (known: {', '.join(sorted(STRATEGIES))})") from None
