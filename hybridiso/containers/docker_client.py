"""Everything hybridiso asks of the Docker engine.  The only module that imports ``docker``.

Docker's labels are the state for containers (compose v1's habit):
``status`` and ``gc`` find our containers, networks and volumes through
``dev.hybridiso.*`` labels, not through the state file.  Connection and API
errors become one-line ``UserError``s (docs/faults.md rows 12, 13).
"""
from __future__ import annotations

import functools
import os
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

from hybridiso.errors import DockerUnavailable, UserError

LABEL_PREFIX = "dev.hybridiso"
LABEL_PROJECT = f"{LABEL_PREFIX}.project"  # the repository (a stable id)
LABEL_AGENT = f"{LABEL_PREFIX}.agent"
LABEL_ROLE = f"{LABEL_PREFIX}.role"  # agent | service
LABEL_COMPOSE_PROJECT = f"{LABEL_PREFIX}.compose-project"

# what making a container match its config did (up says Recreated, Restarted)
StartAction = Literal["created", "recreated", "started", "unchanged"]
# how waiting for a container to be ready ended: its health, "running" (it
# has no healthcheck), "exited", "stopped" (any other state Docker gives a
# container that does not run), or the wait's own end
WaitResult = Literal["healthy", "unhealthy", "running", "exited", "stopped", "timeout", "cancelled"]
ResourceKind = Literal["container", "network", "volume"]


@dataclass(frozen=True)
class Readiness:
    result: WaitResult
    docker_state: str = ""  # Docker's own word for the container's state (exited, dead, paused, ...)


@dataclass(frozen=True)
class Resource:
    """A container, network or volume Docker has, with its labels."""

    kind: ResourceKind
    id: str
    name: str
    labels: Mapping[str, str]

    def describe(self) -> str:
        return f"{self.kind} {self.name}"


def docker_host() -> str:
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


@functools.lru_cache(maxsize=1)
def client() -> Any:
    """A connected client, or DockerUnavailable saying where we looked."""
    try:
        import docker
        from docker.errors import DockerException
    except ImportError as e:  # pragma: no cover - docker is a dependency
        raise DockerUnavailable(f"the docker Python package is missing: {e}") from None
    from requests.exceptions import RequestException

    try:
        c = docker.from_env(timeout=30)
        c.ping()
        return c
    except (DockerException, RequestException) as e:
        raise DockerUnavailable(
            f"Docker is not reachable at {docker_host()}: {_short(e)}",
            hint="start the Docker engine (or set DOCKER_HOST); worktree and clone agents work without it",
        ) from None


def reachable() -> tuple[bool, str]:
    try:
        client()
        return True, docker_host()
    except DockerUnavailable as e:
        return False, e.message


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text[:300]


def _failures() -> tuple[type[BaseException], ...]:
    """What a call to the engine can raise: the SDK's errors, and the
    transport's (a read timeout, a daemon restarting), which it passes on."""
    from docker.errors import DockerException
    from requests.exceptions import RequestException

    return (DockerException, RequestException)


@contextmanager
def api_errors(what: str) -> Iterator[None]:
    from docker.errors import APIError

    try:
        yield
    except APIError as e:
        raise UserError(f"Docker refused to {what}: {e.explanation or _short(e)}") from None
    except _failures() as e:
        raise UserError(f"Docker failed to {what}: {_short(e)}") from None


def image_present(image: str) -> bool:
    from docker.errors import ImageNotFound

    try:
        client().images.get(image)
        return True
    except ImageNotFound:
        return False


def image_facts(image: str) -> tuple[str, bool]:
    """The local image's id (``sha256:...``) and whether it declares a
    HEALTHCHECK of its own (not ``NONE``), from one inspect; a UserError when
    it cannot be read (never a guess: the id is part of a container's config hash)."""
    with api_errors(f"inspect image {image}"):
        found = client().images.get(image)
    test = ((found.attrs.get("Config") or {}).get("Healthcheck") or {}).get("Test") or []
    return str(found.id), bool(test) and test[0] != "NONE"


def ensure_image(image: str) -> None:
    """The image is there, or is pulled, or a clear error names it (docs/faults.md row 13)."""
    if image_present(image):
        return
    from docker.errors import APIError, DockerException

    try:
        client().images.pull(image)
    except (APIError, DockerException) as e:
        raise UserError(
            f"image {image!r} is not on this machine and cannot be pulled: {_short(e)}",
            hint=f"build or load it first (docker build -t {image} ... / docker load), or name another image",
        ) from None


def run_once(image: str, argv: list[str], *, binds: Sequence[str], user: str, labels: Mapping[str, str]) -> tuple[int, str]:
    """Run ``argv`` in a throwaway container (no network, ``binds`` mounted
    at the same paths, removed afterwards); (exit code, combined output)."""
    with api_errors("run a helper container"):
        c = client().containers.create(
            image,
            argv,
            entrypoint=[],
            user=user,
            labels={**labels, LABEL_ROLE: "helper"},
            network_mode="none",
            security_opt=["no-new-privileges:true"],
            volumes={b: {"bind": b, "mode": "rw"} for b in binds},
        )
        try:
            c.start()
            code = int(c.wait(timeout=300).get("StatusCode", -1))
            out = c.logs().decode("utf-8", "replace")
        finally:
            c.remove(force=True)
    return code, out


@dataclass(frozen=True)
class ContainerInfo:
    id: str
    name: str
    agent: str | None
    role: str | None
    status: str  # created, running, exited, ...
    health: str | None  # healthy, unhealthy, starting, None
    exit_code: int | None
    labels: Mapping[str, str]
    last_probe: str = ""  # the newest healthcheck's exit code and output
    image_id: str = ""
    boundary: Mapping[str, Any] = field(default_factory=dict)  # what it was given: see _boundary

    def describe(self) -> str:
        if self.status == "running":
            return f"running ({self.health})" if self.health else "running"
        if self.status == "exited":
            return f"exited ({self.exit_code})"
        return self.status


def _label_filters(labels: Mapping[str, str]) -> list[str]:
    return [f"{k}={v}" for k, v in labels.items()]


def containers(labels: Mapping[str, str]) -> list[ContainerInfo]:
    with api_errors("list containers"):
        found = client().containers.list(all=True, ignore_removed=True, filters={"label": _label_filters(labels)})
    result = []
    for c in found:
        state = c.attrs.get("State", {})
        health = (state.get("Health") or {}).get("Status")
        probes = (state.get("Health") or {}).get("Log") or []
        last = probes[-1] if probes else {}
        probe = f"exit {last.get('ExitCode')}: {(last.get('Output') or '').strip()[-300:] or '(no output)'}" if last else ""
        result.append(
            ContainerInfo(
                c.id,
                c.name,
                c.labels.get(LABEL_AGENT),
                c.labels.get(LABEL_ROLE),
                state.get("Status", c.status),
                health,
                state.get("ExitCode") if state.get("Status") == "exited" else None,
                dict(c.labels),
                probe,
                str(c.attrs.get("Image") or ""),
                _boundary(c.attrs),
            )
        )
    return result


def _boundary(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """What a container was given, as Docker reports it (status shows it:
    reality, not what hybridiso meant to ask for)."""
    config, host = attrs.get("Config") or {}, attrs.get("HostConfig") or {}
    security = list(host.get("SecurityOpt") or [])
    return {
        "user": config.get("User") or "root (image default)",
        "cap_drop": list(host.get("CapDrop") or []),
        "cap_add": list(host.get("CapAdd") or []),
        "no_new_privileges": any(o.replace("=", ":") in ("no-new-privileges:true", "no-new-privileges") for o in security),
        "seccomp": "unconfined" if any(o.replace("=", ":") == "seccomp:unconfined" for o in security) else "default",
        "privileged": bool(host.get("Privileged")),
        "read_only": bool(host.get("ReadonlyRootfs")),
        "pids_limit": host.get("PidsLimit"),
        "network_mode": host.get("NetworkMode") or "",
        "docker_socket": any("docker.sock" in str(m.get("Source", "")) for m in attrs.get("Mounts") or []),
    }


def remove_container(container_id: str) -> None:
    """Remove one container; its volumes stay (a recreated one gets them through Compose)."""
    from docker.errors import NotFound

    with api_errors(f"remove container {container_id[:12]}"):
        try:
            client().api.remove_container(container_id, force=True)
        except NotFound:
            pass


def stop_container(container_id: str, timeout: int = 3) -> bool:
    """Stop one container (SIGTERM, then SIGKILL after ``timeout`` s); it
    stays, with its logs.  False when it was gone already."""
    from docker.errors import NotFound

    with api_errors(f"stop container {container_id[:12]}"):
        try:
            client().api.stop(container_id, timeout=timeout)
        except NotFound:
            return False
    return True


def remove_labelled(labels: Mapping[str, str]) -> list[Resource]:
    """Remove containers, then networks and volumes carrying ``labels``;
    what was removed (one gone meanwhile is not)."""
    from docker.errors import NotFound

    filters = {"label": _label_filters(labels)}
    removed: list[Resource] = []
    with api_errors("remove containers"):
        for c in client().containers.list(all=True, ignore_removed=True, filters=filters):
            try:
                c.remove(force=True, v=True)
                removed.append(Resource("container", c.id, c.name, dict(c.labels)))
            except NotFound:
                pass
    with api_errors("remove networks"):
        for n in client().networks.list(filters=filters):
            try:
                n.remove()
                removed.append(Resource("network", n.id, n.name, dict(n.attrs.get("Labels") or {})))
            except NotFound:
                pass
    with api_errors("remove volumes"):
        for v in client().volumes.list(filters=filters):
            try:
                v.remove(force=True)
                removed.append(Resource("volume", v.id, v.name, dict(v.attrs.get("Labels") or {})))
            except NotFound:
                pass
    return removed


_ANONYMOUS = re.compile(r"^[0-9a-f]{64}$")


def anonymous_volumes(labels: Mapping[str, str]) -> list[str]:
    """The anonymous volumes (an image's VOLUME) that containers carrying
    ``labels`` mount.  Removing a container frees its own, but not one it
    inherited when Compose recreated it: ``down`` removes those by name."""
    with api_errors("list containers"):
        found = client().containers.list(all=True, ignore_removed=True, filters={"label": _label_filters(labels)})
    return sorted({m["Name"] for c in found for m in c.attrs.get("Mounts") or [] if m.get("Type") == "volume" and _ANONYMOUS.match(m.get("Name") or "")})


def remove_volumes(names: Sequence[str]) -> None:
    """Remove volumes by name; one still in use (or gone) is left as it is."""
    for name in names:
        try:
            client().api.remove_volume(name)
        except _failures():
            pass


def labelled_resources(labels: Mapping[str, str]) -> list[Resource]:
    """Containers, then networks, then volumes carrying ``labels``, for gc."""
    filters = {"label": _label_filters(labels)}
    c = client()
    with api_errors("list resources"):
        return [
            *(Resource("container", x.id, x.name, dict(x.labels)) for x in c.containers.list(all=True, ignore_removed=True, filters=filters)),
            *(Resource("network", x.id, x.name, dict(x.attrs.get("Labels") or {})) for x in c.networks.list(filters=filters)),
            *(Resource("volume", x.id, x.name, dict(x.attrs.get("Labels") or {})) for x in c.volumes.list(filters=filters)),
        ]


def logs_tail(container: str, lines: int = 5) -> str:
    """The last ``lines`` of a container's output, "" when there is none or it is gone."""
    try:
        out = client().api.logs(container, stdout=True, stderr=True, tail=lines)
    except _failures():
        return ""
    return out.decode("utf-8", "replace").strip() if isinstance(out, bytes) else str(out or "").strip()


def exec_in(container_id: str, argv: list[str], *, user: str | None = None, workdir: str | None = None, environment: Mapping[str, str] | None = None) -> tuple[int, str]:
    """Run ``argv`` in a running container; (exit code, combined output)."""
    with api_errors("run a command in a container"):
        result = client().containers.get(container_id).exec_run(
            argv, user=user or "", workdir=workdir, environment=dict(environment or {}), demux=False
        )
    out = result.output.decode("utf-8", "replace") if isinstance(result.output, bytes) else str(result.output or "")
    return int(result.exit_code if result.exit_code is not None else -1), out


def pause(container_id: str) -> bool:
    """Freeze every process of a running container (the cgroup freezer);
    False when Docker would not (it stopped meanwhile, it is paused already)."""
    from docker.errors import APIError

    try:
        client().api.pause(container_id)
    except APIError:
        return False
    except _failures() as e:
        raise UserError(f"Docker failed to pause a container: {_short(e)}") from None
    return True


def unpause(container_id: str) -> None:
    from docker.errors import APIError

    failures: tuple[type[BaseException], ...] = (APIError, *_failures())
    try:
        client().api.unpause(container_id)
    except failures:
        pass  # gone, or Docker went away: nothing of ours stays frozen by it


COMPOSE_PROJECT = "com.docker.compose.project"
COMPOSE_SERVICE = "com.docker.compose.service"
COMPOSE_ONEOFF = "com.docker.compose.oneoff"
COMPOSE_CONFIG_HASH = "com.docker.compose.config-hash"  # compose lists only containers that have one


def ensure_network(name: str, labels: Mapping[str, str], options: Mapping[str, str] | None = None, internal: bool = False) -> bool:
    """A bridge network ``name`` exists: made now, with ``labels``, driver
    ``options`` and ``internal`` (True), or earlier, as it was (False)."""
    from docker.errors import APIError

    with api_errors(f"create network {name}"):
        try:
            client().api.create_network(
                name, driver="bridge", labels=dict(labels), options=dict(options or {}) or None, internal=internal, check_duplicate=True
            )
            return True
        except APIError as e:
            if e.status_code != 409:  # 409: it exists already, from an earlier up
                raise
            return False


def network_differs(name: str, options: Mapping[str, str], internal: bool) -> bool:
    """The network exists but was made with other driver options (an agent
    network from before it was isolated: its bridge has Docker's name, which
    the firewall rules do not know) or another ``internal``."""
    from docker.errors import NotFound

    try:
        info = client().api.inspect_network(name)
    except NotFound:
        return False
    have = {k: v for k, v in (info.get("Options") or {}).items() if k in options or k.startswith("com.docker.network.bridge.name")}
    return have != dict(options) or bool(info.get("Internal")) != internal


def remove_network(name: str) -> None:
    from docker.errors import NotFound

    with api_errors(f"remove network {name}"):
        try:
            client().api.remove_network(name)
        except NotFound:
            pass


def network_bridge(name: str) -> str | None:
    """The Linux bridge of a bridge network (Docker's ``br-<id>`` unless
    the network was made with a name for it); None when it does not exist."""
    from docker.errors import NotFound

    try:
        info = client().api.inspect_network(name)
    except NotFound:
        return None
    except _failures():
        return None
    return (info.get("Options") or {}).get("com.docker.network.bridge.name") or f"br-{info['Id'][:12]}"


def published_ports(labels: Mapping[str, str]) -> dict[int, str]:
    """Host ports published by running containers carrying ``labels``, and
    the agent each belongs to (its docker-proxy holds the port)."""
    with api_errors("list containers"):
        found = client().api.containers(filters={"label": _label_filters(labels), "status": "running"})
    ports: dict[int, str] = {}
    for c in found:
        for p in c.get("Ports") or []:
            if p.get("PublicPort"):
                ports[int(p["PublicPort"])] = (c.get("Labels") or {}).get(LABEL_AGENT, "")
    return ports


def run_streaming(config: Mapping[str, Any], *, sink: Any, cancel: threading.Event | None = None, poll: float = 0.1) -> int | None:
    """Create and run one container from an Engine API body, writing its
    output (stdout and stderr, as it comes) to ``sink(bytes)``; remove it
    afterwards, also when interrupted.  Its exit code, or None when
    ``cancel`` was set first."""
    import time

    api = client().api
    with api_errors("create a setup container"):
        created = api.create_container_from_config(dict(config), None)
    cid = created["Id"]
    reader: threading.Thread | None = None
    try:
        with api_errors("start a setup container"):
            api.start(cid)
            stream = api.logs(cid, stdout=True, stderr=True, stream=True, follow=True)

        def pump() -> None:
            try:
                for chunk in stream:
                    sink(chunk)
            except _failures():
                pass  # the container went away (cancelled): its output ends here

        reader = threading.Thread(target=pump, name="hybridiso-setup-log", daemon=True)
        reader.start()
        cancel = cancel or threading.Event()
        while True:
            with api_errors("watch a setup container"):
                state = api.inspect_container(cid).get("State") or {}
            if state.get("Status") in ("exited", "dead"):
                reader.join(timeout=5)  # the last of its output
                return int(state.get("ExitCode", -1))
            if cancel.wait(poll):
                return None
            time.sleep(0)
    finally:
        try:
            api.remove_container(cid, force=True)
        except _failures():
            pass
        if reader is not None:
            reader.join(timeout=2)


@dataclass(frozen=True)
class ContainerPlan:
    """One container to create (and the network it joins, if its own), as
    engine_apply translates it from a compose file."""

    project: str
    service: str
    container_name: str
    config: dict[str, Any]  # the Engine API body of POST /containers/create
    network: str | None  # the project network's full name; None with network_mode
    network_labels: dict[str, str]
    config_hash: str
    has_healthcheck: bool
    network_options: dict[str, str] = field(default_factory=dict)  # the driver's: com.docker.network.bridge.name
    network_internal: bool = False


def apply_container(plan: ContainerPlan) -> StartAction | None:
    """Make ``plan`` true on its network, which must
    exist: its one container exists with the same config and runs.  Returns what was done
    (created, recreated, started, unchanged), or None where Compose must
    reconcile: containers of other services in the project (orphans to
    remove), or a changed container holding volumes (Compose carries them
    over to the new one)."""
    from docker.errors import APIError

    api = client().api
    with api_errors(f"start container {plan.container_name}"):
        # one-off containers (`docker compose run`) are the user's, never the agent
        found = api.containers(all=True, filters={"label": [f"{COMPOSE_PROJECT}={plan.project}", f"{COMPOSE_ONEOFF}=False"]})
        if any((c.get("Labels") or {}).get(COMPOSE_SERVICE) != plan.service for c in found):
            return None
        stale = [c for c in found if (c.get("Labels") or {}).get(COMPOSE_CONFIG_HASH) != plan.config_hash or c.get("State") in ("dead", "removing")]
        if any(_holds_volumes(c) for c in stale):
            return None
        # its network is the caller's to make, in the file's shape, before
        # anything starts (strategies/container.py: isolation comes first)
        action: StartAction = "recreated" if stale else "created"
        for c in found:
            if c in stale:
                api.remove_container(c["Id"], force=True)
                continue
            if c.get("State") == "running":
                return "unchanged"
            try:
                if c.get("State") == "paused":
                    api.unpause(c["Id"])
                else:
                    api.start(c["Id"])
                return "started"
            except APIError:
                if _holds_volumes(c):
                    return None  # Compose recreates it and carries its volumes over
                api.remove_container(c["Id"], force=True)  # unstartable as it is: make it anew
                action = "recreated"
        created = api.create_container_from_config(plan.config, plan.container_name)
        api.start(created["Id"])
    return action


def _holds_volumes(listed: Mapping[str, Any]) -> bool:
    """A container (as the list call returns it) mounts a volume: recreating
    it is Compose's job, which carries the volume over."""
    return any(m.get("Type") == "volume" for m in listed.get("Mounts") or [])


def wait_ready(container_name: str, *, timeout: float, cancel: threading.Event | None = None) -> Readiness:
    """Poll until the container is healthy, unhealthy or stopped (or
    ``timeout`` passes, or ``cancel`` is set)."""
    import time

    api = client().api
    end = time.monotonic() + timeout
    cancel = cancel or threading.Event()
    with api_errors(f"inspect container {container_name}"):
        while True:
            state = api.inspect_container(container_name).get("State") or {}
            status = str(state.get("Status"))
            health = (state.get("Health") or {}).get("Status")
            if status not in ("running", "created", "restarting"):
                return Readiness("exited" if status == "exited" else "stopped", status)
            if health == "healthy" or health == "unhealthy":
                return Readiness(health, status)
            if health is None:
                return Readiness("running" if status == "running" else "stopped", status)
            if time.monotonic() > end:
                return Readiness("timeout", status)
            if cancel.wait(0.1):
                return Readiness("cancelled", status)
