"""What this machine sustains at once: the one capacity function that `up`'s
setup admission (envs/admission.py), `plan` and `land --parallel` share
(issue 15).  Only ``os``: the CLI's parser prints it in ``land --help``.

Cores are the ones this process may run on (``sched_getaffinity``), fewer
when a cgroup's ``cpu.max`` gives less (a container, a systemd slice);
memory is ``/proc/meminfo``'s, less when the cgroup's ``memory.max`` (less
its ``memory.current``) is lower.  What cannot be read is left out of the bound, never guessed low.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

GIB = 1 << 30
CGROUP = "/sys/fs/cgroup"  # the unified hierarchy (cgroup v2)


@dataclass(frozen=True)
class Capacity:
    cores: int
    memory_total: int | None  # bytes; None: unknown
    memory_available: int | None
    cores_from: str  # where the core count came from (for the message)

    def jobs(self, memory_each: int = GIB) -> int:
        """Compute-bound jobs at once: one per core, fewer when available
        memory gives less than ``memory_each`` to each; at least one."""
        by_memory = self.memory_available // memory_each if self.memory_available is not None and memory_each > 0 else self.cores
        return max(1, min(self.cores, by_memory))

    def describe(self) -> str:
        memory = f"{self.memory_available / GIB:.1f} GiB available" if self.memory_available is not None else "memory unknown"
        return f"{self.cores} usable core{'s' if self.cores != 1 else ''}{self.cores_from}, {memory}"


def capacity(root: str = CGROUP) -> Capacity:
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    cores_from = ""
    quota = _cpu_max(root)
    if quota is not None and quota < cores:
        cores, cores_from = quota, " (cgroup cpu.max)"
    total, available = _meminfo()
    limit, used = _memory_max(root)
    if limit is not None:
        left = max(0, limit - used)  # what the cgroup may still take
        total = limit if total is None else min(total, limit)
        available = left if available is None else min(available, left)
    return Capacity(max(1, cores), total, available, cores_from)


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as f:
            return f.read(256)
    except (OSError, ValueError):
        return None


def _own_cgroup(root: str) -> str:
    text = _read("/proc/self/cgroup") or ""
    for line in text.splitlines():
        if line.startswith("0::"):
            rel = line[3:].strip().lstrip("/")
            if rel and ".." not in rel.split("/"):
                return os.path.join(root, rel)
    return root


def _cpu_max(root: str) -> int | None:
    """``cpu.max`` ("quota period" or "max period") as whole cores, rounded up."""
    for where in dict.fromkeys((_own_cgroup(root), root)):
        parts = (_read(os.path.join(where, "cpu.max")) or "").split()
        if len(parts) == 2 and parts[0] != "max":
            try:
                quota, period = int(parts[0]), int(parts[1])
            except ValueError:
                continue
            if quota > 0 and period > 0:
                return max(1, math.ceil(quota / period))
    return None


def _memory_max(root: str) -> tuple[int | None, int]:
    """The cgroup's ``memory.max`` and its ``memory.current`` (0 unread)."""
    for where in dict.fromkeys((_own_cgroup(root), root)):
        text = (_read(os.path.join(where, "memory.max")) or "").strip()
        if text.isdigit():
            used = (_read(os.path.join(where, "memory.current")) or "").strip()
            return int(text), int(used) if used.isdigit() else 0
    return None, 0


def _meminfo() -> tuple[int | None, int | None]:
    total = available = None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("MemTotal", "MemAvailable"):
                    try:
                        value = int(rest.split()[0]) * 1024
                    except (ValueError, IndexError):
                        continue
                    if key == "MemTotal":
                        total = value
                    else:
                        available = value
    except OSError:
        pass
    return total, available
