"""Build the small local images the tests run (there is no registry to pull from).

Cached by tag: built once per machine, reused by every later run.
- ``hybridiso-test/busybox:1``: FROM scratch + Debian's static busybox
  (sh, wget, httpd, nc...), for containers that only need a shell and HTTP.
- ``hybridiso-test/busybox-healthcheck:1``: the busybox image with a
  HEALTHCHECK of its own (healthy once ``/tmp/ready`` exists), for "ready
  means healthy" when the manifest names no healthcheck.
- ``hybridiso-test/busybox-marker:1``: the busybox image with a file of its
  own (``/etc/hybridiso-marker``), for "this ran in the image".
- ``hybridiso-test/busybox-volume:1``: the busybox image declaring ``VOLUME
  /data``, for data a recreated container must keep.
- ``hybridiso-test/debian-git:1``: a minimal Debian rootfs made with
  debootstrap, with git, loaded with ``docker import``; for git inside the
  container (docs/faults.md row 21).
- ``hybridiso-test/postgres:1`` and ``hybridiso-test/redis:1``: one Debian
  rootfs with postgresql, redis-server, psql and redis-cli, made with
  debootstrap; each tag starts its server the way the official ``postgres``
  and ``redis`` images do (``POSTGRES_USER``/``PASSWORD``/``DB``, data in
  ``/var/lib/postgresql/data``; ``/data``), so the compose/ fragments run
  unchanged.  Given a command, the postgres image runs it instead (an agent
  with psql and redis-cli).
A file lock keeps two concurrent test sessions from building the same image.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

BUSYBOX_IMAGE = "hybridiso-test/busybox:1"
GIT_IMAGE = "hybridiso-test/debian-git:1"
HEALTHCHECK_IMAGE = "hybridiso-test/busybox-healthcheck:1"
VOLUME_IMAGE = "hybridiso-test/busybox-volume:1"  # declares VOLUME /data
POSTGRES_IMAGE = "hybridiso-test/postgres:1"
REDIS_IMAGE = "hybridiso-test/redis:1"
PG_BIN = "/usr/lib/postgresql/15/bin"

# what the official postgres image's entrypoint does, in a few lines: first
# start initialises the data dir as the postgres user (setpriv, not su: the
# service runs with no-new-privileges) and makes the user and database
PG_ENTRYPOINT = f"""#!/bin/sh
set -e
[ "$#" -gt 0 ] && exec "$@"
PGDATA=/var/lib/postgresql/data
as_pg() {{ setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }}
mkdir -p "$PGDATA" /run/postgresql
chown -R postgres:postgres "$PGDATA" /run/postgresql
chmod 700 "$PGDATA"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  printf '%s\\n' "$POSTGRES_PASSWORD" > /tmp/pw && chown postgres /tmp/pw
  as_pg {PG_BIN}/initdb -D "$PGDATA" -U "$POSTGRES_USER" --pwfile=/tmp/pw --auth-host=scram-sha-256 --auth-local=trust
  rm -f /tmp/pw
  echo "host all all 0.0.0.0/0 scram-sha-256" >> "$PGDATA/pg_hba.conf"
  as_pg {PG_BIN}/pg_ctl -s -D "$PGDATA" -o "-c listen_addresses=''" -w start
  as_pg {PG_BIN}/createdb -U "$POSTGRES_USER" "$POSTGRES_DB"
  as_pg {PG_BIN}/pg_ctl -s -D "$PGDATA" -w stop
fi
exec setpriv --reuid=postgres --regid=postgres --init-groups {PG_BIN}/postgres -D "$PGDATA" -c listen_addresses='*'
"""
TEST_LABEL = "dev.hybridiso.test"
# The value of TEST_LABEL on what this test run creates: the pytest process's
# pid, so concurrent runs on one engine each reap only their own (and what
# runs that died left behind).  Images keep "1": they are shared and cached.
TEST_RUN = os.environ.setdefault("HYBRIDISO_TEST_RUN", str(os.getpid()))
DEBIAN_MIRROR = os.environ.get("HYBRIDISO_TEST_DEBIAN_MIRROR", "http://deb.debian.org/debian")


@contextlib.contextmanager
def _build_lock(tag: str) -> Iterator[None]:
    path = Path(tempfile.gettempdir()) / f"hybridiso-image-{tag.replace('/', '_').replace(':', '_')}.lock"
    with path.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def image_exists(tag: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", tag], capture_output=True).returncode == 0


def _busybox_binary() -> Path:
    for candidate in ("/bin/busybox", "/usr/bin/busybox"):
        p = Path(candidate)
        if p.exists():
            out = subprocess.run(["file", "-L", str(p)], capture_output=True, text=True).stdout if shutil.which("file") else "static"
            if "dynamically linked" not in out:
                return p
    raise RuntimeError("a static busybox is needed: apt-get install busybox-static (bash .ci/install-deps does it)")


def ensure_busybox_image() -> str:
    with _build_lock(BUSYBOX_IMAGE):
        if image_exists(BUSYBOX_IMAGE):
            return BUSYBOX_IMAGE
        with tempfile.TemporaryDirectory(prefix="hybridiso-busybox-") as ctx:
            shutil.copy2(_busybox_binary(), Path(ctx) / "busybox")
            (Path(ctx) / "Dockerfile").write_text(
                "FROM scratch\n"
                "COPY busybox /bin/busybox\n"
                'RUN ["/bin/busybox", "--install", "-s", "/bin"]\n'
                'RUN ["/bin/busybox", "mkdir", "-p", "/tmp", "/usr/bin", "/www"]\n'
                'RUN ["/bin/busybox", "chmod", "1777", "/tmp"]\n'
                f'LABEL {TEST_LABEL}="1"\n'
                'CMD ["/bin/sh"]\n'
            )
            subprocess.run(["docker", "build", "-q", "-t", BUSYBOX_IMAGE, ctx], check=True, capture_output=True, env={**os.environ, "DOCKER_BUILDKIT": "0"})
    return BUSYBOX_IMAGE


def _derived_from_busybox(tag: str, dockerfile: str) -> str:
    """``tag``, built once from the busybox image plus ``dockerfile``'s lines."""
    base = ensure_busybox_image()
    with _build_lock(tag):
        if image_exists(tag):
            return tag
        with tempfile.TemporaryDirectory(prefix="hybridiso-derived-") as ctx:
            (Path(ctx) / "Dockerfile").write_text(f"FROM {base}\n{dockerfile}")
            subprocess.run(["docker", "build", "-q", "-t", tag, ctx], check=True, capture_output=True, env={**os.environ, "DOCKER_BUILDKIT": "0"})
    return tag


MARKER_IMAGE = "hybridiso-test/busybox-marker:1"  # a file only the image has: /etc/hybridiso-marker
MARKER_TEXT = "baked into the test image"


def ensure_marker_image() -> str:
    return _derived_from_busybox(MARKER_IMAGE, f"RUN echo '{MARKER_TEXT}' > /etc/hybridiso-marker\n")


def ensure_healthcheck_image() -> str:
    return _derived_from_busybox(HEALTHCHECK_IMAGE, "HEALTHCHECK --interval=500ms --timeout=2s --retries=60 CMD test -f /tmp/ready\n")


def ensure_volume_image() -> str:
    return _derived_from_busybox(VOLUME_IMAGE, "RUN mkdir /data && chmod 1777 /data\nVOLUME /data\n")


def _debootstrap_import(tags: dict[str, list[str]], packages: str, prepare=None) -> None:  # type: ignore[no-untyped-def]
    """One minimal Debian rootfs with ``packages``, loaded once per tag with
    that tag's ``docker import --change`` lines."""
    if not shutil.which("debootstrap"):
        raise RuntimeError("debootstrap is needed to build the Debian test images (bash .ci/install-deps installs it)")
    root = Path(tempfile.mkdtemp(prefix="hybridiso-rootfs-", dir="/var/tmp"))
    try:
        subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={packages}", "bookworm", str(root), DEBIAN_MIRROR],
            check=True,
            capture_output=True,
        )
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            shutil.rmtree(root / cache, ignore_errors=True)
        if prepare is not None:
            prepare(root)
        for tag, changes in tags.items():
            tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
            argv = ["docker", "import", "--change", f'LABEL {TEST_LABEL}="1"']
            for change in changes:
                argv += ["--change", change]
            subprocess.run([*argv, "-", tag], stdin=tar.stdout, check=True, capture_output=True)
            assert tar.wait() == 0
    finally:
        shutil.rmtree(root, ignore_errors=True)


def ensure_service_images() -> tuple[str, str]:
    """(postgres image, redis image), built together from one rootfs."""
    with _build_lock(POSTGRES_IMAGE):
        if image_exists(POSTGRES_IMAGE) and image_exists(REDIS_IMAGE):
            return POSTGRES_IMAGE, REDIS_IMAGE

        def prepare(root: Path) -> None:
            entry = root / "usr" / "local" / "bin" / "pg-entrypoint"
            entry.write_text(PG_ENTRYPOINT)
            entry.chmod(0o755)
            (root / "data").mkdir(exist_ok=True)

        path = f"ENV PATH={PG_BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        _debootstrap_import(
            {
                POSTGRES_IMAGE: [path, 'ENTRYPOINT ["/usr/local/bin/pg-entrypoint"]', "CMD []"],
                REDIS_IMAGE: [path, 'CMD ["redis-server", "--protected-mode", "no", "--dir", "/data"]'],
            },
            "postgresql-15,postgresql-client-15,redis-server,redis-tools",
            prepare,
        )
    return POSTGRES_IMAGE, REDIS_IMAGE


def ensure_git_image() -> str:
    with _build_lock(GIT_IMAGE):
        if not image_exists(GIT_IMAGE):
            _debootstrap_import({GIT_IMAGE: ['CMD ["/bin/bash"]']}, "git,ca-certificates")
    return GIT_IMAGE


if __name__ == "__main__":
    # `python -m tests.support.images`: build (or reuse) the test images, e.g.
    # before running docs/bench/bench_containers.py
    print(ensure_busybox_image())
    print(ensure_healthcheck_image())
    print(ensure_volume_image())
    print(ensure_git_image())
    print(*ensure_service_images())
