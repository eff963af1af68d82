"""`up`'s live progress on a terminal (issue 15): every running agent's
step and how long it has been at it, redrawn in place, so a 30 s setup
never looks hung.  The only module that imports rich, and only when it
draws: ``status`` and ``--version`` never load it.

On a pipe nothing is drawn: `up` prints one line per agent as it finishes
(output.progress_line), the format scripts and tests read.  What is printed
to stderr while drawing (those lines, warnings) goes above the drawing,
which is cleared at the end, so the terminal keeps the summary only.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

from hybridiso.output import printable

REFRESH_PER_SECOND = 4


class Shown(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def strategy(self) -> str: ...
    @property
    def step(self) -> str: ...
    @property
    def since(self) -> float: ...
    @property
    def done(self) -> bool: ...


def wanted() -> bool:
    """Draw on a terminal that can redraw: stderr is a tty and TERM is not dumb."""
    try:
        tty = sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False
    return tty and os.environ.get("TERM", "") != "dumb"


def elapsed(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds} s" if seconds < 60 else f"{seconds // 60} min {seconds % 60:02d} s"


def lines(rows: Sequence[Shown], now: float) -> list[tuple[str, str, str]]:
    """(agent, strategy, "step 12 s") for the jobs not finished yet."""
    return [(r.name, r.strategy, f"{printable(r.step)} {elapsed(now - r.since)}") for r in rows if not r.done]


@contextlib.contextmanager
def drawing(snapshot: Callable[[], Sequence[Shown]]) -> Iterator[bool]:
    """Redraw ``snapshot()`` in place while the block runs (yields True), or
    do nothing where it cannot be drawn (yields False)."""
    if not wanted():
        yield False
        return
    from rich.console import Console
    from rich.live import Live
    from rich.table import Table
    from rich.text import Text

    console = Console(file=sys.stderr, highlight=False, markup=False, emoji=False)
    busy = "\u2026" if (getattr(sys.stderr, "encoding", None) or "").lower().replace("-", "") == "utf8" else "~"

    def render() -> Any:
        table = Table.grid(padding=(0, 2))
        for name, strategy, step in lines(snapshot(), time.monotonic()):
            table.add_row(Text(f" {busy} {name}"), Text(strategy), Text(step))  # Text: never markup
        return table

    with Live(console=console, get_renderable=render, refresh_per_second=REFRESH_PER_SECOND, transient=True, redirect_stderr=True, redirect_stdout=False):
        yield True
