"""Container agents on the real Docker engine (mandatory in CI)."""
from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.support.cli import hybridiso, hybridiso_as_plain_user, state, status_json, write_manifest
from tests.support.docker_fixtures import TEST_LABEL, TEST_RUN, agents_repo
from tests.support.gitrepo import git, make_repo
from tests.support.postgres import free_port
from tests.support import needs

pytestmark = pytest.mark.docker


def docker(*args: str) -> str:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=True).stdout.strip()


def labelled(kind: str, agent: str) -> list[str]:
    ls = {"container": ["ps", "-aq"], "network": ["network", "ls", "-q"], "volume": ["volume", "ls", "-q"]}[kind]
    return docker(*ls, "--filter", f"label=dev.hybridiso.agent={agent}", "--filter", f"label={TEST_LABEL}={TEST_RUN}").split()


def get(url: str, timeout: float = 20) -> str:
    end = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return r.read().decode()
        except OSError:
            if time.time() > end:
                raise
            time.sleep(0.2)


def manifest(lo: int, image: str, extra: str = "") -> str:
    return f"""\
version: 1
labels: {{{TEST_LABEL}: "{TEST_RUN}"}}
ports: {{range: "{lo}-{lo + 50}"}}
agents:
  - name: web
    isolation: container
    image: {image}
    command: ["httpd", "-f", "-p", "${{PORT_WEB}}", "-h", "."]
    ports: [web]
    resources: {{cpus: 0.5, memory: 128m, pids: 64}}
    env: {{TOKEN: "${{NOPE:?boom}} $HOME $$"}}
{extra}"""


@pytest.fixture
def web_repo(tmp_path: Path, busybox_image: str, compose_v2: str):  # type: ignore[no-untyped-def]
    repo = make_repo(tmp_path / "site", {"index.html": "hello from the agent\n"})
    write_manifest(repo, manifest(free_port(), busybox_image))
    yield repo
    hybridiso(repo, "down", "--force", ok=None)


def test_user_story_http_exec_down(web_repo: Path) -> None:
    repo = web_repo
    r = hybridiso(repo, "up")
    assert "web" in r.stderr and "Created" in r.stderr
    assert "has no git" in r.stderr  # docs/faults.md row 21: busybox has no git, and up says so
    # ... and remembers it by image id, so the next start skips the probe's exec
    image_id = docker("image", "inspect", "--format", "{{.Id}}", json.loads(docker("inspect", labelled("container", "web")[0]))[0]["Config"]["Image"])
    assert (repo / ".git" / "hybridiso" / "images-without-git").read_text().split() == [image_id]
    st = status_json(repo)["web"]
    assert st["strategy"] == "container" and st["process"].startswith("running")
    port = st["ports"]["web"]
    assert get(f"http://127.0.0.1:{port}/index.html") == "hello from the agent\n"
    # exec runs inside the container, in the worktree, as the agent's uid:
    # the host user's, or one of its own when the host user is root (issue 12)
    out = hybridiso(repo, "exec", "web", "--", "sh", "-c", "id -u; pwd; echo $PORT_WEB; cat /proc/1/cgroup >/dev/null && echo in").stdout.split()
    user = agent_user(repo, "web")
    assert out[:3] == [user.split(":")[0], str(tmp_path_of(repo) / "site.agents" / "web"), str(port)]
    # a shell's exit codes, whatever the engine's version says
    assert hybridiso(repo, "exec", "web", "--", "no-such-program", ok=False).returncode == 127
    assert hybridiso(repo, "exec", "web", "--", "sh", "-c", "exit 126", ok=False).returncode == 126
    # what the design promises about the container, read back from Docker
    cid = labelled("container", "web")[0]
    info = json.loads(docker("inspect", cid))[0]
    host = info["HostConfig"]
    assert "no-new-privileges:true" in host["SecurityOpt"]
    assert host["NanoCpus"] == 500_000_000 and host["Memory"] == 128 << 20 and host["PidsLimit"] == 64
    assert info["Config"]["User"] == user
    assert all(b["HostIp"] == "127.0.0.1" for b in host["PortBindings"][f"{port}/tcp"])
    assert info["Config"]["Labels"]["dev.hybridiso.role"] == "agent"
    # a value with compose's own syntax in it arrives literally, never interpolated
    assert "TOKEN=${NOPE:?boom} $HOME $$" in info["Config"]["Env"]
    assert host["NetworkMode"] not in ("host", "default", "bridge")  # its own network
    assert labelled("network", "web")
    # idempotent
    again = hybridiso(repo, "up")
    assert "Created" not in again.stderr
    assert "has no git" not in again.stderr  # said once per image id (issue 16), not on every up
    assert labelled("container", "web") == [cid]
    hybridiso(repo, "down")
    assert labelled("container", "web") == labelled("network", "web") == labelled("volume", "web") == []
    # made again: what was remembered skips the probe, and is not said again
    remade = hybridiso(repo, "up")
    assert "Created" in remade.stderr and "has no git" not in remade.stderr
    assert state(repo)["agents"]["web"]["git_in_container"] == "image has no git"
    hybridiso(repo, "down")


def tmp_path_of(repo: Path) -> Path:
    return repo.parent


def agent_user(repo: Path, agent: str) -> str:
    """The uid:gid the agent's container runs as: the host user's, or, when
    that is root, an unprivileged one of the agent's own -- never root."""
    user = state(repo)["agents"][agent]["container_user"]
    if os.geteuid() == 0:
        assert user.split(":")[0] != "0" and int(user.split(":")[0]) >= 1_600_000_000
    else:
        assert user == f"{os.getuid()}:{os.getgid()}"
    return str(user)


def test_crashed_container_is_shown_and_restarted(web_repo: Path) -> None:
    repo = web_repo
    hybridiso(repo, "up")
    cid = labelled("container", "web")[0]
    docker("kill", "--signal", "KILL", cid)
    end = time.time() + 20
    while "exited" not in status_json(repo)["web"]["process"] and time.time() < end:
        time.sleep(0.2)
    st = status_json(repo)["web"]
    assert st["process"] == "exited (137)"
    # said, and not "all is well" (issue 16): --check exits 1 naming it
    said = "its container exited with code 137: it was killed (SIGKILL: out of memory, `docker kill`, or a `docker stop` that timed out)"
    assert st["ok"] is False and st["problems"][0].startswith(said) and st["off"] == st["problems"][0]
    r = hybridiso(repo, "status", "--check", ok=False)
    assert r.returncode == 1 and f"1 of 1 agent is not in the state the manifest asks for:\n  web: {said}" in r.stderr
    assert "`hybridiso up web` starts it again" in r.stderr
    r = hybridiso(repo, "up")
    assert "Restarted" in r.stderr
    st = status_json(repo)["web"]
    assert st["process"].startswith("running") and st["ok"] is True and st["problems"] == []
    hybridiso(repo, "status", "--check")
    assert get(f"http://127.0.0.1:{status_json(repo)['web']['ports']['web']}/index.html")


def test_render_writes_a_file_a_user_can_run(web_repo: Path) -> None:
    out = json.loads(hybridiso(web_repo, "render", "--json").stdout)
    assert len(out) == 1 and Path(out[0]["file"]).exists()
    # not up yet: the file still names the port `up` would lease, never a
    # variable compose cannot fill
    assert out[0]["up"] is False and set(out[0]["ports"]) == {"web"}
    text = Path(out[0]["file"]).read_text()
    assert "PORT_WEB" in text and "${PORT" not in text and f'"{out[0]["ports"]["web"]}"' in text
    r = subprocess.run(["docker", "compose", "-f", out[0]["file"], "config", "-q"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert labelled("container", "web") == []  # render starts nothing
    assert not (tmp_path_of(web_repo) / "site.agents" / "web").exists()
    # once up, the user can stop it and run the very file by hand
    hybridiso(web_repo, "up")
    port = status_json(web_repo)["web"]["ports"]["web"]
    assert port == out[0]["ports"]["web"]  # the provisional port was the one up leased
    compose = ["docker", "compose", "-f", out[0]["file"]]
    subprocess.run([*compose, "down"], check=True, capture_output=True)
    assert "web: its container is gone: `hybridiso up` starts it again" in hybridiso(web_repo, "status").stderr
    again = json.loads(hybridiso(web_repo, "render", "web", "--json").stdout)
    assert again[0]["up"] is True and again[0]["file"] == out[0]["file"]
    r = subprocess.run([*compose, "up", "-d"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert get(f"http://127.0.0.1:{port}/index.html") == "hello from the agent\n"


def test_ready_means_healthy(tmp_path: Path, busybox_image: str, healthcheck_image: str, compose_v2: str) -> None:
    repo = agents_repo(
        tmp_path / "site",
        f"""\
  # the manifest's healthcheck, with the agent's port filled in; isolation
  # auto: a healthcheck is what makes it a container
  - name: web
    image: {busybox_image}
    ports: [web]
    command: ["sh", "-c", "sleep 1; exec httpd -f -p ${{PORT_WEB}} -h ."]
    healthcheck: {{test: ["wget", "-q", "-O", "/dev/null", "http://127.0.0.1:${{PORT_WEB}}/index.html"], interval: 500ms}}
  # no healthcheck in the manifest, but the image has one of its own
  - name: slow
    isolation: container
    image: {healthcheck_image}
    command: ["sh", "-c", "sleep 6; touch /tmp/ready; exec sleep 3600"]
  - name: sick
    image: {busybox_image}
    command: ["sleep", "3600"]
    healthcheck: {{test: "echo the database is not there; exit 1", interval: 500ms, retries: 2, start_period: 0s}}
""",
        {"index.html": "hello\n"},
    )
    try:
        r = hybridiso(repo, "up", ok=False)
        assert r.returncode == 1
        # the one that never gets healthy is named, with its check's last words
        assert "sick" in r.stderr and "is unhealthy" in r.stderr and "the database is not there" in r.stderr
        st = status_json(repo)
        # the others were reported ready only once healthy: right after `up`
        # returns, Docker already says so (not "starting")
        assert st["web"]["process"] == "running (healthy)" and st["slow"]["process"] == "running (healthy)"
        assert st["web"]["strategy"] == "container"
        assert get(f"http://127.0.0.1:{st['web']['ports']['web']}/index.html") == "hello\n"
        # issue 16: not left running unhealthy beside a record still
        # 'creating': stopped (kept, with its logs), and said so
        assert "hybridiso stopped it (kept, with its logs)" in r.stderr and "`hybridiso up sick` tries again" in r.stderr
        assert st["sick"]["process"].startswith("exited (") and st["sick"]["state"].startswith("creating")
        assert st["sick"]["ok"] is False and any("its container exited with code" in p for p in st["sick"]["problems"])
        assert docker("ps", "-aq", "--filter", "status=running", "--filter", "label=dev.hybridiso.agent=sick", "--filter", f"label={TEST_LABEL}={TEST_RUN}") == ""
        assert len(labelled("container", "sick")) == 1  # kept, for `docker logs` and `docker inspect`
        info = json.loads(docker("inspect", labelled("container", "web")[0]))[0]
        assert info["Config"]["Healthcheck"]["Test"] == ["CMD", "wget", "-q", "-O", "/dev/null", f"http://127.0.0.1:{st['web']['ports']['web']}/index.html"]
    finally:
        hybridiso(repo, "down", "--force", ok=None)
    assert labelled("container", "web") == labelled("container", "slow") == labelled("container", "sick") == []


def test_each_agent_gets_its_own_postgres_and_redis(tmp_path: Path, service_images: tuple[str, str], compose_v2: str) -> None:
    """The compose/ fragments for real: each agent's own database and cache,
    on its own network, reachable by name, gone with `down`."""
    pg, redis = service_images
    repo = make_repo(tmp_path / "shop", {"a.txt": "a\n"})
    write_manifest(
        repo,
        f"""labels: {{{TEST_LABEL}: "{TEST_RUN}"}}
services:
  db: {{kind: postgres, image: {pg}}}
  cache: {{kind: redis, image: {redis}}}
agents:
  - {{name: a, image: {pg}, services: [db, cache], command: ["sleep", "infinity"]}}
  - {{name: b, image: {pg}, services: [db, cache], command: ["sleep", "infinity"]}}
""",
    )

    def sh(agent: str, script: str) -> str:
        return hybridiso(repo, "exec", agent, "--", "sh", "-c", script).stdout.strip()

    try:
        plan = {p["agent"]: p for p in json.loads(hybridiso(repo, "plan", "--json").stdout)["agents"]}
        assert plan["a"]["strategy"] == "container" and "service 'db'" in plan["a"]["reason"]
        hybridiso(repo, "up", timeout=300)
        assert sh("a", "echo $DATABASE_URL $REDIS_URL") == "postgresql://hybridiso:hybridiso@db:5432/app redis://cache:6379/0"
        sh("a", 'psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -qc "CREATE TABLE t (x int); INSERT INTO t VALUES (42)"')
        sh("a", 'redis-cli -u "$REDIS_URL" SET k from-a')
        assert sh("a", 'psql "$DATABASE_URL" -tAc "SELECT x FROM t"') == "42"
        assert sh("a", 'redis-cli -u "$REDIS_URL" GET k') == "from-a"
        # b has a database and a cache of its own: none of a's data
        assert sh("b", "psql \"$DATABASE_URL\" -tAc \"SELECT count(*) FROM pg_tables WHERE tablename = 't'\"") == "0"
        assert sh("b", 'redis-cli -u "$REDIS_URL" EXISTS k') == "0"
        for agent in ("a", "b"):
            services = docker("ps", "--filter", f"label=dev.hybridiso.agent={agent}", "--filter", "label=dev.hybridiso.role=service", "--format", "{{.Names}} {{.Status}}").splitlines()
            assert len(services) == 2 and all("(healthy)" in line for line in services), services
            assert len(labelled("volume", agent)) == 2 and len(labelled("network", agent)) == 1
        assert set(labelled("network", "a")).isdisjoint(labelled("network", "b"))
        assert set(labelled("volume", "a")).isdisjoint(labelled("volume", "b"))
        # Compose converges it again on the next up, and nothing changed
        again = hybridiso(repo, "up", timeout=300).stderr
        assert again.count("Up to date") == 2 and "Recreated" not in again, again
        assert sh("a", 'psql "$DATABASE_URL" -tAc "SELECT x FROM t"') == "42"
    finally:
        hybridiso(repo, "down", "--force", ok=None)
    for agent in ("a", "b"):
        assert labelled("container", agent) == labelled("network", agent) == labelled("volume", agent) == []


def test_missing_image_fails_before_anything_starts(tmp_path: Path, compose_v2: str) -> None:
    repo = make_repo(tmp_path / "r")
    write_manifest(repo, manifest(free_port(), "hybridiso-test/no-such-image:404") + "  - name: plain\n")
    r = hybridiso(repo, "up", ok=False)
    assert r.returncode == 1 and "hybridiso-test/no-such-image:404" in r.stderr and "cannot be pulled" in r.stderr
    assert not (tmp_path / "r.agents").exists()


def test_docker_unreachable_only_fails_container_agents(tmp_path: Path, busybox_image: str, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = make_repo(tmp_path / "r")
    write_manifest(repo, manifest(free_port(), busybox_image) + "  - name: plain\n")
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-docker.sock")
    r = hybridiso(repo, "up", ok=False)
    assert "Docker is not reachable at unix://" in r.stderr
    st = status_json(repo)
    assert st["plain"]["state"] == "ready"
    assert st["web"]["state"] == "not created"


def dev_agent(image: str) -> str:
    return f"""labels: {{{TEST_LABEL}: "{TEST_RUN}"}}
agents:
  - name: dev
    isolation: container
    image: {image}
    command: ["sleep", "infinity"]
"""


def test_git_inside_the_container(tmp_path: Path, git_image: str, compose_v2: str) -> None:
    repo = make_repo(tmp_path / "r", {"a.txt": "a\n"})
    write_manifest(repo, dev_agent(git_image))
    try:
        hybridiso(repo, "up")
        out = hybridiso(repo, "exec", "dev", "--", "git", "status", "--porcelain", "--branch").stdout
        assert "## hybridiso/dev" in out
        hybridiso(repo, "exec", "dev", "--", "sh", "-c", "echo b > b.txt && git add b.txt && git commit -qm 'from the container'")
        # the commit landed in the shared repository; the file is the agent's
        # uid's (the host user's, or its own unprivileged one under root)
        assert git(repo, "log", "-1", "--format=%s", "hybridiso/dev") == "from the container"
        env = tmp_path / "r.agents" / "dev"
        assert (env / "b.txt").stat().st_uid == int(agent_user(repo, "dev").split(":")[0])
        assert state(repo)["agents"]["dev"]["git_in_container"] == "ok"  # up probed it
    finally:
        hybridiso(repo, "down", "--force", ok=None)


def test_git_inside_works_when_the_hosts_repository_is_one_it_could_not_read(tmp_path: Path, git_image: str, compose_v2: str) -> None:
    """docs/faults.md row 21, and why the agent's own git dir helps: the host's git
    keeps refs in reftable (git 2.45+), which the image's git 2.39 cannot
    read.  The container never reads the host's refs now: its own
    repository (files refs, made by the host) borrows only the objects, so
    git works inside and the commit lands on the agent branch."""
    host_git = tuple(int(x) for x in git(tmp_path, "--version").split()[2].split(".")[:2])
    if host_git < (2, 45):
        needs.cannot_run(f"the host's git {host_git} cannot make a reftable repository (needs 2.45)")
    repo = tmp_path / "r"
    subprocess.run(["git", "init", "-q", "--ref-format=reftable", "-b", "main", str(repo)], check=True)
    (repo / "a.txt").write_text("a\n")
    git(repo, "add", "a.txt")
    git(repo, "commit", "-qm", "first")
    write_manifest(repo, dev_agent(git_image))
    try:
        hybridiso(repo, "up")
        assert state(repo)["agents"]["dev"]["git_in_container"] == "ok"
        out = hybridiso(repo, "exec", "dev", "--", "sh", "-c", "git --version; echo b > b.txt && git add b.txt && git commit -qm inside && echo ok").stdout
        assert "git version 2.39" in out and "ok" in out
        assert git(repo, "log", "-1", "--format=%s", "hybridiso/dev") == "inside"
    finally:
        hybridiso(repo, "down", "--force", ok=None)
    assert labelled("container", "dev") == []


def test_fix_ownership_returns_foreign_files_to_the_user(tmp_path: Path) -> None:
    from hybridiso.strategies.container import fix_ownership

    needs.root("making files owned by another uid")
    d = tmp_path / "env" / "sub"
    d.mkdir(parents=True)
    (d / "f").write_text("x")
    os.chown(d / "f", 12345, 12345)
    os.chown(d, 12345, 12345)
    fixed = fix_ownership(tmp_path / "env")
    assert set(fixed) == {str(d), str(d / "f")}
    assert (d / "f").stat().st_uid == os.getuid()


def test_down_gives_back_files_a_container_left_to_another_uid(web_repo: Path) -> None:
    """docs/faults.md row 8 in a container, end to end: a process in the container (a
    database, a build as root) leaves files of another uid in the worktree;
    `down`, run by a user who cannot chown, still removes everything."""
    needs.root("the test drops root's powers to act as a plain user; it needs them to start with")
    repo = web_repo
    hybridiso(repo, "up")
    cid = labelled("container", "web")[0]
    env = tmp_path_of(repo) / "site.agents" / "web"
    # the agent itself can no longer do it (no capabilities, not root:
    # issue 12), so another container with the worktree mounted, as root
    # with Docker's default capabilities, stands in for whatever did
    image = json.loads(docker("inspect", cid))[0]["Config"]["Image"]
    docker(
        "run", "--rm", "--label", f"{TEST_LABEL}={TEST_RUN}", "-u", "0", "-v", f"{env}:{env}", image,
        "sh", "-c", f"cd {env} && mkdir -p out/deep && echo x > out/deep/f && chown -R 65534:65534 out && chmod -R 555 out",
    )
    assert (env / "out" / "deep" / "f").stat().st_uid == 65534
    r = hybridiso_as_plain_user(repo, "down", "--force")
    assert r.returncode == 0, r.stderr
    assert not env.exists() and "web" not in state(repo).get("agents", {})
    assert labelled("container", "web") == []
    helpers = docker("ps", "-aq", "--filter", "label=dev.hybridiso.role=helper", "--filter", f"label={TEST_LABEL}={TEST_RUN}")
    assert helpers == ""


def test_gc_removes_docker_resources_whose_agent_is_gone_and_only_those(tmp_path: Path, busybox_image: str, compose_v2: str) -> None:
    lo = free_port()
    repo = make_repo(tmp_path / "site", {"index.html": "one\n"})
    other = make_repo(tmp_path / "other", {"index.html": "two\n"})
    write_manifest(repo, manifest(lo, busybox_image))
    write_manifest(other, manifest(lo + 60, busybox_image))
    try:
        hybridiso(repo, "up")
        hybridiso(other, "up")
        ours = labelled("container", "web")
        assert len(ours) == 2  # one per repository, same agent name
        theirs = [c for c in ours if json.loads(docker("inspect", c))[0]["Config"]["WorkingDir"].startswith(str(other))]
        # the environment goes behind hybridiso's back: worktree, branch and state
        git(repo, "worktree", "remove", "--force", str(tmp_path / "site.agents" / "web"))
        git(repo, "branch", "-D", "hybridiso/web")
        (repo / ".git" / "hybridiso" / "state.json").unlink()
        dry = json.loads(hybridiso(repo, "gc", "--json").stdout)
        leftovers = [f for f in dry["findings"] if f["kind"] == "docker"]
        assert [f["target"] for f in leftovers] == ["Docker resources of agent web"]
        assert any(o.startswith("container ") for o in leftovers[0]["owns"]) and any(o.startswith("network ") for o in leftovers[0]["owns"])
        assert len(labelled("container", "web")) == 2  # a dry run changes nothing
        r = hybridiso(repo, "gc", "--yes")
        assert "removed 1" in r.stderr
        assert labelled("container", "web") == theirs  # the other repository's agent is untouched
        assert labelled("network", "web") and all(
            json.loads(docker("network", "inspect", n))[0]["Labels"]["dev.hybridiso.project"]
            == json.loads(docker("inspect", theirs[0]))[0]["Config"]["Labels"]["dev.hybridiso.project"]
            for n in labelled("network", "web")
        )
        assert status_json(other)["web"]["process"].startswith("running")
        assert "docker" not in {f["kind"] for f in json.loads(hybridiso(repo, "gc", "--json").stdout)["findings"]}
    finally:
        hybridiso(other, "down", "--force", ok=None)
        hybridiso(repo, "down", "--force", ok=None)


def test_an_image_without_git_is_said_once_for_all_its_agents(tmp_path: Path, busybox_image: str, compose_v2: str) -> None:
    repo = agents_repo(
        tmp_path / "site",
        "".join(f"  - {{name: {n}, isolation: container, image: {busybox_image}, command: [sleep, '3600']}}\n" for n in ("one", "two")),
    )
    try:
        first = hybridiso(repo, "up")
        assert first.stderr.count("has no git") == 1, first.stderr  # two agents, one image (issue 16)
        again = hybridiso(repo, "up")
        assert "has no git" not in again.stderr
        assert {a["git_in_container"] for a in state(repo)["agents"].values()} == {"image has no git"}
    finally:
        hybridiso(repo, "down", "--force", ok=None)
