from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from hybridiso.state import AgentRecord, StateStore


def test_round_trip_and_atomic_file(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    state = store.load()
    state.agents["a"] = AgentRecord(name="a", strategy="worktree", branch="b", path="/p", base="main", ports={"web": 20000})
    store.save(state)
    data = json.loads(store.path.read_text())
    assert data["agents"]["a"]["ports"] == {"web": 20000}
    assert not [p for p in store.dir.iterdir() if p.name.endswith(".tmp")]
    assert store.load().agents["a"].ports == {"web": 20000}


def test_corrupt_file_is_moved_aside_not_a_crash(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.dir.mkdir(parents=True)
    store.path.write_text("{not json")
    state = store.load()
    assert state.agents == {} and state.rebuilt_from and "unreadable" in state.rebuilt_from
    assert list(store.dir.glob("state.json.corrupt-*"))


def test_lock_blocks_a_second_holder(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    order: list[str] = []
    with store.locked("first", wait_message=False):
        t = threading.Thread(target=lambda: _take(store, order))
        t.start()
        time.sleep(0.3)
        order.append("first done")
    t.join(5)
    assert order == ["first done", "second"]


def _take(store: StateStore, order: list[str]) -> None:
    with StateStore(store.dir.parent).locked("second", wait_message=False):
        order.append("second")
