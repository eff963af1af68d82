from __future__ import annotations

import socket

import pytest

from hybridiso.errors import UserError
from hybridiso.ports import lease, port_is_free
from tests.support.postgres import free_port


def test_leases_are_stable_and_distinct() -> None:
    lo = free_port()
    first = lease({"a": ["web", "api"], "b": ["web"]}, {}, (lo, lo + 50))
    ports = [p for leases in first.values() for p in leases.values()]
    assert len(set(ports)) == 3
    again = lease({"a": ["web", "api"], "b": ["web"]}, first, (lo, lo + 50))
    assert again == first


def test_port_in_use_is_skipped() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        assert not port_is_free(busy)
        got = lease({"a": ["web"]}, {}, (busy, busy + 20))
        assert got["a"]["web"] != busy


def test_exhausted_range_lists_leases() -> None:
    lo = free_port()
    current = {"a": {"web": lo}}
    with pytest.raises(UserError) as e:
        lease({"a": ["web"], "b": ["web"]}, current, (lo, lo))
    assert "exhausted" in str(e.value) and f"a.web={lo}" in str(e.value)
