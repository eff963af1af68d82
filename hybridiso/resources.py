"""Locate the data shipped beside the code: ``templates/`` and ``compose/``.

In a wheel they are force-included as ``hybridiso/_data/<kind>``; in a source
checkout (or an editable install) they sit at the top of the repository.  The
wheel location is tried first so an unrelated ``site-packages/templates``
directory can never be picked up.
"""
from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent


def data_dir(kind: str) -> Path:
    for candidate in (_HERE / "_data" / kind, _HERE.parent / kind):
        if candidate.is_dir() and (candidate / "README.md").is_file():
            return candidate
    raise FileNotFoundError(f"hybridiso data directory {kind!r} not found near {_HERE}")


def templates_dir() -> Path:
    return data_dir("templates")


def compose_dir() -> Path:
    return data_dir("compose")
