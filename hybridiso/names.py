"""Name rules for agents, branches, ports and services, checked before any git
or Docker call.

Agent names become directory names, compose project name parts and env-var
suffixes, so they follow compose's project-name rule (lowercase letters,
digits, ``_`` and ``-``, starting with a letter or digit) and never contain a
path separator (docs/faults.md row 3: no path may escape the workspace).

Every rule matches the WHOLE name (``re.fullmatch``): ``$`` also matches
before a final newline, so ``"ui\\n"`` passed the old ``^...$`` patterns
(docs/faults.md row 39).
"""
from __future__ import annotations

import bisect
import hashlib
import os
import posixpath
import re
from collections.abc import Collection, Iterable
from pathlib import Path

AGENT_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}")
PORT_NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,29}")
# A service name is a compose service name (the agent's project reaches it by
# that hostname) and the prefix of its ``<NAME>_URL`` variable: lowercase, so
# the variable maps back to one service; 'agent' is the agent's own service.
SERVICE_NAME_RE = re.compile(r"[a-z][a-z0-9_-]{0,29}")
RESERVED_SERVICE_NAMES = frozenset({"agent"})

# The isolation strategies, by name, in the order reports show them: the one
# list the core reads (the manifest's ``isolation`` accepts these and
# ``auto``; the state file is read against it, and a record naming another
# strategy is set aside, not a crash).  The core sits below the strategies
# and cannot import them: the registry (hybridiso/strategies/__init__.py)
# is checked against this table when it is imported.  Read it as
# ``names.STRATEGY_NAMES`` (not a copy bound at import), so a strategy
# registered at run time (tests/strategies/test_new_strategy.py) is one.
STRATEGY_NAMES: tuple[str, ...] = ("worktree", "clone", "container")
# What the core must know of some strategies without importing them; each
# strategy module says the same of itself (``not SHARES_REFS``,
# ``UNTRUSTED_FILES``) and the registry checks they agree.
OWN_REPOSITORY: frozenset[str] = frozenset({"clone"})  # its environment is a repository of its own
UNTRUSTED_FILES: frozenset[str] = frozenset({"container"})  # the host's git never trusts its files

# git stores a branch as the file refs/heads/<name> and takes <name>.lock
# while it updates it: a component needs room for '.lock' in the file
# system's 255-byte limit ("File name too long" otherwise).
MAX_REF_COMPONENT_BYTES = 255 - len(".lock")


def agent_name_problem(name: str) -> str | None:
    if AGENT_NAME_RE.fullmatch(name):
        return None
    return (
        f"agent name {name!r} is invalid: use 1-40 lowercase letters, digits, '-' or '_', "
        "starting with a letter or digit (the compose project-name rule; it also becomes a "
        "directory name, so no '/', '..' or spaces)"
    )


def port_name_problem(name: str) -> str | None:
    if PORT_NAME_RE.fullmatch(name):
        return None
    return (
        f"port name {name!r} is invalid: use lowercase letters, digits and '_', starting "
        "with a letter (it becomes the variable PORT_<NAME>)"
    )


def service_name_problem(name: str) -> str | None:
    if name in RESERVED_SERVICE_NAMES:
        return f"service name {name!r} is reserved: it is the agent's own service in its compose project"
    if SERVICE_NAME_RE.fullmatch(name):
        return None
    return (
        f"service name {name!r} is invalid: use 1-30 lowercase letters, digits, '-' or '_', starting "
        "with a letter (it is a compose service name and becomes the variable <NAME>_URL)"
    )


_BAD_REF_CHARS = set(" ~^:?*[\\\x7f")


def branch_name_problem(name: str) -> str | None:
    """The rules of ``git check-ref-format --branch``, checked without running
    git, plus what git accepts there but cannot store or use (``HEAD``, a
    component too long for the file system)."""
    why = _ref_problem(name) or _storable_problem(name)
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
    if name == "HEAD":
        return "'HEAD' names the checked-out commit, not a branch"
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


def _storable_problem(name: str) -> str | None:
    for part in name.split("/"):
        size = len(part.encode("utf-8", errors="surrogatepass"))
        if size > MAX_REF_COMPONENT_BYTES:
            return (
                f"component {part[:20]!r}... is {size} bytes: git keeps each branch as a file and "
                f"needs room for '.lock', so at most {MAX_REF_COMPONENT_BYTES} bytes"
            )
    return None


def ref_conflict(name: str, others: Collection[str]) -> str | None:
    """The branch in ``others`` that git could not store beside ``name``: one
    would be a directory of the other (``feat`` beside ``feat/x``: git's
    "cannot lock ref" after seconds of retries), or None."""
    return _RefSet(others).conflict(name)


def ref_conflicts_with_existing(branches: Iterable[str], existing: Collection[str]) -> list[tuple[str, str]]:
    """``(branch, existing branch)`` for each branch to create that git could
    not store beside a branch the repository has; a branch that exists
    already is no conflict (it is used as it is)."""
    refs = _RefSet(existing)
    found = []
    for name in dict.fromkeys(branches):
        if name not in refs.names:
            other = refs.conflict(name)
            if other is not None:
                found.append((name, other))
    return found


class _RefSet:
    """Branch names, sorted once so that "is anything below feat/?" is a
    binary search: a repository may have thousands of branches."""

    def __init__(self, names: Collection[str]) -> None:
        self.names = frozenset(names)
        self.ordered = sorted(self.names)

    def conflict(self, name: str) -> str | None:
        parts = name.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if parent in self.names:
                return parent
        prefix = name + "/"
        i = bisect.bisect_left(self.ordered, prefix)
        if i < len(self.ordered) and self.ordered[i].startswith(prefix):
            return self.ordered[i]
        return None


def env_var_for_port(name: str) -> str:
    return f"PORT_{name.upper()}"


def env_var_for_service(name: str) -> str:
    """The variable holding a service's URL: ``my-db`` -> ``MY_DB_URL``."""
    return re.sub(r"[^A-Z0-9]", "_", name.upper()) + "_URL"


# --- compose project names ----------------------------------------------------------

# compose's rule for project names (compose-spec "name", docker compose -p)
PROJECT_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
PROJECT_NAME_MAX = 80


def _slug(text: str, limit: int) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:limit].strip("-") or "x"


def compose_project_name(repo_root: str, agent: str, repo_name: str | None = None) -> str:
    """``hybridiso-<repo>-<agent>-<hash>``: readable, valid for compose
    (``^[a-z0-9][a-z0-9_-]*$``, at most 80 characters), and distinct for
    distinct repos/agents even when the slugs collide, because the hash covers
    the exact (normalised) repository path and agent name.  ``repo_root`` is
    the repository's root as ``Project.root`` names it (the main worktree, or
    a bare repository's dir): fixed by its common git dir, so the same from
    every worktree (docs/faults.md row 22).  ``repo_name`` is only the readable part
    (default: the root's basename)."""
    root = posixpath.normpath(repo_root)
    digest = hashlib.sha256(f"{root}\0{agent}".encode("utf-8", "surrogatepass")).hexdigest()[:8]
    readable = posixpath.basename(root) if repo_name is None else repo_name
    name = f"hybridiso-{_slug(readable, 20)}-{_slug(agent, 40)}-{digest}"
    assert PROJECT_NAME_RE.match(name) and len(name) <= PROJECT_NAME_MAX, name
    return name


def project_id(common_dir: Path) -> str:
    """The repository's one id (``Project.id``): 12 hex digits of the sha256
    of its resolved common git dir.  It is the ``dev.hybridiso.project``
    label, the database branches' key, ``HYBRIDISO_PROJECT`` and the
    machine-wide port registry's key; the value the label always had, so
    existing containers, networks and volumes stay this project's."""
    return hashlib.sha256(os.fsencode(Path(common_dir).resolve())).hexdigest()[:12]
