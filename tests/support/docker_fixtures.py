"""Docker fixtures: the real engine, locally built images, and a reaper.

In CI (CI=true) an unreachable engine or a missing Compose v2 is a failure,
never a skip: container tests must really run there.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import images

TEST_LABEL = images.TEST_LABEL


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(reason: str) -> None:
    if _in_ci():
        pytest.fail(f"{reason} (in CI a skipped Docker test is a failure)", pytrace=False)
    pytest.skip(reason)


def reap(label: str = TEST_LABEL, value: str | None = None) -> None:
    """Remove containers, networks and volumes a test run labelled, and the
    compose projects whose agents carry hybridiso labels from test repos."""
    selector = f"label={label}" if value is None else f"label={label}={value}"
    for kind, ls, rm in (
        ("container", ["docker", "ps", "-aq", "--filter", selector], ["docker", "rm", "-fv"]),
        ("network", ["docker", "network", "ls", "-q", "--filter", selector], ["docker", "network", "rm"]),
        ("volume", ["docker", "volume", "ls", "-q", "--filter", selector], ["docker", "volume", "rm", "-f"]),
    ):
        ids = subprocess.run(ls, capture_output=True, text=True).stdout.split()
        if ids:
            subprocess.run([*rm, *ids], capture_output=True)


def agents_repo(root: Path, agents_yaml: str, files: dict[str, str] | None = None) -> Path:
    """A repository at ``root`` whose manifest labels everything for the
    reaper, leases ports from a free range, and declares ``agents_yaml``."""
    from tests.support.cli import write_manifest
    from tests.support.gitrepo import make_repo
    from tests.support.postgres import free_port

    repo = make_repo(root, files or {"a.txt": "a\n"})
    lo = free_port()
    write_manifest(repo, f'labels: {{{TEST_LABEL}: "1"}}\nports: {{range: "{lo}-{lo + 50}"}}\nagents:\n{agents_yaml}')
    return repo


def engine_reachable() -> tuple[bool, str]:
    if not shutil.which("docker"):
        return False, "the docker CLI is not installed"
    r = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        return False, f"Docker engine not reachable: {r.stderr.strip()[:200]}"
    return True, r.stdout.strip()


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[str]:
    ok, info = engine_reachable()
    if not ok:
        unavailable(info)
    reap()
    reap("dev.hybridiso.test-repo")
    yield info
    reap()
    reap("dev.hybridiso.test-repo")


@pytest.fixture(scope="session")
def compose_v2(docker_engine: str) -> str:
    r = subprocess.run(["docker", "compose", "version", "--short"], capture_output=True, text=True)
    if r.returncode != 0 or not r.stdout.strip().lstrip("v").startswith("2"):
        unavailable("Docker Compose v2 (`docker compose`) is not installed: run bash .ci/install-deps")
    return r.stdout.strip()


def _built(build, what: str):  # type: ignore[no-untyped-def]
    """An image from tests.support.images; unbuildable means unavailable."""
    try:
        return build()
    except (RuntimeError, subprocess.CalledProcessError) as e:
        unavailable(f"cannot build the {what} test image: {e}")
        raise


@pytest.fixture(scope="session")
def busybox_image(docker_engine: str) -> str:
    return _built(images.ensure_busybox_image, "busybox")


@pytest.fixture(scope="session")
def healthcheck_image(docker_engine: str) -> str:
    return _built(images.ensure_healthcheck_image, "healthcheck")


@pytest.fixture(scope="session")
def volume_image(docker_engine: str) -> str:
    return _built(images.ensure_volume_image, "volume")


@pytest.fixture(scope="session")
def service_images(docker_engine: str) -> tuple[str, str]:
    """(postgres, redis) images that behave like the official ones."""
    return _built(images.ensure_service_images, "postgres and redis")


@pytest.fixture(scope="session")
def git_image(docker_engine: str) -> str:
    return _built(images.ensure_git_image, "git")


@pytest.fixture
def test_labels() -> dict[str, str]:
    return {TEST_LABEL: "1", f"{TEST_LABEL}.id": uuid.uuid4().hex[:12]}
