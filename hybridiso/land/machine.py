"""How many land checks this machine sustains at once (``--parallel``'s
default).  Apart from the rest of land/ so that building the CLI's parser,
which prints it in ``land --help``, loads nothing else of land (``status``
builds that parser too)."""
from __future__ import annotations

import os

GIB = 1 << 30
MEMORY_PER_CHECK = GIB  # what one check is assumed to need
MAX_DEFAULT = 8  # deeper windows mostly redo work when one fails


def machine_parallel() -> tuple[int, str]:
    """K for a bare ``--parallel``: one check per usable core, fewer when
    MemAvailable gives less than 1 GiB each, at most 8; and why."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    available = _mem_available()
    by_memory = max(1, available // MEMORY_PER_CHECK) if available is not None else MAX_DEFAULT
    k = max(1, min(cores, by_memory, MAX_DEFAULT))
    memory = f"{available / GIB:.1f} GiB available" if available is not None else "memory unknown"
    return k, f"{cores} usable core{'s' if cores != 1 else ''}, {memory}"


def _mem_available() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None
