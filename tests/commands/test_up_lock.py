"""The repository lock is held only while state changes (issue 15): a long
setup does not block status, down/gc of other agents or an up of another
agent; an agent a live run has claimed is never judged half-made, removed
or created twice (docs/faults.md row 10).  Setups block on a file the test
creates, never on a sleep: nothing here depends on how fast the machine is."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.support.cli import hybridiso, no_crash, state, status_json, write_manifest
from tests.support.gitrepo import make_repo

WALL = 10  # seconds a command may take while a setup blocks: a hang, not a speed, fails it


def _blocking_setup(started: Path, release: Path) -> str:
    # waits for the test's file (at most a minute, so a failed test ends)
    return f"touch {started}; i=0; while [ ! -e {release} ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done"


def _wait_for(predicate, timeout: float = 60) -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached")


def _start(repo: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "hybridiso", *args], cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen[str]) -> tuple[str, str]:
    out, err = proc.communicate(timeout=120)
    no_crash(proc.returncode, err)
    return out, err


def test_status_down_gc_exec_and_another_up_go_on_while_a_setup_blocks(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r")
    started, release = tmp_path / "started", tmp_path / "release"
    write_manifest(
        repo,
        f"agents:\n  - name: slow\n    setup: ['{_blocking_setup(started, release)}']\n  - name: b\n  - name: c\n",
    )
    hybridiso(repo, "up", "c")
    slow = _start(repo, "up", "slow")
    try:
        _wait_for(started.exists)
        # status answers, and says the agent is being made, not ready
        row = status_json_within(repo, WALL)["slow"]
        assert row["state"] == f"creating (in progress: hybridiso up, pid {slow.pid})", row
        # another agent is created, another removed, while the setup still blocks
        r = hybridiso(repo, "up", "b", timeout=60)
        assert "Created" in r.stderr and "waiting" not in r.stderr
        hybridiso(repo, "down", "c", timeout=60)
        assert slow.poll() is None and not release.exists()  # all of it happened during the setup
        # the agent being made is left to the run making it
        r = hybridiso(repo, "down", "slow", ok=False, timeout=60)
        assert f"agent slow: pid {slow.pid} (hybridiso up) is working on it now; nothing was removed" in r.stderr
        r = hybridiso(repo, "gc", "--yes", timeout=60)
        assert f"pid {slow.pid} (hybridiso up) is working on it now" in r.stdout + r.stderr
        r = hybridiso(repo, "exec", "slow", "--", "true", ok=False, timeout=60)
        assert "not ready: a running `hybridiso up` is creating it" in r.stderr
        assert state(repo)["agents"]["slow"]["phase"] == "creating"
        assert slow.poll() is None  # gc stopped nothing of its setup
    finally:
        release.touch()
        _, err = _finish(slow)
    assert slow.returncode == 0, err
    agents = state(repo)["agents"]
    # its saves merged its record into the file: b, made meanwhile, is kept; c stays removed
    assert sorted(agents) == ["b", "slow"] and {a["phase"] for a in agents.values()} == {"ready"}
    assert {r["state"] for r in status_json(repo).values() if r["agent"] != "c"} == {"ready"}


def status_json_within(repo: Path, seconds: float) -> dict[str, dict[str, object]]:
    """``status --json`` that must answer within ``seconds`` (it hangs if it waits for the setup)."""
    import json

    r = hybridiso(repo, "status", "--json", "--no-disk", timeout=seconds)
    return {row["agent"]: row for row in json.loads(r.stdout)}


def test_two_ups_of_overlapping_agents_wait_only_for_the_shared_one(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r")
    started, release = tmp_path / "started", tmp_path / "release"
    write_manifest(
        repo,
        f"agents:\n  - name: slow\n    setup: ['{_blocking_setup(started, release)}']\n  - name: b\n  - name: c\n",
    )
    first = _start(repo, "up", "slow", "b")
    said: list[str] = []
    try:
        _wait_for(started.exists)
        second = _start(repo, "up", "b", "c")
        assert second.stderr is not None
        reader = threading.Thread(target=lambda: said.extend(second.stderr or []), daemon=True)
        reader.start()
        _wait_for(lambda: any("waiting for agent b" in line for line in said))
        assert second.poll() is None and first.poll() is None
    finally:
        release.touch()
        _, err1 = _finish(first)
    second.wait(timeout=120)
    reader.join(timeout=30)
    err2 = "".join(said)
    no_crash(second.returncode, err2)
    assert first.returncode == 0 and second.returncode == 0, (err1, err2)
    assert f"waiting for agent b, held by pid {first.pid} (hybridiso up)" in err2
    # b was made once, by the first; the second found it ready and made c
    assert " b " in err1 and "Created" in err1
    assert not any(" b " in line and "Created" in line for line in err2.splitlines())
    assert any(" c " in line and "Created" in line for line in err2.splitlines())
    agents = state(repo)["agents"]
    assert sorted(agents) == ["b", "c", "slow"] and {a["phase"] for a in agents.values()} == {"ready"}


def test_kill_9_during_an_unlocked_setup_leaves_a_creating_record_the_next_up_rolls_back(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r")
    started, release = tmp_path / "started", tmp_path / "release"
    write_manifest(repo, f"agents:\n  - name: slow\n    setup: ['{_blocking_setup(started, release)}']\n")
    slow = _start(repo, "up")
    try:
        _wait_for(started.exists)
        os.kill(slow.pid, signal.SIGKILL)  # kill -9 while it holds no repository lock
        slow.communicate(timeout=60)
        # a lock file that names a live process, but nobody holds it: it proves nothing
        lock = repo / ".git" / "hybridiso" / "agents" / "slow.lock"
        assert lock.is_file()
        lock.write_text(f"pid {os.getpid()} (hybridiso up)\n")
        row = status_json(repo)["slow"]
        assert row["state"] == "creating (interrupted or failed; `up` redoes it)", row
        r = hybridiso(repo, "gc", timeout=60)
        assert "working on it now" not in r.stdout + r.stderr
    finally:
        release.touch()  # the killed run's setup ends too (the next up stops it first anyway)
    r = hybridiso(repo, "up", timeout=120)
    assert "rolled back" in r.stderr or "Created" in r.stderr, r.stderr
    assert state(repo)["agents"]["slow"]["phase"] == "ready"
    assert status_json(repo)["slow"]["state"] == "ready"


def test_a_planted_symlink_for_an_agent_lock_is_refused_not_followed(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r")
    write_manifest(repo, "agents:\n  - name: a\n")
    locks = repo / ".git" / "hybridiso" / "agents"
    locks.mkdir(parents=True)
    target = tmp_path / "elsewhere"
    target.write_text("keep\n")
    (locks / "a.lock").symlink_to(target)
    r = hybridiso(repo, "up", ok=False)
    assert "symlink" in r.stderr and r.returncode == 1
    assert target.read_text() == "keep\n"
    assert not (repo.parent / "r.agents" / "a").exists()
