"""Setup and check commands that outlive the run that started them (docs/faults.md row 38).

Every command runs in a session of its own (``setup_runner``), and its group
is recorded before it is waited for (``state.ProcessGroup``).  When that run
is killed (``kill -9`` of ``up``), the group keeps running and would write
into an environment the next ``up`` makes again at the same path.  This
module finds what is left of a recorded group and stops it.

A pid is not an identity: pids are reused, and a record can be stale (a
reboot) or tampered with.  A process belongs to a recorded group when
- it carries the group's random token in its environment (``TOKEN_VAR``,
  inherited by everything the command started, also by what left the group
  with ``setsid``), or
- it is in process group ``pgid`` and a member of that group carries the
  token.  (Linux never hands out a pid that is still some process's group
  id, so a group with a member of ours is all ours: this catches a child
  that cleared its environment.)
The leader's start time alone proves nothing a record could not claim, so it
is never enough; it serves to signal exactly the process that was looked at:
signals go through a pidfd opened on the process and checked again, so a pid
reused between looking and signalling is never hit.  What this cannot find:
a command whose leader replaced its own environment (``exec env -i ...``)
with no member left that has the token, and processes of another user
(``sudo``), whose environment cannot be read.
"""
from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from hybridiso.state import ProcessGroup

TOKEN_VAR = "HYBRIDISO_SETUP_ID"
PROC = Path("/proc")
ENVIRON_LIMIT = 1 << 20  # an environment bigger than this is not one we gave


@dataclass(frozen=True)
class Proc:
    pid: int
    pgrp: int
    start: int
    state: str
    name: str


def boot_id() -> str:
    try:
        return (PROC / "sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def read_stat(pid: int) -> Proc | None:
    """/proc/PID/stat, parsed after the last ')' (the name may hold any byte)."""
    try:
        raw = (PROC / str(pid) / "stat").read_bytes()
    except OSError:
        return None
    head, _, rest = raw.rpartition(b")")
    fields = rest.split()
    try:
        # fields after the name: state(3) ppid(4) pgrp(5) ... starttime(22)
        return Proc(pid, int(fields[2]), int(fields[19]), fields[0].decode(), head.partition(b"(")[2].decode(errors="replace"))
    except (IndexError, ValueError):
        return None


def stamp(pid: int, token: str, command: str) -> ProcessGroup:
    """The record of a command just started with ``start_new_session``: it
    leads its own group, so its pid is the group id."""
    proc = read_stat(pid)
    return ProcessGroup(pgid=pid, start=proc.start if proc else 0, boot_id=boot_id(), token=token, command=command, started_at=time.time())


def _tokens(pid: int) -> set[str]:
    """The setup tokens in the environment of ``pid`` (empty for another
    user's process, which our setup did not start)."""
    try:
        fd = os.open(PROC / str(pid) / "environ", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return set()
    try:
        data = os.read(fd, ENVIRON_LIMIT)
    except OSError:
        return set()
    finally:
        os.close(fd)
    prefix = f"{TOKEN_VAR}=".encode()
    return {v[len(prefix):].decode(errors="replace") for v in data.split(b"\0") if v.startswith(prefix)}


def _processes() -> list[Proc]:
    found = []
    me = os.getpid()
    for entry in os.scandir(PROC):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        proc = read_stat(int(entry.name))
        if proc is not None and proc.state not in ("Z", "X"):  # zombies are already dead
            found.append(proc)
    return found


def survivors(groups: Sequence[ProcessGroup]) -> dict[int, list[Proc]]:
    """index in ``groups`` -> the live processes that belong to it (one pass
    over /proc, each environment read once)."""
    if not groups:
        return {}
    procs = _processes()
    by_pid = {p.pid: p for p in procs}
    wanted = {g.token for g in groups}
    tokens = {p.pid: found for p in procs if (found := _tokens(p.pid) & wanted)}
    result: dict[int, list[Proc]] = {}
    for i, group in enumerate(groups):
        members = [p for p in procs if p.pgrp == group.pgid]
        ours = any(group.token in tokens.get(p.pid, ()) for p in members)
        mine = {p.pid: p for p in members} if ours else {}
        # what left the group (setsid, a daemon) still carries the token
        mine.update({pid: by_pid[pid] for pid, found in tokens.items() if group.token in found})
        if mine:
            result[i] = sorted(mine.values(), key=lambda p: p.pid)
    return result


def _signal(proc: Proc, sig: int) -> None:
    """Signal ``proc`` only if the pid still names the process we looked at."""
    try:
        fd = os.pidfd_open(proc.pid)
    except ProcessLookupError:
        return
    except (AttributeError, OSError):
        # no pidfds (Linux < 5.3): check, then signal; the window is tiny
        now = read_stat(proc.pid)
        if now is not None and now.start == proc.start:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, sig)
        return
    try:
        now = read_stat(proc.pid)
        if now is None or now.start != proc.start:
            return
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(fd, sig)
    finally:
        os.close(fd)


def stop(groups: Sequence[ProcessGroup], grace: float = 3.0) -> list[str]:
    """SIGTERM everything left of ``groups``, SIGKILL what is still there
    after ``grace`` seconds; return what could not be stopped."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        left = survivors(groups)
        if not left:
            return []
        deadline = time.monotonic() + wait
        while left and time.monotonic() < deadline:
            for procs in left.values():
                for p in procs:
                    _signal(p, sig)  # again each round: a child forked meanwhile gets it too
            time.sleep(0.05)
            left = survivors(groups)
    return [describe(p) for procs in survivors(groups).values() for p in procs]


def exec_token(project_id: str, agent: str) -> str:
    """What ``hybridiso exec`` puts in its command's environment
    (``TOKEN_VAR``): everything the command starts carries it, so ``down``
    finds what still runs in the environment it would remove."""
    return f"exec:{project_id}:{agent}"


def land_token(project_id: str) -> str:
    """A token for one ``land`` check command: ``land:<project id>:<random>``.
    Unlike the exec token, nobody can predict it, and the prefix tells land's
    groups from every other kind: a journal entry naming another token (an
    agent's ``exec:...``, a setup's) is never one land issued, so land never
    signals what it names (docs/faults.md row 41)."""
    return f"land:{project_id}:{secrets.token_hex(16)}"


def is_land_token(token: str, project_id: str) -> bool:
    """``token`` has the shape of one ``land_token(project_id)`` gives."""
    prefix = f"land:{project_id}:"
    return token.startswith(prefix) and re.fullmatch(r"[0-9a-f]{32}", token[len(prefix):]) is not None


_exec_index: tuple[float, dict[str, list[Proc]]] | None = None
EXEC_INDEX_SECONDS = 1.0


def exec_holders(token: str) -> list[Proc]:
    """The live processes carrying ``token``, from one pass over /proc that
    a command removing many environments shares (for up to a second: a pass
    reads every process's environment, ~10 ms per 100 processes)."""
    global _exec_index
    now = time.monotonic()
    if _exec_index is None or now - _exec_index[0] > EXEC_INDEX_SECONDS:
        index: dict[str, list[Proc]] = {}
        for p in _processes():
            for found in _tokens(p.pid):
                if found.startswith("exec:"):
                    index.setdefault(found, []).append(p)
        _exec_index = (now, index)
    return list(_exec_index[1].get(token, []))


def exec_group(project_id: str, agent: str) -> ProcessGroup:
    """The processes of every ``exec`` into ``agent``'s environment, as a
    group ``survivors`` and ``stop`` know: matched by the token alone (no
    process leads group 0)."""
    return ProcessGroup(pgid=0, start=0, boot_id=boot_id(), token=exec_token(project_id, agent), command="hybridiso exec", started_at=0.0)


def describe(proc: Proc) -> str:
    return f"pid {proc.pid} ({proc.name})"


def describe_group(group: ProcessGroup) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(group.started_at)) if group.started_at else "an earlier run"
    return f"pid {group.pgid} `{group.command}` started {when}"


def listing(procs: Iterable[Proc], limit: int = 5) -> str:
    procs = list(procs)
    shown = ", ".join(describe(p) for p in procs[:limit])
    return shown + (f" (+{len(procs) - limit} more)" if len(procs) > limit else "")
