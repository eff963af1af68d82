from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from hybridiso.state import STATE_VERSION, DatabaseBranch, AgentRecord, State, StateStore


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


# --- docs/faults.md row 18: whatever is in the file, load returns; never a crash -------------

GOOD = {"name": "a", "strategy": "worktree", "branch": "hybridiso/a", "path": "/ws/a", "base": "main", "ports": {"web": 20000}}


def _record(**change: object) -> dict[str, object]:
    data = dict(GOOD)
    for k, v in change.items():
        if v is _GONE:
            del data[k]
        else:
            data[k] = v
    return data


_GONE = object()
V = STATE_VERSION

DAMAGE = {
    "not UTF-8": b'{"version": 2, "agents": {"a": {"name": "a\xff\xfe"}}}',
    "not JSON": b'{"version": 2, "agents": [',
    "a list": b"[1, 2]",
    "another version": json.dumps({"version": 3, "agents": {}}).encode(),
    "version a bool": json.dumps({"version": True, "agents": {}}).encode(),
    "agents a list": json.dumps({"version": V, "agents": ["a"]}).encode(),
    "record a string": json.dumps({"version": V, "agents": {"a": "worktree"}}).encode(),
    "path a number": json.dumps({"version": V, "agents": {"a": _record(path=123)}}).encode(),
    "ports a string": json.dumps({"version": V, "agents": {"a": _record(ports="web")}}).encode(),
    "port not a number": json.dumps({"version": V, "agents": {"a": _record(ports={"web": "x"})}}).encode(),
    "port out of range": json.dumps({"version": V, "agents": {"a": _record(ports={"web": 70000})}}).encode(),
    "port a bool": json.dumps({"version": V, "agents": {"a": _record(ports={"web": True})}}).encode(),
    "missing path": json.dumps({"version": V, "agents": {"a": _record(path=_GONE)}}).encode(),
    "missing strategy": json.dumps({"version": V, "agents": {"a": _record(strategy=_GONE)}}).encode(),
    "name differs from key": json.dumps({"version": V, "agents": {"a": _record(name="b")}}).encode(),
    "unknown phase": json.dumps({"version": V, "agents": {"a": _record(phase="half")}}).encode(),
    "relative path": json.dumps({"version": V, "agents": {"a": _record(path="ws/a")}}).encode(),
    "created_at NaN": b'{"version": 2, "agents": {"a": {"name": "a", "strategy": "worktree", "branch": "b", "path": "/p", "base": "m", "created_at": NaN}}}',
    "extra a list in version 1": json.dumps({"version": 1, "agents": {"a": _record(extra=[])}}).encode(),
    # version 2 has a field for everything: a key it does not know is
    # tampering or a typo (`owns_pth` would turn rollback off), never ignored
    "extra in version 2": json.dumps({"version": V, "agents": {"a": _record(extra={"owns_path": True})}}).encode(),
    "a field misspelt": json.dumps({"version": V, "agents": {"a": _record(owns_pth=True)}}).encode(),
    "a key beside agents": json.dumps({"version": V, "agents": {}, "agentz": {}}).encode(),
    "a key in a database branch": json.dumps(
        {"version": V, "agents": {"a": _record(databases={"db": {"name": "x", "server": "s", "owner": "me"}})}}
    ).encode(),
    "owns_path a string": json.dumps({"version": V, "agents": {"a": _record(owns_path="yes")}}).encode(),
    "git_in_container another word": json.dumps({"version": V, "agents": {"a": _record(git_in_container="maybe")}}).encode(),
    "timings of strings": json.dumps({"version": V, "agents": {"a": _record(timings={"setup": "fast"})}}).encode(),
    "strategy a number": json.dumps({"version": V, "agents": {"a": _record(strategy=7)}}).encode(),
    # what reaches paths and git's argv follows the manifest's rules
    "name with a path": json.dumps({"version": V, "agents": {"../x": _record(name="../x")}}).encode(),
    "branch an option": json.dumps({"version": V, "agents": {"a": _record(branch="--force")}}).encode(),
    "base_commit not a commit": json.dumps({"version": V, "agents": {"a": _record(base_commit="HEAD~1; rm")}}).encode(),
    # a float field given an integer no float holds (OverflowError: was an exit 3 on every command)
    "created_at a huge integer": json.dumps({"version": V, "agents": {"a": _record(created_at=10**4000)}}).encode(),
    "a timing a huge integer": json.dumps({"version": V, "agents": {"a": _record(timings={"x": 10**400})}}).encode(),
    "a pid a huge integer": json.dumps(
        {"version": V, "agents": {"a": _record(setup_processes=[{"pgid": 10**30, "start": 1, "boot_id": "b", "token": "t", "command": "c", "started_at": 1.0}])}}
    ).encode(),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_malformed_state_is_moved_aside_and_rebuilt(tmp_path: Path, case: str) -> None:
    store = StateStore(tmp_path)
    store.dir.mkdir(parents=True)
    store.path.write_bytes(DAMAGE[case])
    state = store.load()
    assert state.agents == {} and state.rebuilt_from and "moved to state.json.corrupt-" in state.rebuilt_from
    assert f"state file {store.path} was unreadable" in state.rebuilt_from  # the one message names the file
    aside = list(store.dir.glob("state.json.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == DAMAGE[case]  # kept as it was, for the user
    assert not store.path.exists()
    assert state.warnings == [state.rebuilt_from]


def test_two_corrupt_files_in_one_second_are_both_kept(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.dir.mkdir(parents=True)
    for text in ("{broken one", "{broken two"):
        store.path.write_text(text)
        store.load()
    assert sorted(p.read_text() for p in store.dir.glob("state.json.corrupt-*")) == ["{broken one", "{broken two"]


def test_an_unknown_strategy_sets_that_record_aside_and_keeps_it(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.dir.mkdir(parents=True)
    future = {"name": "vm1", "strategy": "microvm", "path": "/ws/vm1", "snapshot": {"id": 7}}
    store.path.write_text(json.dumps({"version": V, "agents": {"a": GOOD, "vm1": future}}))
    state = store.load()
    assert set(state.agents) == {"a"} and state.rebuilt_from is None
    assert set(state.set_aside) == {"vm1"} and state.set_aside["vm1"].path == "/ws/vm1"
    assert "names strategy 'microvm', which this hybridiso does not know" in state.warnings[0]
    store.save(state)  # a save keeps the record as it was, for the version that made it
    assert json.loads(store.path.read_text())["agents"]["vm1"] == future
    assert store.load().agents["a"].ports == {"web": 20000}


def test_every_record_field_round_trips_through_the_typed_reader(tmp_path: Path) -> None:
    # the reader follows AgentRecord's annotations: a field added later is
    # read (or refused) by type without touching the reader
    from dataclasses import fields

    store = StateStore(tmp_path)
    record = AgentRecord(name="a", strategy="clone", branch="b", path="/p", base="main", base_commit="0123abcd" * 5, created_branch=True)
    record.timings = {"total": 1.5}
    record.owns_path = record.removing = record.adopted = record.rolled_back = True
    record.service_env = {"DATABASE_URL": "postgresql://h/x"}
    record.included = [".env.local"]
    record.image = "busybox"
    record.git_identity = {"GIT_AUTHOR_NAME": "A"}
    record.git_in_container = "image has no git"
    record.databases = {"db": DatabaseBranch("x", "s", {"xid": 5})}
    store.save(State({"a": record}))
    loaded = store.load().agents["a"]
    assert loaded == record
    assert [f.name for f in fields(AgentRecord)]  # and every field has a type the reader knows:
    saved = json.loads(store.path.read_text())["agents"]["a"]
    for f in fields(AgentRecord):
        AgentRecord.from_json("a", {**GOOD, f.name: saved[f.name]})


def test_a_state_file_that_is_a_symlink_is_not_read(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.dir.mkdir(parents=True)
    secret = tmp_path / "elsewhere.json"
    secret.write_text(json.dumps({"version": V, "agents": {"a": GOOD}}))
    store.path.symlink_to(secret)
    state = store.load()
    assert state.agents == {} and state.rebuilt_from and "symlink" in state.rebuilt_from
    assert secret.exists() and json.loads(secret.read_text())["agents"]["a"] == GOOD


# --- the same through every command, after a real `up` ---------------------------

def _damage(path: Path, case: str) -> None:
    data = json.loads(path.read_text())
    a = data["agents"]["a"]
    if case == "non-UTF-8 bytes":
        path.write_bytes(path.read_bytes().replace(b'"hybridiso/a"', b'"hybridiso/\xff"'))
        return
    if case == "path 123":
        a["path"] = 123
    elif case == "ports 'web'":
        a["ports"] = "web"
    path.write_text(json.dumps(data))


COMMANDS = [("status",), ("plan",), ("doctor",), ("exec", "a", "--", "true"), ("down", "--dry-run", "a"), ("gc",), ("sync",), ("render",), ("report",)]


# (every other kind of damage is covered by test_malformed_state_is_moved_aside_and_rebuilt)
@pytest.mark.parametrize("case", ["non-UTF-8 bytes", "path 123", "ports 'web'"])
def test_every_command_survives_a_malformed_state_file(tmp_path: Path, case: str) -> None:
    from tests.support.cli import hybridiso, status_json, write_manifest
    from tests.support.gitrepo import make_repo

    repo = make_repo(tmp_path / "r")
    write_manifest(repo, "agents:\n  - {name: a, ports: [web]}\n  - {name: b, isolation: clone, ports: [web]}\n")
    hybridiso(repo, "up")
    before = status_json(repo)
    path = repo / ".git" / "hybridiso" / "state.json"
    _damage(path, case)
    damaged = path.read_bytes()
    first = hybridiso(repo, "status", "--json")  # moves it aside, rebuilds from git: once
    assert first.stderr.count("moved to state.json.corrupt-") == 1, first.stderr
    rows = {r["agent"]: r for r in json.loads(first.stdout)}
    assert {n: (r["strategy"], r["ports"], r["path"]) for n, r in rows.items()} == {
        n: (r["strategy"], r["ports"], r["path"]) for n, r in before.items()
    }
    for args in COMMANDS:
        path.write_bytes(damaged)  # every command meets the damaged file
        r = hybridiso(repo, *args, ok=None)  # exit 3 fails the test with its traceback
    path.write_bytes(damaged)
    r = hybridiso(repo, "up")
    assert "Created" not in r.stderr  # the environments were found again, not made anew
    assert {n: r["ports"] for n, r in status_json(repo).items()} == {n: r["ports"] for n, r in before.items()}


def test_an_unknown_strategy_does_not_block_status_or_the_other_agents(tmp_path: Path) -> None:
    from tests.support.cli import hybridiso, write_manifest
    from tests.support.gitrepo import make_repo

    repo = make_repo(tmp_path / "r")
    write_manifest(repo, "agents:\n  - {name: a}\n  - {name: b}\n  - {name: c}\n")
    hybridiso(repo, "up", "a", "b")
    path = repo / ".git" / "hybridiso" / "state.json"
    data = json.loads(path.read_text())
    data["agents"]["b"]["strategy"] = "microvm"  # as a newer hybridiso might write
    path.write_text(json.dumps(data))
    b_env = tmp_path / "r.agents" / "b"
    (b_env / "work.txt").write_text("mine\n")
    st = hybridiso(repo, "status", "--json")
    rows = {r["agent"]: r for r in json.loads(st.stdout)}
    assert rows["a"]["state"] == "ready" and rows["c"]["state"] == "not created"
    assert rows["b"]["state"] == "unknown strategy" and "its record names strategy 'microvm'" in rows["b"]["problems"][0]
    assert "b: its record names strategy 'microvm'" in hybridiso(repo, "status").stderr
    # up makes c, leaves b alone (fails for it: exit 1), and keeps its record
    up = hybridiso(repo, "up", ok=False)
    assert up.returncode == 1 and "b: the state file's record of agent 'b' names strategy 'microvm'" in up.stderr
    assert json.loads(path.read_text())["agents"]["b"]["strategy"] == "microvm"
    assert (b_env / "work.txt").read_text() == "mine\n"
    assert json.loads(path.read_text())["agents"]["c"]["phase"] == "ready"
    plan = {r["agent"]: r for r in json.loads(hybridiso(repo, "plan", "--json").stdout)["agents"]}
    assert plan["b"]["strategy"] == "microvm" and plan["b"]["reason"].startswith("left alone")
    doctor = {c["name"]: c for c in json.loads(hybridiso(repo, "doctor", "--json").stdout)}
    assert doctor["state file"]["status"] == "warn" and "microvm" in doctor["state file"]["detail"]
    # down of it is refused, not "no environment" with exit 0 (found in a hostile pass)
    down = hybridiso(repo, "down", "b", ok=False)
    assert down.returncode == 1 and "agent b: its record is left alone" in down.stderr, down.stderr
    assert (b_env / "work.txt").read_text() == "mine\n"


def test_gc_never_takes_a_set_aside_environment_for_an_orphan(tmp_path: Path) -> None:
    from tests.support.cli import hybridiso, write_manifest
    from tests.support.gitrepo import make_repo

    repo = make_repo(tmp_path / "r")
    write_manifest(repo, "agents:\n  - {name: a, isolation: clone}\n")
    hybridiso(repo, "up")
    path = repo / ".git" / "hybridiso" / "state.json"
    data = json.loads(path.read_text())
    data["agents"]["a"]["strategy"] = "microvm"
    path.write_text(json.dumps(data))
    write_manifest(repo, "agents: []\n")  # and it left the manifest: only its record says it is ours
    hybridiso(repo, "gc", "--yes")
    assert (tmp_path / "r.agents" / "a" / ".git").is_dir()
    assert json.loads(path.read_text())["agents"]["a"]["strategy"] == "microvm"


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        ({"databases": "db"}, "extra.databases"),
        ({"databases": {"db": {"name": "x"}}}, "has no name or server"),
        ({"env": {"A": 1}}, "extra.env"),
        ({"owns_path": "yes"}, "extra.owns_path"),
        ({"git_in_container": "maybe"}, "extra.git_in_container"),
        ({"owns_pth": True}, "extra.owns_pth is not a key hybridiso wrote"),
    ],
)
def test_known_extra_keys_are_typed_too(tmp_path: Path, extra: dict[str, object], says: str) -> None:
    # version 1 kept these in `extra`: its reader checks them as their fields'
    # types (gc reads every record's database branches: a tampered one was an exit 3)
    store = StateStore(tmp_path)
    store.dir.mkdir(parents=True)
    store.path.write_text(json.dumps({"version": 1, "agents": {"a": {**GOOD, "extra": extra}}}))
    state = store.load()
    assert state.agents == {} and state.rebuilt_from and says in state.rebuilt_from


def test_database_branches_of_old_state_files_move_to_their_field(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.dir.mkdir(parents=True)
    old = {**GOOD, "extra": {"databases": {"db": {"name": "hi_x_a_db", "server": "postgresql://h/p"}}, "owns_path": True}}
    store.path.write_text(json.dumps({"version": 1, "agents": {"a": old}}))
    record = store.load().agents["a"]
    assert record.databases == {"db": DatabaseBranch("hi_x_a_db", "postgresql://h/p")}
    assert record.owns_path is True


def test_a_process_group_that_would_signal_too_much_is_not_trusted(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.dir.mkdir(parents=True)
    for pgid, token in ((1, "t"), (-5, "t"), (4242, "")):
        group = {"pgid": pgid, "start": 1, "boot_id": "b", "token": token, "command": "sleep 9"}
        store.path.write_text(json.dumps({"version": V, "agents": {"a": {**GOOD, "setup_processes": [group]}}}))
        state = store.load()
        assert "a" not in state.agents and state.rebuilt_from, (pgid, token)


def test_the_lock_file_names_its_holder_in_words_and_is_read_back_as_a_record(tmp_path: Path) -> None:
    # status tells an `up` in progress from a creation an earlier run left
    # by the holder's command, read as a LockHolder, not by a regex over the words
    from hybridiso.state import LockHolder, holder_of, lock_holder

    store = StateStore(tmp_path)
    store.dir.mkdir(parents=True)
    assert holder_of(store.lock_path) is None
    with store.locked("up", wait_message=False):
        import os

        assert lock_holder(store.lock_path) == f"pid {os.getpid()} (hybridiso up)"
        assert holder_of(store.lock_path) == LockHolder(os.getpid(), "up")
    assert holder_of(store.lock_path) is None
    assert LockHolder.read("pid 12 (hybridiso land)") == LockHolder(12, "land")
    assert LockHolder.read("pid 12 (somebody else)") is None


# --- issue 15: the lock let go during up's long steps; claims ----------------------


def _rec(name: str, **kw: object) -> AgentRecord:
    return AgentRecord(name=name, strategy="worktree", branch=f"hybridiso/{name}", path=f"/ws/{name}", base="main", **kw)  # type: ignore[arg-type]


def test_a_save_while_unlocked_merges_only_the_claimed_agents_into_the_file(tmp_path: Path) -> None:
    """Two stores are two runs (two open lock files): what the second saved
    while the first had let the lock go stays, and the first writes only
    the records of the agents it claimed."""
    first, second = StateStore(tmp_path), StateStore(tmp_path)
    seed = State(agents={"x": _rec("x", phase="ready")})
    first.save(seed)
    with first.locked("up", wait_message=False):
        first.claim(["a"], wait_message=False)
        mine = first.load()
        mine.agents["a"] = _rec("a")
        first.save(mine)  # the journal, under the lock: the whole file
        with first.unlocked():
            with second.locked("down", wait_message=False):
                theirs = second.load()
                assert theirs.agents["a"].phase == "creating"
                del theirs.agents["x"]
                theirs.agents["b"] = _rec("b", phase="ready")
                second.save(theirs)
            mine.agents["a"].phase = "ready"
            mine.agents["x"].ports = {"web": 1}  # not claimed: never written by this run
            first.save(mine)
    on_disk = StateStore(tmp_path).load().agents
    assert sorted(on_disk) == ["a", "b"] and on_disk["a"].phase == "ready"


def test_a_file_made_unreadable_while_unlocked_is_moved_aside_and_said(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Another shell breaks state.json while `up` has let the lock go: the
    merged save sets it aside, writes this run's records and warns, as a
    load at a command's start does (docs/faults.md row 18)."""
    store = StateStore(tmp_path)
    with store.locked("up", wait_message=False):
        store.claim(["a"], wait_message=False)
        mine = store.load()
        mine.agents["a"] = _rec("a")
        store.save(mine)
        with store.unlocked():
            store.path.write_text("{garbage")
            store.save(mine)
    err = capsys.readouterr().err
    assert "was unreadable" in err and "moved to state.json.corrupt-" in err
    assert sorted(StateStore(tmp_path).load().agents) == ["a"]
    assert any(p.name.startswith("state.json.corrupt-") for p in store.dir.iterdir())


def test_a_claimed_agent_is_held_until_the_run_ends_and_a_dead_claim_is_free(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    probe = StateStore(tmp_path)
    with store.locked("up", wait_message=False):
        store.claim(["a"], wait_message=False)
        with store.unlocked():
            holder = probe.agent_holder("a")
            assert holder is not None and holder.command == "up"
            assert probe.agent_busy("a") == f"pid {holder.pid} (hybridiso up)"
            assert probe.agent_holder("b") is None
    assert probe.agent_holder("a") is None
    # what the lock file says is no claim: only the kernel's lock is
    probe.agent_lock_path("a").write_text("pid 1 (hybridiso up)\n")
    assert probe.agent_holder("a") is None and probe.agent_busy("a") is None


def test_a_second_claim_of_an_agent_waits_with_the_repository_lock_let_go(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    said = io.StringIO()
    monkeypatch.setattr("sys.stderr", said)
    first, second = StateStore(tmp_path), StateStore(tmp_path)
    order: list[str] = []

    def other() -> None:
        with second.locked("up"):
            second.claim(["b", "a"])
            order.append("second claimed")

    def gc() -> None:
        with StateStore(tmp_path).locked("gc", wait_message=False):
            order.append("lock free while it waits")

    with first.locked("up", wait_message=False):
        first.claim(["a"], wait_message=False)
        with first.unlocked():
            t = threading.Thread(target=other)
            t.start()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and "waiting for agent a" not in said.getvalue():
                time.sleep(0.02)
            assert f"waiting for agent a, held by pid {os.getpid()} (hybridiso up)" in said.getvalue()
            assert second.agent_holder("b") is None  # all or none: b is not held while it waits for a
            g = threading.Thread(target=gc)
            g.start()
            g.join(10)  # it would wait for ever if the waiting run held the lock
            assert order == ["lock free while it waits"]
            order.append("first done")
    t.join(10)
    assert order == ["lock free while it waits", "first done", "second claimed"]
