"""Rendering files from Jinja2 templates.  The only module that imports jinja2.

Values from the manifest never reach a YAML file raw: every one goes through
the ``q`` filter, which writes it in JSON's scalar syntax (a double-quoted
string, a number, true/false/null -- JSON is YAML) after doubling each ``$``
so Compose never interpolates it.  ``q`` writes the escapes itself rather
than calling ``json.dumps``: JSON spells astral characters as surrogate pairs
(``\\ud83d\\ude00``), which YAML reads as two lone surrogates, and a raw
U+2028/U+0085 inside a YAML quoted scalar is folded as a line break.
hybridiso's own variables (``${PORT_WEB}`` in a command) are filled in
before, by ``expand_vars``.  tests/test_render.py proves it with a property
test.
"""
from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from typing import Any

import jinja2

from hybridiso.resources import compose_dir, templates_dir

_VAR_RE = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")


def expand_vars(text: str, variables: Mapping[str, str]) -> str:
    """Replace ``${NAME}``/``$NAME`` for the names in ``variables``; leave
    every other ``$`` as written (``render`` escapes those for Compose)."""

    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        return variables[name] if name in variables else m.group(0)

    return _VAR_RE.sub(sub, text)


def _escape(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("$", "$$")
    if isinstance(value, (list, tuple)):
        return [_escape(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _escape(v) for k, v in value.items()}  # Compose interpolates values, never keys
    return value


def _printable(ch: str) -> bool:
    # YAML's "printable" set, minus the characters YAML 1.1 folds as line
    # breaks inside quoted scalars (NEL, LS, PS) and the BOM: those are escaped
    o = ord(ch)
    return (
        0x20 <= o <= 0x7E
        or 0xA0 <= o <= 0xD7FF
        or 0xE000 <= o <= 0xFFFD
        or 0x10000 <= o <= 0x10FFFF
    ) and o not in (0xFEFF, 0x2028, 0x2029)


_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _yaml_string(text: str) -> str:
    out = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif _printable(ch):
            out.append(ch)
        elif ord(ch) <= 0xFF:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) <= 0xFFFF:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    return '"' + "".join(out) + '"'


def _flow(value: Any) -> str:
    if isinstance(value, str):
        return _yaml_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_flow(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_yaml_string(str(k))}: {_flow(v)}" for k, v in value.items()) + "}"
    if value is None or isinstance(value, (bool, int, float)):
        return json.dumps(value, allow_nan=False)  # numbers, booleans, null
    raise TypeError(f"cannot write {type(value).__name__} {value!r} into YAML")


def quote(value: Any) -> str:
    """A value as a YAML flow scalar/sequence/mapping: strings double-quoted
    with every non-printable escaped, and ``$`` doubled for Compose."""
    return _flow(_escape(value))


@functools.lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        # compose/ holds the service fragments that compose.yaml.j2 includes
        loader=jinja2.FileSystemLoader([str(templates_dir()), str(compose_dir())]),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["q"] = quote
    return env


def render_template(name: str, **context: Any) -> str:
    return _environment().get_template(name).render(**context)
