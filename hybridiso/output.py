"""Everything printed for people or machines.  The only module that imports tabulate.

Data goes to stdout, messages and progress to stderr (the habit of git and compose: pipes get data, people get messages).
"""
from __future__ import annotations

import enum
import json
import sys
import types
from collections.abc import Mapping, Sequence
from dataclasses import fields, is_dataclass
from pathlib import PurePath
from typing import Any


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str], fmt: str = "simple") -> str:
    from tabulate import tabulate  # imported when a table is printed: most runs print none

    shown = [[printable(c) if isinstance(c, str) else c for c in row] for row in rows]
    return tabulate(shown, headers=list(headers), tablefmt=fmt, disable_numparse=True)


def print_table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> None:
    if rows:
        print(table(rows, headers))


def print_json(data: Any) -> None:
    """What ``--json`` prints, every command's: ``json_value(data)``."""
    json.dump(json_value(data), sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")


# field(metadata=NOT_IN_JSON): a field --json leaves out (a callback, what
# only the code reads); OMIT_IF_NONE: one it leaves out while it is None
NOT_IN_JSON: Mapping[str, Any] = types.MappingProxyType({"json": "never"})
OMIT_IF_NONE: Mapping[str, Any] = types.MappingProxyType({"json": "omit-if-none"})


def json_value(value: Any) -> Any:
    """``value`` as JSON data, the one way ``--json`` output is made.  A
    dataclass is an object of its fields in order (but those marked
    ``NOT_IN_JSON``, and ``OMIT_IF_NONE`` ones while None), then of the
    properties its class names in ``JSON_PROPERTIES``; a path is its string,
    an enum its value, a mapping an object, a list or tuple a list, a set a
    sorted list.  Any other type is a bug (TypeError), never its repr."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if is_dataclass(value) and not isinstance(value, type):
        data = {}
        for f in fields(value):
            item = getattr(value, f.name)
            shown = f.metadata.get("json")
            if shown == "never" or (shown == "omit-if-none" and item is None):
                continue
            data[f.name] = json_value(item)
        for name in getattr(value, "JSON_PROPERTIES", ()):
            data[name] = json_value(getattr(value, name))
        return data
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, enum.Enum):
        return json_value(value.value)
    if isinstance(value, Mapping):
        return {str(k): json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_value(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted(json_value(v) for v in value)
    raise TypeError(f"--json cannot print a {type(value).__name__}: give it a dataclass or plain data")


def printable(text: str) -> str:
    """``text`` for the terminal: names an agent chose (a file, a ref, a
    commit subject) may hold escape sequences or other control characters;
    they are shown (``\x1b``), never obeyed.  Line breaks and tabs stay."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c in "\n\t" else repr(c)[1:-1] for c in text)


def message(text: str) -> None:
    print(printable(text), file=sys.stderr, flush=True)


def warn(text: str) -> None:
    print(printable(f"hybridiso: warning: {text}"), file=sys.stderr, flush=True)


def _utf8() -> bool:
    # while up draws (output_live.py) stderr is rich's proxy, whose encoding is None
    enc = (getattr(sys.stderr, "encoding", None) or getattr(sys.__stderr__, "encoding", None) or "").lower()
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
