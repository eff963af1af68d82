"""Which program holds a TCP port on this machine (issue 11: a leased port
taken by another program is named, with its holder).

Read from ``/proc``: the listening sockets in ``/proc/net/tcp``/``tcp6``
(local port, socket inode), then the process whose ``/proc/<pid>/fd`` links
to that inode.  Another user's processes are visible to root only; for
anyone else such a holder is "a program of another user".
"""
from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path

_LISTEN = "0A"


def free(port: int) -> bool:
    """Nothing listens on ``port`` (we could bind it on 127.0.0.1 and 0.0.0.0)."""
    for host in ("127.0.0.1", "0.0.0.0"):
        with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
            try:
                s.bind((host, port))
            except OSError:
                return False
    return True


def _listening_inodes(port: int) -> set[str]:
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == _LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes


def holders(port: int) -> list[tuple[int, str]]:
    """(pid, command line) of every process with a listening socket on ``port``."""
    inodes = {f"socket:[{i}]" for i in _listening_inodes(port)}
    if not inodes:
        return []
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            links = {os.readlink(f"/proc/{entry.name}/fd/{fd}") for fd in os.listdir(f"/proc/{entry.name}/fd")}
        except OSError:
            continue  # gone, or another user's
        if links & inodes:
            try:
                raw = Path(f"/proc/{entry.name}/cmdline").read_bytes()
            except OSError:
                raw = b""
            found.append((int(entry.name), raw.replace(b"\0", b" ").decode("utf-8", "replace").strip()[:160] or "?"))
    return sorted(found)


def describe(port: int) -> str:
    """"pid 1234: python3 -m http.server 20001", or why it cannot be named."""
    found = holders(port)
    if found:
        return "; ".join(f"pid {pid}: {cmd}" for pid, cmd in found[:3])
    if _listening_inodes(port):
        return "a program of another user (its process is not visible to this user)"
    return "a program that holds it without listening (or Docker itself, for a container that is not hybridiso's)"
