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
TEST_RUN = images.TEST_RUN


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(reason: str) -> None:
    if _in_ci():
        pytest.fail(f"{reason} (in CI a skipped Docker test is a failure)", pytrace=False)
    pytest.skip(reason)


def _run_is_over(value: str) -> bool:
    """A test run's label value is its pytest pid: over when that is gone."""
    if value == TEST_RUN:
        return True
    if not value.isdigit():
        return True  # "1": from an image or an old run
    try:
        os.kill(int(value), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def reap(label: str = TEST_LABEL, value: str | None = None, *, only_finished_runs: bool = False) -> None:
    """Remove containers, networks and volumes a test run labelled.  With
    ``only_finished_runs``, those of runs still going on (another session on
    the same engine) are left alone."""
    selector = f"label={label}" if value is None else f"label={label}={value}"
    fmt = "{{.ID}}\t{{.Label \"%s\"}}" % label
    for ls, rm in (
        (["docker", "ps", "-a", "--filter", selector, "--format", fmt], ["docker", "rm", "-fv"]),
        (["docker", "network", "ls", "--filter", selector, "--format", fmt], ["docker", "network", "rm"]),
        (["docker", "volume", "ls", "--filter", selector, "--format", fmt.replace(".ID", ".Name")], ["docker", "volume", "rm", "-f"]),
    ):
        ids = []
        for line in subprocess.run(ls, capture_output=True, text=True).stdout.splitlines():
            ident, _, run = line.partition("\t")
            if ident and (not only_finished_runs or _run_is_over(run)):
                ids.append(ident)
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
    write_manifest(repo, f'labels: {{{TEST_LABEL}: "{TEST_RUN}"}}\nports: {{range: "{lo}-{lo + 50}"}}\nagents:\n{agents_yaml}')
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
    reap(only_finished_runs=True)
    yield info
    reap(value=TEST_RUN)


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
    return {TEST_LABEL: TEST_RUN, f"{TEST_LABEL}.id": uuid.uuid4().hex[:12]}
