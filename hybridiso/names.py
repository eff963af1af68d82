"""Name rules for agents, branches and ports, checked before any git or Docker call.

Agent names become directory names, compose project name parts and env-var
suffixes, so they follow compose's project-name rule (lowercase letters,
digits, ``_`` and ``-``, starting with a letter or digit) and never contain a
path separator (FAULTS #3: no path may escape the workspace).
"""
from __future__ import annotations

import re

AGENT_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")
PORT_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,29}$")


def agent_name_problem(name: str) -> str | None:
    if AGENT_NAME_RE.match(name):
        return None
    return (
        f"agent name {name!r} is invalid: use 1-40 lowercase letters, digits, '-' or '_', "
        "starting with a letter or digit (the compose project-name rule; it also becomes a "
        "directory name, so no '/', '..' or spaces)"
    )


def port_name_problem(name: str) -> str | None:
    if PORT_NAME_RE.match(name):
        return None
    return (
        f"port name {name!r} is invalid: use lowercase letters, digits and '_', starting "
        "with a letter (it becomes the variable PORT_<NAME>)"
    )


_BAD_REF_CHARS = set(" ~^:?*[\\\x7f")


def branch_name_problem(name: str) -> str | None:
    """The rules of ``git check-ref-format --branch``, checked without running git."""
    why = _ref_problem(name)
    if why is None:
        return None
    return f"branch name {name!r} is invalid ({why}; see `git check-ref-format --branch`)"


def _ref_problem(name: str) -> str | None:
    if not name:
        return "it is empty"
    if name.startswith("-"):
        return "it starts with '-'"
    if name == "@":
        return "'@' alone is not a branch"
    if name.startswith("/") or name.endswith("/") or "//" in name:
        return "it has an empty path component"
    if name.endswith("."):
        return "it ends with '.'"
    if ".." in name:
        return "it contains '..'"
    if "@{" in name:
        return "it contains '@{'"
    for ch in name:
        if ch in _BAD_REF_CHARS or ord(ch) < 0x20:
            return f"it contains the character {ch!r}"
    for part in name.split("/"):
        if part.startswith("."):
            return f"component {part!r} starts with '.'"
        if part.endswith(".lock"):
            return f"component {part!r} ends with '.lock'"
    return None


def env_var_for_port(name: str) -> str:
    return f"PORT_{name.upper()}"
