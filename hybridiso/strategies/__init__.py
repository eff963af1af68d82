"""The registry of isolation strategies: one line per strategy module."""
from __future__ import annotations

from typing import cast

from hybridiso.errors import UserError
from hybridiso.strategies import clone, worktree
from hybridiso.strategies.base import Strategy

STRATEGIES: dict[str, Strategy] = {
    worktree.NAME: cast(Strategy, worktree),
    clone.NAME: cast(Strategy, clone),
}


def get(name: str) -> Strategy:
    try:
        return STRATEGIES[name]
    except KeyError:
        if name == "container":
            raise UserError(
                "the container strategy is not available in this build",
                hint="use isolation: worktree or clone",
            ) from None
        raise UserError(f"unknown isolation strategy {name!r} (known: {', '.join(sorted(STRATEGIES))})") from None
