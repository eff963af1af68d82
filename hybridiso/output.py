"""Everything printed for people or machines.  The only module that imports tabulate.

Data goes to stdout, messages and progress to stderr (the habit of git and compose: pipes get data, people get messages).
"""
from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any



def table(rows: Sequence[Sequence[Any]], headers: Sequence[str], fmt: str = "simple") -> str:
    from tabulate import tabulate  # imported when a table is printed: most runs print none

    return tabulate(rows, headers=list(headers), tablefmt=fmt, disable_numparse=True)


def print_table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> None:
    if rows:
        print(table(rows, headers))


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=False, default=str)
    sys.stdout.write("\n")


def message(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def warn(text: str) -> None:
    print(f"hybridiso: warning: {text}", file=sys.stderr, flush=True)


def _utf8() -> bool:
    enc = (getattr(sys.stderr, "encoding", None) or "").lower()
    return enc.replace("-", "") == "utf8"


def mark(ok: bool) -> str:
    if _utf8():
        return "\u2714" if ok else "\u2718"
    return "ok" if ok else "!!"


def progress_line(ok: bool, agent: str, strategy: str, action: str, seconds: float | None, width: int = 12, note: str = "") -> None:
    timing = f"{seconds:6.2f}s" if seconds is not None else ""
    message(f" {mark(ok)} {agent:<{width}} {strategy:<9} {action:<11} {timing}{f'  ({note})' if note else ''}".rstrip())


def plural(n: int, word: str, many: str | None = None) -> str:
    """``1 commit``, ``2 commits`` (``many`` for words without a plain -s)."""
    return f"{n} {word if n == 1 else many or word + 's'}"


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"
