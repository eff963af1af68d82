from __future__ import annotations

import socket

import pytest

from hybridiso import ports
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


# --- docs/faults.md row 37: two repositories on one machine -----------------------------------

import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from tests.support.cli import hybridiso, state, status_json, write_manifest  # noqa: E402
from tests.support.gitrepo import make_repo  # noqa: E402


def _registry() -> dict[int, dict[str, object]]:
    path = Path.home() / ".local" / "state" / "hybridiso" / "ports.json"
    return {e["port"]: e for e in json.loads(path.read_text())["leases"]}


def _two_repos(tmp_path: Path, lo: int, hi: int, agents: int = 2) -> tuple[Path, Path]:
    manifest = f'ports: {{range: "{lo}-{hi}"}}\nagents:\n' + "".join(f"  - {{name: a{i}, ports: [web, api]}}\n" for i in range(agents))
    repos = []
    for name in ("one", "two"):
        repo = make_repo(tmp_path / name / "repo")
        write_manifest(repo, manifest)
        repos.append(repo)
    return repos[0], repos[1]


def _ports_of(repo: Path) -> set[int]:
    return {p for row in status_json(repo).values() for p in row["ports"].values()}


def test_two_repositories_never_lease_the_same_port(tmp_path: Path) -> None:
    lo = free_port()
    one, two = _two_repos(tmp_path, lo, lo + 20)
    hybridiso(one, "up")
    hybridiso(two, "up")  # nothing listens on one's ports: only the registry can tell
    a, b = _ports_of(one), _ports_of(two)
    assert len(a) == len(b) == 4 and not a & b
    reg = _registry()
    assert set(reg) == a | b
    assert {reg[p]["repo"] for p in a} == {str((one / ".git").resolve())}
    assert {(reg[p]["agent"], reg[p]["name"]) for p in b} == {("a0", "web"), ("a0", "api"), ("a1", "web"), ("a1", "api")}
    assert os.stat(Path.home() / ".local" / "state" / "hybridiso").st_mode & 0o777 == 0o700
    assert os.stat(Path.home() / ".local" / "state" / "hybridiso" / "ports.json").st_mode & 0o777 == 0o600
    # stable: a second up of each changes nothing
    hybridiso(one, "up")
    hybridiso(two, "up")
    assert _ports_of(one) == a and _ports_of(two) == b
    # doctor counts the other repository's leases as taken
    doctor = {c["name"]: c for c in json.loads(hybridiso(one, "doctor", "--json").stdout)}
    assert "4 leased to other repositories on this machine" in doctor["ports"]["detail"], doctor["ports"]


def test_two_ups_at_once_in_two_repositories(tmp_path: Path) -> None:
    lo = free_port()
    one, two = _two_repos(tmp_path, lo, lo + 40, agents=6)
    procs = [subprocess.Popen([sys.executable, "-m", "hybridiso", "up"], cwd=r, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (one, two)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    a, b = _ports_of(one), _ports_of(two)
    assert len(a) == len(b) == 12 and not a & b


def test_exhausted_by_another_repository_names_it(tmp_path: Path) -> None:
    lo = free_port()
    one, two = _two_repos(tmp_path, lo, lo + 3)
    hybridiso(one, "up")
    r = hybridiso(two, "up", ok=False)
    assert "exhausted" in r.stderr and "4 leased to other repositories on this machine" in r.stderr
    assert not (tmp_path / "two" / "repo.agents").exists()


def test_leases_of_removed_agents_and_deleted_repositories_come_back(tmp_path: Path) -> None:
    lo = free_port()
    everything = {lo, lo + 1, lo + 2, lo + 3}
    one, two = _two_repos(tmp_path, lo, lo + 3)
    hybridiso(one, "up")
    assert _ports_of(one) == everything
    hybridiso(one, "down", "a1")
    assert {e["agent"] for e in _registry().values()} == {"a0"}  # down gave a1's back
    r = hybridiso(two, "up", ok=False)  # two needs all 4 ports: a0 still holds 2
    assert "exhausted" in r.stderr
    # a0's directory deleted by hand: gc --yes removes the zombie and its leases
    shutil.rmtree(tmp_path / "one" / "repo.agents" / "a0")
    hybridiso(one, "gc", "--yes")
    assert _registry() == {}
    hybridiso(two, "up")
    assert _ports_of(two) == everything
    hybridiso(two, "down")
    assert _registry() == {}
    # a repository deleted outright: its leases are stale and taken back
    hybridiso(one, "up")
    assert _ports_of(one) == everything
    shutil.rmtree(tmp_path / "one")
    hybridiso(two, "up")
    assert _ports_of(two) == everything
    assert {e["repo"] for e in _registry().values()} == {str((two / ".git").resolve())}


def test_a_lost_state_file_keeps_its_leases(tmp_path: Path) -> None:
    """Its records come back from the env files, ports included: another
    repository must not take them meanwhile."""
    lo = free_port()
    one, two = _two_repos(tmp_path, lo, lo + 7)
    hybridiso(one, "up")
    before = {n: r["ports"] for n, r in status_json(one).items()}
    (one / ".git" / "hybridiso" / "state.json").unlink()
    hybridiso(two, "up")
    assert not _ports_of(two) & {p for ports in before.values() for p in ports.values()}
    hybridiso(one, "up")
    assert {n: r["ports"] for n, r in status_json(one).items()} == before


def test_a_port_two_repositories_shared_before_goes_to_one(tmp_path: Path) -> None:
    """Leases made before the registry existed (or a record edited by hand):
    the registry's holder keeps the port, the other agent gets a new one."""
    lo = free_port()
    one, two = _two_repos(tmp_path, lo, lo + 20, agents=1)
    hybridiso(one, "up")
    hybridiso(two, "up")
    theirs = status_json(one)["a0"]["ports"]["web"]
    data = state(two)
    data["agents"]["a0"]["ports"]["web"] = theirs
    (two / ".git" / "hybridiso" / "state.json").write_text(json.dumps(data))
    r = hybridiso(two, "up")
    assert f"a0.web={theirs} is leased to agent a0 (web) of {(one / '.git').resolve()}: it gets another port" in r.stderr
    mine = status_json(two)["a0"]["ports"]["web"]
    assert mine != theirs and status_json(one)["a0"]["ports"]["web"] == theirs
    env_file = (tmp_path / "two" / "repo.agents" / "a0" / ".hybridiso.env").read_text()
    assert f"PORT_WEB={mine}\n" in env_file
    assert _registry()[theirs]["repo"] == str((one / ".git").resolve())


def test_registry_that_is_corrupt_or_a_symlink(tmp_path: Path) -> None:
    lo = free_port()
    one, _ = _two_repos(tmp_path, lo, lo + 20, agents=1)
    reg = Path.home() / ".local" / "state" / "hybridiso" / "ports.json"
    reg.parent.mkdir(parents=True)
    reg.write_text("{not json")
    r = hybridiso(one, "up")
    assert "port registry" in r.stderr and "was unreadable" in r.stderr and "moved to ports.json.corrupt-" in r.stderr
    assert len(_registry()) == 2
    victim = tmp_path / "victim.json"
    victim.write_text('{"version": 1, "leases": []}')
    reg.unlink()
    reg.symlink_to(victim)
    hybridiso(one, "down")
    r = hybridiso(one, "up", ok=False)
    assert r.returncode == 1 and "is a symlink; hybridiso never reads or writes through one" in r.stderr
    assert victim.read_text() == '{"version": 1, "leases": []}'


def test_xdg_state_home_is_where_the_registry_lives(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lo = free_port()
    one, _ = _two_repos(tmp_path, lo, lo + 20, agents=1)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))
    hybridiso(one, "up")
    assert (tmp_path / "xdg-state" / "hybridiso" / "ports.json").exists()
    assert not (Path.home() / ".local" / "state" / "hybridiso" / "ports.json").exists()


def test_stale_leases_are_taken_back_and_a_running_repository_keeps_its_own(tmp_path: Path) -> None:
    """A lease whose record is gone (a run killed before it saved) or whose
    repository is gone is stale; one of a repository where a hybridiso command
    holds the lock is kept whatever its state file says (it may be between
    leasing and saving)."""
    import fcntl
    import time

    lo = free_port()
    one, two = _two_repos(tmp_path, lo, lo + 1, agents=1)
    hybridiso(one, "up")
    hybridiso(one, "down")  # one's state file and lock exist, with no agent
    assert state(one)["agents"] == {}
    reg = Path.home() / ".local" / "state" / "hybridiso" / "ports.json"
    reg.parent.mkdir(parents=True, exist_ok=True)

    def plant(*entries: tuple[int, str, str]) -> None:
        leases = [{"port": p, "project": "x" * 12, "repo": repo, "agent": agent, "name": "web", "leased_at": time.time()} for p, repo, agent in entries]
        reg.write_text(json.dumps({"version": 1, "leases": leases}))

    one_git = str((one / ".git").resolve())
    plant((lo, one_git, "ghost"), (lo + 1, str(tmp_path / "gone" / ".git"), "a0"))
    lock = os.open(one / ".git" / "hybridiso" / "lock", os.O_RDWR)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)  # "a command is running in one"
        r = hybridiso(two, "up", ok=False)
        assert "exhausted" in r.stderr and "1 leased to other repositories" in r.stderr
    finally:
        os.close(lock)
    hybridiso(two, "up")  # the lock is free now: ghost's record does not exist, "gone" is gone
    assert _ports_of(two) == {lo, lo + 1}
    assert {e["repo"] for e in _registry().values()} == {str((two / ".git").resolve())}


def test_a_state_home_that_is_not_a_directory_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lo = free_port()
    one, _ = _two_repos(tmp_path, lo, lo + 20, agents=1)
    (tmp_path / "a-file").write_text("x\n")
    for where in (tmp_path / "a-file", tmp_path / "a-file" / "below"):
        monkeypatch.setenv("XDG_STATE_HOME", str(where))
        r = hybridiso(one, "up", ok=False)
        assert r.returncode == 1 and f"cannot use {where} for the machine's port registry" in r.stderr
        assert "next step:" in r.stderr
    assert not (tmp_path / "one" / "repo.agents").exists()


# --- the machine-wide registry, in-process (the CLI tests above drive it through `up`) ---


def _repo(path: Path) -> Path:
    """A common git dir, as the registry judges one: HEAD and objects/."""
    import subprocess

    subprocess.run(["git", "init", "-q", str(path)], check=True)
    return path / ".git"


def _state(common: Path, agents: dict[str, dict[str, int]]) -> None:
    d = common / "hybridiso"
    d.mkdir(exist_ok=True)
    (d / "state.json").write_text(json.dumps({"version": 1, "agents": {a: {"ports": p} for a, p in agents.items()}}))


def _registry() -> dict[int, dict[str, object]]:
    raw = json.loads((ports.state_home() / ports.REGISTRY_FILE).read_text())
    assert raw["version"] == ports.REGISTRY_VERSION
    return {e["port"]: e for e in raw["leases"]}


def test_the_registry_records_each_repositorys_leases_and_keeps_them_apart(tmp_path: Path) -> None:
    lo = free_port()
    one, two = _repo(tmp_path / "one"), _repo(tmp_path / "two")
    first = ports.lease_machine_wide(one, {"a": ["web", "api"]}, {}, (lo, lo + 30))
    assert first.moved == [] and first.note == "" and set(first.ports["a"]) == {"web", "api"}
    second = ports.lease_machine_wide(two, {"b": ["web"]}, {}, (lo, lo + 30))  # one has no state file: its leases hold
    assert second.ports["b"]["web"] not in first.ports["a"].values()
    reg = _registry()
    assert reg[first.ports["a"]["web"]]["agent"] == "a" and reg[first.ports["a"]["web"]]["name"] == "web"
    assert reg[first.ports["a"]["web"]]["repo"] == str(one.resolve()) and reg[first.ports["a"]["web"]]["project"] == ports.project_id(one)
    assert reg[second.ports["b"]["web"]]["project"] == ports.project_id(two) != ports.project_id(one)
    assert oct((ports.state_home() / ports.REGISTRY_FILE).stat().st_mode & 0o777) == "0o600"
    # one's leases, seen from two; none of two's own
    elsewhere = ports.leased_elsewhere(two)
    assert set(elsewhere) == set(first.ports["a"].values())
    assert elsewhere[first.ports["a"]["web"]].who() == f"agent a (web) of {one.resolve()}"
    # release gives back only the named agents of that repository
    ports.release(two, ["a"])  # two has no agent a: nothing of one's goes
    assert set(_registry()) == set(first.ports["a"].values()) | {second.ports["b"]["web"]}
    ports.release(one, ["a"])
    assert set(_registry()) == {second.ports["b"]["web"]}
    assert set(ports.leased_elsewhere(one)) == {second.ports["b"]["web"]}  # two has no state file: its lease holds


def test_leases_no_record_holds_any_more_are_taken_back(tmp_path: Path) -> None:
    lo = free_port()
    one, two, gone = _repo(tmp_path / "one"), _repo(tmp_path / "two"), _repo(tmp_path / "gone")
    a = ports.lease_machine_wide(one, {"a": ["web"]}, {}, (lo, lo + 30)).ports["a"]["web"]
    x = ports.lease_machine_wide(one, {"x": ["web"]}, {"a": {"web": a}}, (lo, lo + 30)).ports["x"]["web"]
    g = ports.lease_machine_wide(gone, {"g": ["web"]}, {}, (lo, lo + 30)).ports["g"]["web"]
    assert len({a, x, g}) == 3
    _state(one, {"a": {"web": a}})  # one's record holds a's port, no longer x's
    import shutil

    shutil.rmtree(gone.parent)  # that repository was deleted
    live, stale = ports.live_elsewhere(ports.Registry({p: ports.Entry(p, str(e["project"]), str(e["repo"]), str(e["agent"]), str(e["name"])) for p, e in _registry().items()}), ports.project_id(two))
    assert set(live) == {a} and sorted(stale) == sorted([x, g])
    got = ports.lease_machine_wide(two, {"b": ["web", "api"]}, {}, (lo, lo + 30))
    assert a not in got.ports["b"].values()
    assert set(_registry()) == {a, *got.ports["b"].values()}  # x and g were taken back


def test_a_port_another_repository_holds_is_leased_anew_and_said(tmp_path: Path) -> None:
    lo = free_port()
    one, two = _repo(tmp_path / "one"), _repo(tmp_path / "two")
    held = ports.lease_machine_wide(one, {"a": ["web"]}, {}, (lo, lo + 30)).ports["a"]["web"]
    # two's record claims the same port (edited, or leased before the registry existed)
    got = ports.lease_machine_wide(two, {"b": ["web"]}, {"b": {"web": held}}, (lo, lo + 30))
    assert got.moved == [f"b.web={held} is leased to agent a (web) of {one.resolve()}"]
    assert got.ports["b"]["web"] != held and _registry()[held]["agent"] == "a"


def test_a_corrupt_registry_is_moved_aside_and_rebuilt(tmp_path: Path) -> None:
    lo = free_port()
    one = _repo(tmp_path / "one")
    path = (ports.state_home() / ports.REGISTRY_FILE)
    path.parent.mkdir(parents=True, exist_ok=True)
    for bad in ("not json", '{"version": 99, "leases": []}', '{"version": 1, "leases": [1]}', '{"version": 1, "leases": [{"port": 1}]}'):
        path.write_text(bad)
        got = ports.lease_machine_wide(one, {"a": ["web"]}, {}, (lo, lo + 30))
        assert got.note.startswith(f"the port registry {path} was unreadable (") and "moved to ports.json.corrupt-" in got.note, bad
        assert set(_registry()) == {got.ports["a"]["web"]}
    assert any(p.name.startswith("ports.json.corrupt-") for p in path.parent.iterdir())


def test_release_without_a_registry_writes_none(tmp_path: Path) -> None:
    one = _repo(tmp_path / "one")
    ports.release(one, ["a"])
    ports.release(one, [])
    assert not (ports.state_home() / ports.REGISTRY_FILE).exists() and ports.leased_elsewhere(one) == {}


def test_the_state_home_follows_xdg_only_when_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", "relative/dir")
    assert ports.state_home() == Path.home() / ".local" / "state"
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert (ports.state_home() / ports.REGISTRY_FILE) == tmp_path / "xdg" / "hybridiso" / "ports.json"
