"""Named ports leased per agent from the manifest's range.

Leases live in the agent records of the state file, so they are recorded under
the repository lock and stay stable across runs.  A port that another program
is listening on is skipped (FAULTS #14); an exhausted range fails before
anything is created, listing the current leases.
"""
from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterable, Mapping

from hybridiso.errors import UserError


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
) -> dict[str, dict[str, int]]:
    """Return ``{agent: {port_name: port}}`` for every agent in ``wanted``.

    ``current`` holds existing leases of all agents (also ones not in
    ``wanted``); an agent keeps its leases, new names get the lowest free port
    that is neither leased nor in use.
    """
    lo, hi = bounds
    taken = {p for ports in current.values() for p in ports.values()}
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
                raise UserError(
                    f"port range {lo}-{hi} is exhausted: no free port for {agent}.{name} "
                    f"(leases: {listing}; ports in use by other programs were skipped)",
                    hint="widen ports.range in hybridiso.yaml, or `hybridiso down` agents you no longer need",
                )
            leases[name] = candidate
            taken.add(candidate)
            candidate += 1
        result[agent] = leases
    return result
