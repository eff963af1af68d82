"""How many land checks this machine sustains at once (``--parallel``'s
default).  Apart from the rest of land/ so that building the CLI's parser,
which prints it in ``land --help``, loads nothing else of land (``status``
builds that parser too).  The machine's capacity is hybridiso.machine's,
the same that bounds `up`'s compute-bound setups (issue 15)."""
from __future__ import annotations

from hybridiso import machine

GIB = machine.GIB
MEMORY_PER_CHECK = GIB  # what one check is assumed to need
MAX_DEFAULT = 8  # deeper windows mostly redo work when one fails


def machine_parallel() -> tuple[int, str]:
    """K for a bare ``--parallel``: one check per usable core, fewer when
    MemAvailable gives less than 1 GiB each, at most 8; and why."""
    here = machine.capacity()
    return min(here.jobs(MEMORY_PER_CHECK), MAX_DEFAULT), here.describe()
