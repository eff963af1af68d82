"""One-container projects start through the Engine API (engine_apply.py):
the container must be the one `docker compose up` makes from the same file,
and Compose must treat it as its own."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from hybridiso.containers import engine_apply
from hybridiso.manifest import read_yaml
from tests.support.cli import hybridiso, status_json, write_manifest
from tests.support.docker_fixtures import TEST_LABEL, TEST_RUN, agents_repo

# --- pure translation ----------------------------------------------------------


def test_durations_in_nanoseconds() -> None:
    assert engine_apply.duration_ns("2s") == 2 * 10**9
    assert engine_apply.duration_ns("500ms") == 5 * 10**8
    assert engine_apply.duration_ns("1m30s") == 90 * 10**9
    assert engine_apply.duration_ns("1.5h") == 5400 * 10**9
    for bad in ("", "2", "s", "2s junk", "-1s"):
        with pytest.raises(ValueError):
            engine_apply.duration_ns(bad)


def test_unescape_undoes_the_renderers_dollar_doubling_only() -> None:
    assert engine_apply.unescape({"A": ["$$HOME", "$$$$", "x$$y"]}) == {"A": ["$HOME", "$$", "x$y"]}
    assert engine_apply.unescape({"K$$": "v"}) == {"K$$": "v"}  # keys are never interpolated


def _doc(**agent: Any) -> dict[str, Any]:
    return {
        "name": "p",
        "services": {"agent": {"image": "img", **agent}},
        "networks": {"agent-net": {"labels": {"k": "v"}}},
    }


def test_translate_builds_the_api_body() -> None:
    plan = engine_apply.translate(
        _doc(
            command=["echo", "$$X"],
            networks=["agent-net"],
            mem_limit="128m",
            cpus=0.5,
            pids_limit=64,
            init=True,
            ports=[{"target": 8080, "published": "8080", "host_ip": "127.0.0.1", "protocol": "tcp"}],
            volumes=[{"type": "bind", "source": "/a b", "target": "/a b", "read_only": False}],
            environment={"T": "$${NOPE}"},
            healthcheck={"test": ["CMD", "true"], "interval": "500ms", "timeout": "5s", "retries": 3, "start_period": "1s"},
        ),
        Path("/x/compose.yaml"),
    )
    assert plan is not None
    c, h = plan.config, plan.config["HostConfig"]
    assert c["Cmd"] == ["echo", "$X"] and c["Env"] == ["T=${NOPE}"]
    assert h["Memory"] == 128 << 20 and h["NanoCpus"] == 500_000_000 and h["PidsLimit"] == 64 and h["Init"] is True
    assert h["PortBindings"] == {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8080"}]}
    assert h["Mounts"] == [{"Type": "bind", "Source": "/a b", "Target": "/a b", "ReadOnly": False}]
    assert h["NetworkMode"] == plan.network == "p_agent-net" and plan.container_name == "p-agent-1"
    assert c["Healthcheck"]["Interval"] == 5 * 10**8 and plan.has_healthcheck
    assert c["Labels"]["com.docker.compose.project"] == "p" and c["Labels"]["com.docker.compose.config-hash"] == plan.config_hash
    assert plan.network_labels == {"k": "v", "com.docker.compose.project": "p", "com.docker.compose.network": "agent-net"}
    # the hash follows the config: any change recreates the container
    other = engine_apply.translate(_doc(command=["echo", "$$Y"], networks=["agent-net"]), Path("/x/compose.yaml"))
    assert other is not None and other.config_hash != plan.config_hash
    # ... and so does a rebuilt image behind the same name
    same = _doc(networks=["agent-net"])
    before, after = (engine_apply.translate(same, Path("/x/compose.yaml"), image_id=i) for i in ("sha256:1", "sha256:2"))
    assert before is not None and after is not None and before.config_hash != after.config_hash


def test_translate_carries_the_boundary() -> None:
    doc = _doc(networks=["agent-net"], cap_drop=["ALL"], cap_add=["NET_RAW"], read_only=True, tmpfs=["/tmp:rw,exec,mode=1777"])
    doc["networks"]["agent-net"].update(driver_opts={"com.docker.network.bridge.name": "hyb0123456789ab"}, internal=True)
    plan = engine_apply.translate(doc, Path("/x/compose.yaml"))
    assert plan is not None
    h = plan.config["HostConfig"]
    assert h["CapDrop"] == ["ALL"] and h["CapAdd"] == ["CAP_NET_RAW"] and h["ReadonlyRootfs"] is True
    assert h["Tmpfs"] == {"/tmp": "rw,exec,mode=1777"}
    assert plan.network_options == {"com.docker.network.bridge.name": "hyb0123456789ab"} and plan.network_internal
    # another bridge is another network: the hash says so
    other = _doc(networks=["agent-net"], cap_drop=["ALL"], cap_add=["NET_RAW"], read_only=True, tmpfs=["/tmp:rw,exec,mode=1777"])
    other["networks"]["agent-net"].update(driver_opts={"com.docker.network.bridge.name": "hyb0000000000ab"}, internal=True)
    again = engine_apply.translate(other, Path("/x/compose.yaml"))
    assert again is not None and again.config_hash != plan.config_hash
    # a network setting it does not know is never dropped silently: Compose applies it
    unknown = _doc(networks=["agent-net"])
    unknown["networks"]["agent-net"]["enable_ipv6"] = True
    assert engine_apply.translate(unknown, Path("/x/compose.yaml")) is None
    # the agent alone, for its setup container, even beside services
    with_db = _doc(networks=["agent-net"])
    with_db["services"]["db"] = {"image": "postgres"}
    assert engine_apply.translate(with_db, Path("/x/compose.yaml")) is None
    alone = engine_apply.translate_agent(with_db, Path("/x/compose.yaml"))
    assert alone is not None and alone.network == "p_agent-net"


def test_translate_leaves_what_it_does_not_know_to_compose() -> None:
    f = Path("/x/compose.yaml")
    with_db = _doc()
    with_db["services"]["db"] = {"image": "postgres"}
    assert engine_apply.translate(with_db, f) is None
    assert engine_apply.translate(_doc(depends_on={"db": {"condition": "service_healthy"}}), f) is None
    assert engine_apply.translate(_doc(volumes=[{"type": "volume", "source": "data", "target": "/d"}]), f) is None
    assert engine_apply.translate({**_doc(), "volumes": {"data": {}}}, f) is None
    host = engine_apply.translate(_doc(network_mode="host"), f)
    assert host is not None and host.network is None and host.config["HostConfig"]["NetworkMode"] == "host"


# --- for real: the same file through the engine and through Compose -------------

def docker(*args: str) -> str:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=True).stdout.strip()


def _inspect(name: str) -> dict[str, Any]:
    return json.loads(docker("inspect", name))[0]


def _essentials(info: dict[str, Any]) -> dict[str, Any]:
    """What makes the container the agent's: everything the compose file says."""
    config, host = info["Config"], info["HostConfig"]
    # Compose's own bookkeeping: its hash and version, the image id, and on a
    # recreated container the one it replaced
    own = ("com.docker.compose.config-hash", "com.docker.compose.version", "com.docker.compose.image", "com.docker.compose.replace")
    labels = {k: v for k, v in config["Labels"].items() if k not in own}
    return {
        "name": info["Name"],
        "image": config["Image"],
        "cmd": config["Cmd"],
        "entrypoint": config["Entrypoint"],
        "workdir": config["WorkingDir"],
        "user": config["User"],
        "env": sorted(config["Env"]),
        "labels": labels,
        "exposed": config.get("ExposedPorts"),
        "healthcheck": config.get("Healthcheck"),
        "init": host["Init"],
        "security": host["SecurityOpt"],
        "capabilities": (host["CapDrop"], host["CapAdd"]),
        "read_only": (host["ReadonlyRootfs"], host.get("Tmpfs")),
        "limits": (host["NanoCpus"], host["Memory"], host["PidsLimit"]),
        "network_mode": host["NetworkMode"],
        "ports": host["PortBindings"],
        "mounts": sorted((m["Type"], m["Source"], m["Target"], m.get("ReadOnly", False)) for m in host.get("Mounts") or []),
        "extra_hosts": host.get("ExtraHosts") or [],
        "privileged": host["Privileged"],
        "restart": host["RestartPolicy"]["Name"] or "no",
        "networks": {n: sorted(set(e.get("Aliases") or []) - {info["Id"][:12]}) for n, e in info["NetworkSettings"]["Networks"].items()},
    }


@pytest.mark.docker
def test_engine_and_compose_make_the_same_container(tmp_path: Path, busybox_image: str, compose_v2: str) -> None:
    repo = agents_repo(
        tmp_path / "site dir",
        f"""\
  - name: web
    isolation: container
    image: {busybox_image}
    command: ["sh", "-c", "exec httpd -f -p ${{PORT_WEB}} -h .", "x y"]
    ports: [web]
    resources: {{cpus: 0.5, memory: 96m, pids: 64}}
    healthcheck: {{test: ["wget", "-q", "-O", "/dev/null", "http://127.0.0.1:${{PORT_WEB}}/index.html"], interval: 200ms}}
    env: {{TOKEN: "${{NOPE:?boom}} $HOME $$ 'q' \\"dq\\""}}
""",
        {"index.html": "hi\n"},
    )
    try:
        hybridiso(repo, "up")
        file = Path(json.loads(hybridiso(repo, "render", "web", "--json").stdout)[0]["file"])
        plan = engine_apply.translate(read_yaml(file.read_text()), file)
        assert plan is not None  # one container: started through the engine
        ours = _inspect(plan.container_name)
        assert ours["State"]["Health"]["Status"] == "healthy"  # up returned only once it was
        compose = ["docker", "compose", "-f", str(file)]
        # Compose sees the container as its own ...
        listed = subprocess.run([*compose, "ps", "-a", "--format", "json"], capture_output=True, text=True, check=True).stdout
        assert plan.container_name in listed
        # ... and makes the very same one from the file
        subprocess.run([*compose, "up", "-d", "--force-recreate", "--wait"], capture_output=True, text=True, check=True)
        theirs = _inspect(plan.container_name)
        assert theirs["Id"] != ours["Id"]
        assert _essentials(ours) == _essentials(theirs)
        # a container Compose made is replaced by the next up (its hash is
        # Compose's), and the agent keeps working
        hybridiso(repo, "up")
        assert status_json(repo)["web"]["process"] == "running (healthy)"
        # Compose takes it down, network included
        subprocess.run([*compose, "down"], capture_output=True, text=True, check=True)
        assert docker("ps", "-aq", "--filter", f"name={plan.container_name}") == ""
        assert docker("network", "ls", "-q", "--filter", f"name={plan.network}") == ""
    finally:
        hybridiso(repo, "down", "--force", ok=None)


def _repo_with_agents(tmp_path: Path, agents_yaml: str) -> Path:
    return agents_repo(tmp_path / "site", agents_yaml)


@pytest.mark.docker
def test_leftover_service_containers_send_the_project_to_compose(tmp_path: Path, busybox_image: str, compose_v2: str) -> None:
    """An agent that had services and now has none: Compose removes the
    orphans (--remove-orphans), which the engine path would not."""
    repo = _repo_with_agents(tmp_path, f'  - {{name: solo, isolation: container, image: {busybox_image}, command: ["sleep", "3600"]}}\n')
    file = Path(json.loads(hybridiso(repo, "render", "solo", "--json").stdout)[0]["file"])
    project = read_yaml(file.read_text())["name"]
    try:
        docker(
            "run", "-d", "--name", f"{project}-cache-1", "--label", f"{TEST_LABEL}={TEST_RUN}",
            "--label", f"com.docker.compose.project={project}", "--label", "com.docker.compose.service=cache",
            "--label", "com.docker.compose.oneoff=False", "--label", "com.docker.compose.config-hash=old",
            "--label", "com.docker.compose.container-number=1", busybox_image, "sleep", "3600",
        )
        hybridiso(repo, "up")
        assert docker("ps", "-aq", "--filter", f"name={project}-cache-1") == ""
        assert status_json(repo)["solo"]["process"] == "running"
    finally:
        hybridiso(repo, "down", "--force", ok=None)
        subprocess.run(["docker", "rm", "-f", f"{project}-cache-1"], capture_output=True)


@pytest.mark.docker
def test_a_container_that_exits_before_it_is_healthy_is_named(tmp_path: Path, busybox_image: str, compose_v2: str) -> None:
    repo = _repo_with_agents(
        tmp_path,
        f"""\
  - name: quitter
    image: {busybox_image}
    command: ["sh", "-c", "echo cannot start; exit 3"]
    healthcheck: {{test: ["true"], interval: 200ms}}
""",
    )
    try:
        r = hybridiso(repo, "up", ok=False)
        assert r.returncode == 1
        assert "quitter" in r.stderr and "exited (code 3) before it was healthy" in r.stderr and "docker logs" in r.stderr
        # under the agent's line (errors.AgentsFailed indents it once more)
        assert "its last output:\n      cannot start" in r.stderr
    finally:
        hybridiso(repo, "down", "--force", ok=None)


def test_what_compose_did_is_read_from_the_containers_before_and_after() -> None:
    from hybridiso.strategies.container import _what_compose_did

    assert _what_compose_did({}, {"a": "running"}) == "created"
    assert _what_compose_did({"a": "running"}, {"b": "running"}) == "recreated"
    assert _what_compose_did({"a": "exited"}, {"a": "running"}) == "started"
    assert _what_compose_did({"a": "running"}, {"a": "running"}) == "unchanged"


@pytest.mark.docker
def test_up_makes_a_running_container_match_a_changed_manifest(tmp_path: Path, busybox_image: str, compose_v2: str, monkeypatch: pytest.MonkeyPatch) -> None:
    agent = f'  - {{name: solo, isolation: container, image: {busybox_image}, command: ["sleep", "3600"], env: {{GREETING: "{{}}"}}}}\n'
    repo = _repo_with_agents(tmp_path, agent.replace("{}", "hello"))
    try:
        hybridiso(repo, "up")
        cid = docker("ps", "-q", "--filter", "label=dev.hybridiso.agent=solo", "--filter", f"label={TEST_LABEL}={TEST_RUN}")
        assert "Up to date" in hybridiso(repo, "up").stderr
        # another shell, another GIT_AUTHOR_NAME: not a change of the agent's config
        monkeypatch.setenv("GIT_AUTHOR_NAME", "Someone Else")
        assert "Up to date" in hybridiso(repo, "up").stderr
        assert docker("ps", "-q", "--filter", "label=dev.hybridiso.agent=solo", "--filter", f"label={TEST_LABEL}={TEST_RUN}") == cid
        write_manifest(repo, f'labels: {{{TEST_LABEL}: "{TEST_RUN}"}}\nagents:\n' + agent.replace("{}", "hi there"))
        r = hybridiso(repo, "up")
        assert "Recreated" in r.stderr
        assert "GREETING=hi there" in _inspect(docker("ps", "-q", "--filter", "label=dev.hybridiso.agent=solo", "--filter", f"label={TEST_LABEL}={TEST_RUN}"))["Config"]["Env"]
        assert status_json(repo)["solo"]["process"] == "running"
    finally:
        hybridiso(repo, "down", "--force", ok=None)


@pytest.mark.docker
def test_up_leaves_one_off_containers_alone_and_recovers_paused_or_networkless_agents(tmp_path: Path, busybox_image: str, compose_v2: str) -> None:
    repo = _repo_with_agents(tmp_path, f'  - {{name: solo, isolation: container, image: {busybox_image}, command: ["sleep", "3600"]}}\n')

    def agent_id() -> str:
        return docker("ps", "-aq", "--filter", "label=dev.hybridiso.role=agent", "--filter", "label=dev.hybridiso.agent=solo", "--filter", "label=com.docker.compose.oneoff=False")

    try:
        hybridiso(repo, "up")
        file = json.loads(hybridiso(repo, "render", "solo", "--json").stdout)[0]["file"]
        plan = engine_apply.translate(read_yaml(Path(file).read_text()), Path(file))
        assert plan is not None and plan.network
        first = agent_id()
        # `docker compose run` of the agent service: the user's debugging session, not the agent
        oneoff = subprocess.run(["docker", "compose", "-f", file, "run", "-d", "agent", "sleep", "600"], capture_output=True, text=True, check=True).stdout.strip()
        assert "Up to date" in hybridiso(repo, "up").stderr
        assert agent_id() == first and docker("inspect", "--format", "{{.State.Running}}", oneoff) == "true"
        subprocess.run(["docker", "rm", "-f", oneoff], capture_output=True, check=True)
        # paused: up unpauses it
        docker("pause", first)
        assert "Restarted" in hybridiso(repo, "up").stderr
        assert docker("inspect", "--format", "{{.State.Status}}", first) == "running"
        # stopped, then its network pruned: up makes the network and the container again
        docker("stop", "-t", "0", first)
        docker("network", "rm", plan.network)
        r = hybridiso(repo, "up")
        assert "Recreated" in r.stderr or "Restarted" in r.stderr, r.stderr
        assert status_json(repo)["solo"]["process"] == "running"
        assert docker("network", "ls", "-q", "--filter", f"name={plan.network}")
    finally:
        hybridiso(repo, "down", "--force", ok=None)


@pytest.mark.docker
def test_a_changed_agent_keeps_the_data_in_its_images_volumes(tmp_path: Path, volume_image: str, compose_v2: str) -> None:
    """The image declares VOLUME /data: a config change recreates the
    container (through Compose, which carries anonymous volumes over) and
    what the agent wrote there is still there."""
    agent = f'  - {{name: keeper, isolation: container, image: {volume_image}, command: ["sleep", "3600"], env: {{V: "{{}}"}}}}\n'
    repo = _repo_with_agents(tmp_path, agent.replace("{}", "1"))
    try:
        hybridiso(repo, "up")
        hybridiso(repo, "exec", "keeper", "--", "sh", "-c", "echo precious > /data/file")
        write_manifest(repo, f'labels: {{{TEST_LABEL}: "{TEST_RUN}"}}\nagents:\n' + agent.replace("{}", "2"))
        assert "Recreated" in hybridiso(repo, "up").stderr
        assert hybridiso(repo, "exec", "keeper", "--", "sh", "-c", "echo $V; cat /data/file").stdout.split() == ["2", "precious"]
        data = [m["Name"] for m in _inspect(docker("ps", "-q", "--filter", "label=dev.hybridiso.agent=keeper"))["Mounts"] if m["Destination"] == "/data"]
        assert len(data) == 1
    finally:
        hybridiso(repo, "down", "--force", ok=None)
    # the volume the recreated container inherited goes with it
    assert subprocess.run(["docker", "volume", "inspect", data[0]], capture_output=True).returncode != 0
