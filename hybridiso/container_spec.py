"""What a container agent's compose project consists of: plain frozen data.

The container strategy builds a ``ContainerSpec`` from the manifest and the
agent's record (``container_build.py``); ``render.py`` turns it into a compose
file.  Nothing here imports a library, so both sides test on their own.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

PROJECT_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")

SERVICE_IMAGES = {"postgres": "postgres:16-alpine", "redis": "redis:7-alpine"}


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    read_only: bool = False


@dataclass(frozen=True)
class PortMapping:
    name: str
    host_port: int
    container_port: int
    host_ip: str = "127.0.0.1"


@dataclass(frozen=True)
class Healthcheck:
    test: tuple[str, ...]
    interval: str = "2s"
    timeout: str = "5s"
    retries: int = 30
    start_period: str = "1s"


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    kind: str  # postgres | redis
    image: str
    environment: tuple[tuple[str, str], ...] = ()

    @property
    def volume(self) -> str:
        return f"{self.name}-data"


@dataclass(frozen=True)
class ContainerSpec:
    project: str
    agent: str
    image: str
    workdir: str
    command: tuple[str, ...] | None = None
    mounts: tuple[Mount, ...] = ()
    environment: tuple[tuple[str, str], ...] = ()
    ports: tuple[PortMapping, ...] = ()
    user: str | None = None
    cpus: float | None = None
    memory: str | None = None
    pids: int | None = None
    network_mode: str | None = None  # None: its own network
    labels: tuple[tuple[str, str], ...] = ()
    healthcheck: Healthcheck | None = None
    services: tuple[ServiceSpec, ...] = field(default=())
    env_file: str | None = None
    extra_hosts: tuple[str, ...] = ()


def _slug(text: str, limit: int) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:limit].strip("-") or "x"


def project_name(repo_root: str, agent: str) -> str:
    """``hybridiso-<repo>-<agent>-<hash>``: readable, valid for compose
    (``^[a-z0-9][a-z0-9_-]*$``), and distinct for distinct repos/agents even
    when the slugs collide, because the hash covers the exact inputs."""
    digest = hashlib.sha256(f"{repo_root}\0{agent}".encode()).hexdigest()[:8]
    name = f"hybridiso-{_slug(repo_root.rstrip('/').rsplit('/', 1)[-1], 20)}-{_slug(agent, 40)}-{digest}"
    assert PROJECT_NAME_RE.match(name), name
    return name
