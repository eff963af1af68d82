"""What a container agent's compose project consists of: plain frozen data.

The container strategy builds a ``ContainerSpec`` from the manifest and the
agent's record (``containers/build.py``); ``containers/compose_file.py`` turns it
into a compose file.  Nothing here imports a library, so both sides test on their own.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from hybridiso.names import PROJECT_NAME_RE

# compose-spec's pattern for service keys; "agent" is ours
SERVICE_NAME_RE = re.compile(r"^[a-zA-Z0-9._-]+$")
AGENT_SERVICE = "agent"
BRIDGE_NAME_RE = re.compile(r"^[a-z][a-z0-9]{1,14}$")
# what a service container (postgres, redis: an entrypoint that starts as
# root, chowns its data and drops to its own user) needs of Docker's defaults
SERVICE_CAPABILITIES = ("CHOWN", "DAC_OVERRIDE", "FOWNER", "SETGID", "SETUID")
SERVICE_PIDS = 1024

SERVICE_IMAGES = {"postgres": "postgres:16-alpine", "redis": "redis:7-alpine"}

Pairs = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Mount:
    """A bind mount; hybridiso mounts host paths at the same path inside."""

    source: str
    target: str
    read_only: bool = False


@dataclass(frozen=True)
class PortMapping:
    name: str
    host_port: int
    container_port: int
    host_ip: str = "127.0.0.1"

    def __post_init__(self) -> None:
        for port in (self.host_port, self.container_port):
            if not 1 <= port <= 65535:
                raise ValueError(f"port {self.name!r}: {port} is not in 1-65535")


@dataclass(frozen=True)
class Healthcheck:
    test: tuple[str, ...]  # argv, starting with "CMD" or "CMD-SHELL"
    interval: str = "2s"
    timeout: str = "5s"
    retries: int = 30
    start_period: str = "1s"


@dataclass(frozen=True)
class ServiceSpec:
    """A backing service in the agent's project; ``image`` defaults by kind."""

    name: str
    kind: str  # a key of SERVICE_IMAGES: the compose/<kind>.yaml.j2 fragment
    image: str = ""
    environment: Pairs = ()

    def __post_init__(self) -> None:
        # kind names a template file: never let anything else through
        if self.kind not in SERVICE_IMAGES:
            raise ValueError(f"service {self.name!r}: unknown kind {self.kind!r} (known: {', '.join(SERVICE_IMAGES)})")
        if not SERVICE_NAME_RE.match(self.name) or self.name == AGENT_SERVICE:
            raise ValueError(f"service name {self.name!r} is not a valid compose service name")
        if not self.image:
            object.__setattr__(self, "image", SERVICE_IMAGES[self.kind])

    @property
    def volume(self) -> str:
        return f"{self.name}-data"


@dataclass(frozen=True)
class ContainerSpec:
    project: str  # from names.compose_project_name()
    agent: str
    image: str
    workdir: str
    command: tuple[str, ...] | None = None  # None: the image's CMD
    mounts: tuple[Mount, ...] = ()
    environment: Pairs = ()
    ports: tuple[PortMapping, ...] = ()
    user: str | None = None  # "uid:gid"
    cpus: float | None = None
    memory: str | None = None  # "1g", compose mem_limit syntax
    pids: int | None = None
    network_mode: str | None = None  # None: its own network; or "host" / "none"
    labels: Pairs = ()  # added to hybridiso's own dev.hybridiso.* defaults
    healthcheck: Healthcheck | None = None
    services: tuple[ServiceSpec, ...] = ()
    extra_hosts: tuple[str, ...] = ()
    # least privilege (issue 12): every capability dropped but those added
    # back, an optional read-only root file system with tmpfs mounts
    # ("/tmp:OPTIONS"), and for an isolated agent the Linux bridge name its
    # network gets (netguard's rules are keyed by it) or an internal network
    cap_drop: tuple[str, ...] = ("ALL",)
    cap_add: tuple[str, ...] = ()
    read_only: bool = False
    tmpfs: tuple[str, ...] = ()
    bridge_name: str | None = None
    network_internal: bool = False

    def __post_init__(self) -> None:
        if self.bridge_name is not None and not BRIDGE_NAME_RE.match(self.bridge_name):
            raise ValueError(f"bridge name {self.bridge_name!r} is not a Linux interface name of at most 15 characters")
        if not PROJECT_NAME_RE.match(self.project):
            raise ValueError(f"compose project name {self.project!r} does not match {PROJECT_NAME_RE.pattern}")
        names = [s.name for s in self.services]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate service names in {names}")
