"""Named ports leased per agent from the manifest's range, never the same
port twice on the machine (docs/faults.md rows 14, 37).

An agent's leases live in its record (state.json, under the repository
lock), so they stay stable across runs.  Other repositories on the machine
lease from their own state files, so every lease is also written to one
registry per user, ``$XDG_STATE_HOME/hybridiso/ports.json`` (default
``~/.local/state/hybridiso/``), under its own ``flock`` (``ports.lock``):
port -> project id, repository (common git dir), agent, port name.  A lease
is taken only when neither this repository's records, nor a live lease of
another repository in the registry, nor a program listening on it (the live
check) has it.

Another repository's lease is stale, and taken back, when its repository is
gone or its state file no longer gives that port to that agent (the agent
was removed, a creation was rolled back, a run died before saving).  While a
hybridiso command holds that repository's lock its leases are never judged:
it may be between leasing and saving its records.  This repository's own
entries are rewritten from its records at every lease, and ``down``/``gc``
release theirs (``release``).  The registry is written atomically and never
through a symlink (safe_files); a corrupt one is moved aside and rebuilt as
repositories lease again.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hybridiso import json_data, output, safe_files
from hybridiso.errors import UserError
from hybridiso.names import project_id
from hybridiso.state import lock_is_free

REGISTRY_VERSION = 1
REGISTRY_DIR = "hybridiso"
REGISTRY_FILE = f"{REGISTRY_DIR}/ports.json"
REGISTRY_LOCK = f"{REGISTRY_DIR}/ports.lock"


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when nothing listens on ``port`` (we could bind it ourselves)."""
    for family, addr in ((socket.AF_INET, host), (socket.AF_INET, "0.0.0.0")):
        with contextlib.closing(socket.socket(family, socket.SOCK_STREAM)) as s:
            try:
                s.bind((addr, port))
            except OSError:
                return False
    return True


def lease(
    wanted: Mapping[str, Iterable[str]],
    current: Mapping[str, Mapping[str, int]],
    bounds: tuple[int, int],
    taken_elsewhere: Mapping[int, str] | None = None,
) -> dict[str, dict[str, int]]:
    """Return ``{agent: {port_name: port}}`` for every agent in ``wanted``.

    ``current`` holds existing leases of all agents (also ones not in
    ``wanted``); an agent keeps its leases, new names get the lowest free port
    that is neither leased here, nor leased to another repository
    (``taken_elsewhere``: port -> who), nor in use.
    """
    lo, hi = bounds
    elsewhere = taken_elsewhere or {}
    taken = {p for ports in current.values() for p in ports.values()} | set(elsewhere)
    result: dict[str, dict[str, int]] = {}
    candidate = lo
    for agent, names in wanted.items():
        mine = dict(current.get(agent, {}))
        leases: dict[str, int] = {}
        for name in names:
            if name in mine and lo <= mine[name] <= hi:
                leases[name] = mine[name]
                continue
            while candidate <= hi and (candidate in taken or not port_is_free(candidate)):
                candidate += 1
            if candidate > hi:
                listing = ", ".join(
                    f"{a}.{n}={p}" for a, ports in sorted(current.items()) for n, p in sorted(ports.items())
                ) or "none"
                others = sum(1 for p in elsewhere if lo <= p <= hi)
                also = f"; {others} leased to other repositories on this machine" if others else ""
                raise UserError(
                    f"port range {lo}-{hi} is exhausted: no free port for {agent}.{name} "
                    f"(leases: {listing}{also}; ports in use by other programs were skipped)",
                    hint="widen ports.range in hybridiso.yaml, or `hybridiso down` agents you no longer need",
                )
            leases[name] = candidate
            taken.add(candidate)
            candidate += 1
        result[agent] = leases
    return result


# --- the machine-wide registry ------------------------------------------------------


def state_home() -> Path:
    """``$XDG_STATE_HOME`` when it is an absolute path (the XDG spec ignores
    relative ones), else ``~/.local/state``."""
    xdg = os.environ.get("XDG_STATE_HOME", "")
    return Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".local" / "state"


@dataclass(frozen=True)
class Entry:
    port: int
    project: str  # the repository's id (names.project_id, Project.id)
    repo: str  # the repository's common git dir
    agent: str
    name: str  # the port's name (web -> PORT_WEB)
    leased_at: float = field(default_factory=time.time)

    def who(self) -> str:
        return f"agent {self.agent} ({self.name}) of {self.repo}"


@dataclass
class Registry:
    entries: dict[int, Entry]
    note: str = ""  # why it was rebuilt, when it was

    def of_others(self, project: str) -> dict[int, Entry]:
        return {p: e for p, e in self.entries.items() if e.project != project}


def _anchor() -> Path:
    home = state_home()
    try:
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as e:
        raise _unusable(home, e) from None
    if not home.is_dir():
        raise UserError(
            f"the state directory {home} for the machine's port registry is not a directory",
            hint="point XDG_STATE_HOME at a directory (or unset it for ~/.local/state)",
        )
    return home


def _unusable(where: Path, e: OSError) -> UserError:
    return UserError(
        f"cannot use {where} for the machine's port registry: {e.strerror or e}",
        hint="make it a directory you can write (or set XDG_STATE_HOME to one); no port was leased",
    )


def _parse(raw: str) -> dict[int, Entry]:
    data = json_data.loads(raw)
    if not isinstance(data, dict) or data.get("version") != REGISTRY_VERSION or not isinstance(data.get("leases"), list):
        raise ValueError("not a hybridiso port registry")
    entries: dict[int, Entry] = {}
    for item in data["leases"]:
        if not isinstance(item, dict):
            raise ValueError("a lease is not an object")
        e = Entry(int(item["port"]), str(item["project"]), str(item["repo"]), str(item["agent"]), str(item["name"]), float(item.get("leased_at", 0)))
        entries[e.port] = e
    return entries


def _load(anchor: Path) -> Registry:
    try:
        raw = safe_files.read_text(anchor, REGISTRY_FILE)  # a symlink or FIFO there: one clear error (docs/faults.md row 31)
    except OSError as e:
        raise _unusable(anchor / REGISTRY_FILE, e) from None
    if raw is None:
        return Registry({})
    try:
        return Registry(_parse(raw))
    except (ValueError, TypeError, KeyError, OverflowError) as e:
        aside = anchor / f"{REGISTRY_FILE}.corrupt-{int(time.time())}"
        with contextlib.suppress(OSError):
            os.replace(anchor / REGISTRY_FILE, aside)
        return Registry({}, f"the port registry {anchor / REGISTRY_FILE} was unreadable ({e}); moved to {aside.name}, rebuilt as repositories lease again")


def _save(anchor: Path, registry: Registry) -> None:
    leases = [asdict(e) for _, e in sorted(registry.entries.items())]
    text = json.dumps({"version": REGISTRY_VERSION, "leases": leases}, indent=2, sort_keys=True) + "\n"
    try:
        safe_files.write_atomic(anchor, REGISTRY_FILE, text, mode=0o600, dir_mode=0o700)
    except OSError as e:
        raise UserError(
            f"cannot write the port registry {anchor / REGISTRY_FILE}: {e.strerror}",
            hint="free some disk space (or fix that directory's permissions); no port was leased",
        ) from None


@contextlib.contextmanager
def _locked() -> Iterator[tuple[Path, Registry]]:
    anchor = _anchor()
    try:
        fd = safe_files.open_regular(anchor, REGISTRY_LOCK, os.O_RDWR | os.O_CREAT)
    except OSError as e:
        raise _unusable(anchor / REGISTRY_DIR, e) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # held for milliseconds: no message needed
        yield anchor, _load(anchor)
    finally:
        os.close(fd)


_KEEP = "keep"  # the repository cannot be judged now: all its leases hold


def _records_of(repo: str) -> dict[str, Any] | str | None:
    """A repository's agents as its state file has them; None when the
    repository is gone, ``_KEEP`` when its leases cannot be judged now."""
    common = Path(repo)
    if not common.is_absolute() or not (common / "HEAD").is_file() or not (common / "objects").is_dir():
        return None  # the repository is gone (or the entry never named one)
    if not lock_is_free(common / "hybridiso" / "lock"):
        return _KEEP  # a command is running there: maybe between leasing and saving
    try:
        raw = safe_files.read_text(common, "hybridiso/state.json")
    except (OSError, safe_files.UnsafePath):
        return _KEEP  # cannot tell: never take a port that may be in use
    if raw is None:
        return _KEEP  # lost state file: its records are rebuilt from the env files, ports included
    try:
        agents = json_data.loads(raw).get("agents", {})
    except (ValueError, AttributeError):
        return _KEEP  # a corrupt file is rebuilt from reality by its own next run
    return agents if isinstance(agents, dict) else _KEEP


def _holds(entry: Entry, agents: dict[str, Any] | str | None) -> bool:
    """Does ``entry``'s repository still give that port to that agent?"""
    if agents is None:
        return False
    if agents == _KEEP or not isinstance(agents, dict):
        return True
    record = agents.get(entry.agent)
    ports = record.get("ports") if isinstance(record, dict) else None
    return isinstance(ports, dict) and ports.get(entry.name) == entry.port


def live_elsewhere(registry: Registry, project: str) -> tuple[dict[int, Entry], list[int]]:
    """Other repositories' leases that still hold, and the stale ports (each
    repository's state file is read once)."""
    live, stale = {}, []
    seen: dict[str, dict[str, Any] | str | None] = {}
    for port, e in registry.of_others(project).items():
        if e.repo not in seen:
            seen[e.repo] = _records_of(e.repo)
        if _holds(e, seen[e.repo]):
            live[port] = e
        else:
            stale.append(port)
    return live, stale


@dataclass(frozen=True)
class Leases:
    ports: dict[str, dict[str, int]]  # agent -> {name: port}, for every wanted agent
    moved: list[str]  # agents' existing leases another repository holds: leased anew
    note: str = ""  # the registry was rebuilt


def lease_machine_wide(
    common_dir: Path,
    wanted: Mapping[str, Iterable[str]],
    current: Mapping[str, Mapping[str, int]],
    bounds: tuple[int, int],
) -> Leases:
    """``lease`` that no other repository on the machine contradicts, under
    the registry's lock; this repository's entries are rewritten from
    ``current`` plus the new leases (its records are the truth for it)."""
    project, repo = project_id(common_dir), str(Path(common_dir).resolve())
    with _locked() as (anchor, registry):
        live, stale = live_elsewhere(registry, project)
        for port in stale:
            del registry.entries[port]
        # two repositories leased one port before the registry existed (or
        # one's record was edited): the registry's live holder keeps it
        kept: dict[str, dict[str, int]] = {}
        moved = []
        for agent, ports in current.items():
            kept[agent] = {}
            for name, port in ports.items():
                if port in live:
                    moved.append(f"{agent}.{name}={port} is leased to {live[port].who()}")
                else:
                    kept[agent][name] = port
        result = lease(wanted, kept, bounds, {p: e.who() for p, e in live.items()})
        mine = {a: dict(p) for a, p in kept.items()}
        mine.update(result)
        registry.entries = {p: e for p, e in registry.entries.items() if e.project != project}
        for agent, ports in sorted(mine.items()):
            for name, port in sorted(ports.items()):
                registry.entries[port] = Entry(port, project, repo, agent, name)
        _save(anchor, registry)
        return Leases(result, moved, registry.note)


def release(common_dir: Path, agents: Iterable[str]) -> None:
    """Give back the registry entries of ``agents`` of this repository
    (``down``, ``gc``, a rolled-back creation).  Best effort: what could not
    be given back is stale (no record holds it) and taken back by the next
    lease anywhere, so a registry that cannot be written is a warning here."""
    project, names = project_id(common_dir), set(agents)
    if not names or not os.path.lexists(state_home() / REGISTRY_FILE):
        return
    try:
        with _locked() as (anchor, registry):
            before = len(registry.entries)
            registry.entries = {p: e for p, e in registry.entries.items() if not (e.project == project and e.agent in names)}
            if len(registry.entries) != before or registry.note:
                _save(anchor, registry)
    except (UserError, OSError) as e:
        output.warn(f"the port leases of {', '.join(sorted(names))} stay in the machine's registry: {e}")


def leased_elsewhere(common_dir: Path) -> dict[int, Entry]:
    """Live leases of other repositories on the machine (read-only: for
    ``doctor`` and ``render``'s provisional leases)."""
    if not os.path.lexists(state_home() / REGISTRY_FILE):
        return {}
    with _locked() as (_, registry):
        live, _stale = live_elsewhere(registry, project_id(common_dir))
        return live
