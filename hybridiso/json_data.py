"""JSON read from files anyone may have written (state, port registry,
reports, database comments): every way it can be hostile is a ``ValueError``,
which each reader treats as a corrupt file, never a crash.

``json.loads`` alone raises ``RecursionError`` on deep nesting (``[`` x
100,000) and turns ``1e400`` into ``inf``, which later blows up as an
``OverflowError`` where a number is used."""
from __future__ import annotations

import json
import math
from typing import Any


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]} is out of range")
    return value


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows")


def loads(text: str | bytes) -> Any:
    """``json.loads``, with nesting, infinities and NaN refused as ValueError."""
    try:
        return json.loads(text, parse_float=_finite, parse_constant=_no_constant)
    except RecursionError:
        raise ValueError("nested too deeply") from None
