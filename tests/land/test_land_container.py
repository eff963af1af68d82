"""A container agent's land check runs where the agent runs (issue 14 item 2):
in a one-off container of its image, with its uid, limits and network
boundary, the candidate's scratch worktree mounted where its worktree is,
and a fresh database of its own (real Docker engine, real PostgreSQL).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.land.test_land_faults import _alive
from tests.land.trains import agent_commit, by_agent, land_json, scratch_entries
from tests.support import images, needs
from tests.support.cli import hybridiso, state, write_manifest
from tests.support.docker_fixtures import TEST_LABEL, TEST_RUN, _built
from tests.support.gitrepo import git, git_ok, make_repo
from tests.support.netlab import host_addresses, host_listener
from tests.support.postgres import PostgresServer, free_port


@pytest.fixture
def _root() -> None:
    needs.root("network isolation is enforced with iptables")


pytestmark = [pytest.mark.docker]

ISOLATED = "    workload: {needs: [network-isolation]}\n"


@pytest.fixture(scope="session")
def marker_image(docker_engine: str) -> str:
    return _built(images.ensure_marker_image, "marker")


def docker(*args: str, check: bool = True) -> str:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check).stdout.strip()


def check_containers(agent: str = "") -> list[str]:
    selector = ["--filter", "label=dev.hybridiso.role=land-check", "--filter", f"label={TEST_LABEL}={TEST_RUN}"]
    if agent:
        selector += ["--filter", f"label=dev.hybridiso.agent={agent}"]
    return docker("ps", "-aq", *selector).split()


def box(name: str, image: str, extra: str = "") -> str:
    return f"""\
  - name: {name}
    isolation: container
    image: {image}
    command: ["sleep", "3600"]
{extra}"""


def repo_with(tmp_path: Path, land: str, agents: str, services: str = "") -> Path:
    repo = make_repo(tmp_path / "repo", {"README.md": "hello\n"})
    lo = free_port()
    write_manifest(
        repo,
        f'version: 1\nlabels: {{{TEST_LABEL}: "{TEST_RUN}"}}\nports: {{range: "{lo}-{lo + 50}"}}\n{services}land:\n{land}agents:\n{agents}',
    )
    git(repo, "add", "hybridiso.yaml")
    git(repo, "commit", "-q", "-m", "manifest")
    return repo


def env_commit(env: Path, name: str, text: str) -> None:
    (env / name).write_text(text)
    git(env, "add", name)
    git(env, "commit", "-q", "-m", f"add {name}")


def log_of(candidate: dict[str, object]) -> str:
    return Path(str(candidate["log"])).read_text()


def down(repo: Path) -> None:
    hybridiso(repo, "down", "--force", ok=None)


# what the check prints about where it runs, each on a line "key=value"
WHERE = (
    'echo "marker=$(cat /etc/hybridiso-marker)"; echo "hostname=$(cat /etc/hostname)"; echo "uid=$(id -u)"; echo "pwd=$(pwd)"; '
    'echo "memory=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max)"; '
    'echo "quota=$(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us 2>/dev/null || cut -d" " -f1 /sys/fs/cgroup/cpu.max)"; '
    'echo "main=$(cat main.txt)"; echo "mine=$(cat mine.txt)"; echo "db=${DATABASE_URL:-none}"; '
    'echo "git=$(ls -la .git | cut -c1)"; touch written-by-the-check && echo wrote=yes; '
    '{ echo "gitdir: /tmp/evil" > .git || rm -f .git; } 2>/dev/null; echo "dotgit=$(cat .git)"'
)


def lines(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith(("$", "#", "=")))


def test_a_container_agents_check_runs_in_its_image_with_its_limits_on_the_candidate(tmp_path: Path, marker_image: str) -> None:
    limits = "    resources: {cpus: 0.5, memory: 96m}\n"
    repo = repo_with(tmp_path, f"  check: [{json.dumps(WHERE)}]\n  timeout: 60s\n", box("box", marker_image, limits))
    env = tmp_path / "repo.agents" / "box"
    try:
        hybridiso(repo, "up", "box")
        env_commit(env, "mine.txt", "the agent's work\n")
        # main moved since the agent branched: the check sees both, which only the candidate has
        (repo / "main.txt").write_text("on main\n")
        git(repo, "add", "main.txt")
        git(repo, "commit", "-q", "-m", "main moves")
        agent = docker("ps", "-q", "--filter", "label=dev.hybridiso.agent=box", "--filter", "label=dev.hybridiso.role=agent")
        data, proc = land_json(repo, ok=True)
        got = by_agent(data)["box"]
        assert got["result"] == "landed", proc.stderr
        seen = lines(log_of(got))
        # in the image: a file only the image has, a hostname that is not the host's
        assert seen["marker"] == images.MARKER_TEXT and not Path("/etc/hybridiso-marker").exists()
        assert seen["hostname"] and seen["hostname"] != socket.gethostname() and seen["hostname"] != Path("/etc/hostname").read_text().strip()
        # as the agent's uid, at the agent's path, on the candidate's files (not the agent's worktree)
        assert int(seen["uid"]) == int(state(repo)["agents"]["box"]["container_user"].split(":")[0]) and seen["uid"] != "0"
        assert seen["pwd"] == str(env) and seen["main"] == "on main" and seen["mine"] == "the agent's work"
        assert not (env / "main.txt").exists() or git(env, "status", "--porcelain") == ""
        assert seen["wrote"] == "yes" and not (env / "written-by-the-check").exists()
        # its limits
        assert int(seen["memory"]) == 96 * 1024 * 1024
        assert int(seen["quota"]) == 50000  # 0.5 of a 100000 us period
        assert seen["db"] == "none" and seen["git"] == "-"  # a file, mounted read-only over the scratch's .git
        assert seen["dotgit"].startswith("gitdir: ") and "evil" not in seen["dotgit"]  # the check cannot point it elsewhere
        assert "(in a container of hybridiso-test/busybox-marker:1)" in log_of(got)
        # the agent's own container ran on, untouched; the check's is gone
        assert docker("ps", "-q", "--filter", "label=dev.hybridiso.agent=box", "--filter", "label=dev.hybridiso.role=agent") == agent != ""
        assert check_containers() == [] and scratch_entries(repo) == []
        assert git(repo, "show", "main:mine.txt") == "the agent's work"
    finally:
        down(repo)


@pytest.mark.usefixtures("_root")
def test_an_isolated_agents_check_reaches_no_host_address_and_an_open_one_does(tmp_path: Path, marker_image: str) -> None:
    with host_listener() as listener:
        probe = (
            'gw=$(ip route | awk \'/^default/ {print $3}\'); echo "gateway=$gw"; '
            f'for h in $gw {" ".join(host_addresses())}; do echo "try $h: $(nc -w 3 $h {listener.port} </dev/null 2>&1; echo rc=$?)"; done'
        )
        repo = repo_with(
            tmp_path,
            f"  check: [{json.dumps(probe)}]\n  timeout: 60s\n",
            box("iso", marker_image, ISOLATED) + box("open", marker_image),
        )
        try:
            hybridiso(repo, "up")
            for agent in ("iso", "open"):
                env_commit(tmp_path / "repo.agents" / agent, f"{agent}.txt", f"{agent}\n")
            data, proc = land_json(repo, ok=True)
            got = by_agent(data)
            tries = {a: [line for line in log_of(got[a]).splitlines() if line.startswith("try ")] for a in ("iso", "open")}
            assert len(tries["iso"]) >= 2 and tries["open"], proc.stderr
            # the control: the open agent's check reaches the host through its gateway
            assert "host-secret" in tries["open"][0]
            # the isolated agent's check is refused by its firewall rules at every host address
            for line in tries["iso"]:
                assert "No route to host" in line and "host-secret" not in line, line
            assert check_containers() == []
        finally:
            down(repo)


def test_a_failing_check_in_the_image_is_failed_with_its_last_lines_and_a_hanging_one_times_out(tmp_path: Path, marker_image: str) -> None:
    started = "started-in-the-image"
    agents = (
        box("red", marker_image, '    land: {check: ["echo last words of $(cat /etc/hybridiso-marker); exit 3"]}\n')
        + box("hang", marker_image, f'    land: {{check: ["touch {started}; sleep 300"], timeout: 4s}}\n')
    )
    repo = repo_with(tmp_path, '  check: ["true"]\n  timeout: 60s\n', agents)
    try:
        agent_commit(repo, "red", {"red.txt": "red\n"})
        agent_commit(repo, "hang", {"hang.txt": "hang\n"})
        before = git(repo, "rev-parse", "main")
        seen: set[str] = set()
        proc = subprocess.Popen([sys.executable, "-m", "hybridiso", "land", "--json"], cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            seen.update(check_containers("hang"))
            time.sleep(0.1)
        out, err = proc.communicate(timeout=60)
        got = by_agent(json.loads(out))
        assert proc.returncode == 1, err
        assert got["red"]["result"] == "failed" and got["red"]["why"].startswith("check exit 3"), got["red"]
        assert f"last words of {images.MARKER_TEXT}" in got["red"]["tail"]
        assert got["hang"]["result"] == "failed" and got["hang"]["why"].startswith("check timed out after 4s"), got["hang"]
        assert seen, "the hanging check ran in a container"
        assert check_containers() == [] and scratch_entries(repo) == []
        for c in seen:
            assert docker("inspect", c, check=False) in ("", "[]")
        assert git(repo, "rev-parse", "main") == before
    finally:
        down(repo)


def _wait_for_container(agent: str, seconds: float = 60) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = [c for c in check_containers(agent) if docker("inspect", "-f", "{{.State.Running}}", c, check=False) == "true"]
        if found:
            return found[0]
        time.sleep(0.1)
    raise AssertionError("the check's container never ran")


def _supervisor(repo: Path) -> int:
    journal = json.loads((repo / ".git" / "hybridiso" / "land" / "journal.json").read_text())
    return int(journal["groups"][0]["pgid"])


def test_kill_9_of_land_during_a_container_check_leaves_it_to_gc(tmp_path: Path, marker_image: str) -> None:
    repo = repo_with(tmp_path, '  check: ["sleep 300"]\n  timeout: 10m\n', box("a", marker_image) + box("b", marker_image))
    try:
        for agent in ("a", "b"):
            agent_commit(repo, agent, {f"{agent}.txt": f"{agent}\n"})
        before = git(repo, "rev-parse", "main")
        for agent, also_the_supervisor in (("a", False), ("b", True)):
            proc = subprocess.Popen([sys.executable, "-m", "hybridiso", "land", agent], cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                cid = _wait_for_container(agent)
                supervisor = _supervisor(repo)
                # the check's argv names no variable of it (docs/faults.md row 34): they are in its environment
                cmdline = Path(f"/proc/{supervisor}/cmdline").read_bytes().split(b"\0")
                assert cmdline[1:3] == [b"-m", b"hybridiso.land.container_check"] and b"HYBRIDISO_LAND_COMMIT" not in b" ".join(cmdline)
                # while land runs, gc leaves its check container alone (the agent has no environment)
                name = docker("inspect", "-f", "{{.Name}}", cid).lstrip("/")
                running = json.loads(hybridiso(repo, "gc", "--json").stdout)["findings"]
                assert not [f for f in running if f["action"] == "remove" and f"container {name}" in json.dumps(f)], running
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
                if also_the_supervisor:
                    os.killpg(supervisor, signal.SIGKILL)
                    time.sleep(0.5)
            finally:
                if proc.poll() is None:
                    proc.kill()
            assert check_containers(agent) == [cid] and git(repo, "rev-parse", "main") == before
            found = json.loads(hybridiso(repo, "gc", "--json").stdout)["findings"]
            kinds = {f["kind"] for f in found if f["action"] == "remove"}
            assert "land-container" in kinds, found
            assert ("land-check" in kinds) != also_the_supervisor, found
            assert check_containers(agent) == [cid]  # not without --yes
            hybridiso(repo, "gc", "--yes")
            assert check_containers(agent) == [] and not _alive(supervisor)
            assert scratch_entries(repo) == []
    finally:
        down(repo)


def test_a_container_agents_check_gets_a_fresh_database_and_its_own_stays_untouched(
    tmp_path: Path, postgres_server: PostgresServer, service_images: tuple[str, str]
) -> None:
    pg_image = service_images[0]
    tpl = postgres_server.make_template("land_tpl_box")
    migrate = (
        'echo "url=$DATABASE_URL"; env | sed "s/^/env: /"; psql -X -q -v ON_ERROR_STOP=1 -d "$DATABASE_URL" -f migrations/010.sql && '
        'test "$(psql -X -Atq -d "$DATABASE_URL" -c "SELECT count(*) FROM items")" = 1 && echo migrated=yes'
    )
    repo = repo_with(
        tmp_path,
        f"  check: [{json.dumps(migrate)}]\n  timeout: 60s\n",
        box("db1", pg_image, "    services: [db]\n    workload: {needs: [host-network]}\n"),
        services=f'services:\n  db: {{kind: postgres, url: "{postgres_server.url}", template: {tpl}}}\n',
    )
    env = tmp_path / "repo.agents" / "db1"
    try:
        hybridiso(repo, "up", "db1")
        own = postgres_server.psql("SELECT datname FROM pg_database WHERE datname LIKE 'hi\\_%\\_db1\\_db'").strip()
        assert own
        (env / "migrations").mkdir()
        env_commit(env, "migrations/010.sql", "CREATE TABLE orders (id int);\n")
        data, proc = land_json(repo, ok=True)
        got = by_agent(data)["db1"]
        assert got["result"] == "landed", proc.stderr + log_of(got)
        seen = lines(log_of(got))
        assert seen["migrated"] == "yes" and "(in a container of hybridiso-test/postgres:1)" in log_of(got)
        assert own not in log_of(got)  # no variable of the check names the agent's own branch
        name = seen["url"].rsplit("/", 1)[1]
        assert "_land_" in name and name not in (own, tpl)
        # the migration ran only there: the agent's own branch and the template never saw it
        for db in (own, tpl):
            assert postgres_server.psql("SELECT count(*) FROM pg_tables WHERE tablename = 'orders'", db=db) == "0", db
        assert postgres_server.psql("SELECT count(*) FROM pg_database WHERE datname LIKE 'hi\\_%\\_land\\_%'") == "0"
        assert check_containers() == []
    finally:
        down(repo)


def _rules(bridge: str) -> list[str]:
    out = subprocess.run(["iptables-save", "-t", "filter"], capture_output=True, text=True, check=False).stdout
    return [line for line in out.splitlines() if "HYBRIDISO" in line and bridge in line]


def _bridge(repo: Path, agent: str) -> str:
    from hybridiso.containers.netguard import bridge_name
    from hybridiso.project import load_project

    return bridge_name(load_project(repo).id, agent)


@pytest.mark.usefixtures("_root")
def test_an_agent_with_no_environment_is_checked_in_its_image_and_leaves_no_network(tmp_path: Path, marker_image: str) -> None:
    """Its branch exists, its environment does not: still the image, never
    the host; the network (and firewall rules) made for the check go with it."""
    agents = box("iso", marker_image, ISOLATED) + f"  - name: auto\n    image: {marker_image}\n    resources: {{memory: 64m}}\n"
    repo = repo_with(tmp_path, '  check: ["cat /etc/hybridiso-marker; cat /sys/fs/cgroup/memory/memory.limit_in_bytes"]\n  timeout: 60s\n', agents)
    for agent in ("iso", "auto"):
        agent_commit(repo, agent, {f"{agent}.txt": f"{agent}\n"})
    data, proc = land_json(repo, ok=True)
    got = by_agent(data)
    for agent in ("iso", "auto"):
        assert got[agent]["result"] == "landed" and images.MARKER_TEXT in log_of(got[agent]), proc.stderr
    assert str(64 * 1024 * 1024) in log_of(got["auto"])  # isolation: auto, resources: -> a container, as up plans it
    for agent in ("iso", "auto"):
        assert docker("network", "ls", "-q", "--filter", f"label=dev.hybridiso.agent={agent}", "--filter", f"label={TEST_LABEL}={TEST_RUN}") == ""
    assert _rules(_bridge(repo, "iso")) == [] and check_containers() == []


def test_without_iptables_an_isolated_agents_check_is_refused_never_run_unisolated(tmp_path: Path, marker_image: str, monkeypatch: pytest.MonkeyPatch) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for d in os.environ["PATH"].split(":"):
        if os.path.isdir(d):
            for name in os.listdir(d):
                if not name.startswith(("iptables", "ip6tables")) and not (bindir / name).exists():
                    (bindir / name).symlink_to(Path(d) / name)
    monkeypatch.setenv("PATH", str(bindir))
    ran = "ran-on-the-host-or-anywhere"
    repo = repo_with(tmp_path, f'  check: ["touch {tmp_path}/{ran}"]\n  timeout: 60s\n', box("iso", marker_image, ISOLATED))
    agent_commit(repo, "iso", {"iso.txt": "iso\n"})
    data, proc = land_json(repo, ok=False)
    got = by_agent(data)["iso"]
    assert got["result"] == "failed", proc.stderr
    assert got["why"].startswith(f"check could not start in its image {marker_image}: agent iso needs network isolation"), got["why"]
    assert "iptables-save is not installed" in got["why"]
    assert not (tmp_path / ran).exists() and check_containers() == []
    assert not git_ok(repo, "cat-file", "-e", "main:iso.txt")


def test_gc_finds_check_containers_by_the_role_land_gives_them() -> None:
    from hybridiso.gc.land_leftovers import CHECK_ROLE
    from hybridiso.land.container_check import ROLE

    assert CHECK_ROLE == ROLE == "land-check"  # gc may not import land: the label is pinned here


def test_parallel_stops_a_container_check_whose_base_fell_and_checks_it_again(tmp_path: Path, marker_image: str) -> None:
    """--parallel: b is checked on top of a while a is; a goes red, so b's
    check (which would hang on top of a) is stopped, its container with it,
    and b is checked again without a."""
    agents = box("a", marker_image, '    land: {check: ["sleep 1; exit 1"]}\n') + box("b", marker_image)
    repo = repo_with(tmp_path, '  check: ["if [ -e a.txt ]; then sleep 300; fi; cat /etc/hybridiso-marker"]\n  timeout: 10m\n', agents)
    agent_commit(repo, "a", {"a.txt": "a\n"})
    agent_commit(repo, "b", {"b.txt": "b\n"})
    started = time.monotonic()
    data, proc = land_json(repo, "--parallel", "2", ok=False)
    assert time.monotonic() - started < 120, "b's first check was not stopped"
    got = by_agent(data)
    assert got["a"]["result"] == "failed" and got["b"]["result"] == "landed", proc.stderr
    assert got["b"]["checks"] == 2 and "rebuild" in proc.stderr
    assert images.MARKER_TEXT in log_of(got["b"])
    assert check_containers() == [] and scratch_entries(repo) == []


@pytest.mark.usefixtures("_root")
def test_gc_during_a_check_of_an_agent_with_no_environment_keeps_its_isolation(tmp_path: Path, marker_image: str) -> None:
    """The agent has no record, so its network and rules look like an
    agent's leftovers: while land runs, gc leaves them (a check behind them
    would run unisolated); once land was killed, gc removes all of it."""
    repo = repo_with(tmp_path, '  check: ["sleep 300"]\n  timeout: 10m\n', box("iso", marker_image, ISOLATED))
    agent_commit(repo, "iso", {"iso.txt": "iso\n"})
    bridge = _bridge(repo, "iso")
    proc = subprocess.Popen([sys.executable, "-m", "hybridiso", "land"], cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        cid = _wait_for_container("iso")
        assert _rules(bridge)
        found = json.loads(hybridiso(repo, "gc", "--json").stdout)["findings"]
        assert not [f for f in found if f["action"] == "remove" and f["kind"] in ("firewall", "docker", "land-container")], found
        hybridiso(repo, "gc", "--yes")
        assert _rules(bridge) and docker("inspect", "-f", "{{.State.Running}}", cid) == "true"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    found = json.loads(hybridiso(repo, "gc", "--json").stdout)["findings"]
    assert {"firewall", "docker", "land-check"} <= {f["kind"] for f in found if f["action"] == "remove"}, found
    hybridiso(repo, "gc", "--yes")
    assert _rules(bridge) == [] and check_containers() == []
    assert docker("network", "ls", "-q", "--filter", "label=dev.hybridiso.agent=iso", "--filter", f"label={TEST_LABEL}={TEST_RUN}") == ""


@pytest.mark.usefixtures("_root")
def test_a_check_never_remakes_the_agents_network_under_its_running_container(tmp_path: Path, marker_image: str) -> None:
    """The manifest isolated the agent after `up`: its network has the old
    shape.  `up` would make it anew (removing its container); land refuses
    the check instead, and the agent's container runs on."""
    repo = repo_with(tmp_path, '  check: ["true"]\n  timeout: 60s\n', box("box", marker_image))
    try:
        hybridiso(repo, "up", "box")
        agent = docker("ps", "-q", "--filter", "label=dev.hybridiso.agent=box", "--filter", "label=dev.hybridiso.role=agent")
        manifest = (repo / "hybridiso.yaml").read_text().replace('command: ["sleep", "3600"]\n', 'command: ["sleep", "3600"]\n' + ISOLATED)
        write_manifest(repo, manifest)
        git(repo, "commit", "-qam", "isolate box")
        env_commit(tmp_path / "repo.agents" / "box", "box.txt", "box\n")
        data, proc = land_json(repo, ok=False)
        got = by_agent(data)["box"]
        assert got["result"] == "failed" and "network was made for another isolation" in got["why"], got
        assert "hybridiso up box" in got["tail"] or "hybridiso up box" in log_of(got)
        assert docker("ps", "-q", "--filter", "label=dev.hybridiso.agent=box", "--filter", "label=dev.hybridiso.role=agent") == agent != ""
        assert check_containers() == []
    finally:
        down(repo)
