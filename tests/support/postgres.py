"""A real PostgreSQL server for the tests: initdb + pg_ctl in a temp dir, on a
free loopback port, stopped at the end of the session.

PostgreSQL refuses to run as root, so when the tests run as root (as CI does)
the server runs as the ``postgres`` system user that Debian's package creates.
"""
from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest


def _bindir() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(candidates[-1]).parent if candidates else None


def free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PostgresServer:
    port: int
    datadir: Path
    bindir: Path
    user: str = "postgres"

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/postgres"

    def psql(self, sql: str, db: str = "postgres") -> str:
        r = subprocess.run(
            [str(self.bindir / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, "-d", db, "-Atqc", sql],
            capture_output=True,
            text=True,
            check=True,
        )
        return r.stdout.strip()

    def make_template(self, name: str) -> str:
        self.psql(f'CREATE DATABASE "{name}"')
        self.psql("CREATE TABLE items (id int PRIMARY KEY, label text); INSERT INTO items VALUES (1, 'from the template')", db=name)
        return name


def _as_postgres(argv: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return argv
    return ["runuser", "-u", "postgres", "--", *argv]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    bindir = _bindir()
    in_ci = os.environ.get("CI", "").lower() in ("1", "true", "yes")
    if bindir is None:
        if in_ci:
            pytest.fail("PostgreSQL server binaries not found (bash .ci/install-deps installs them)", pytrace=False)
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    if os.geteuid() == 0:
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.fail("running as root needs the 'postgres' system user (Debian's postgresql package creates it)")
    root = Path(tempfile.mkdtemp(prefix="hybridiso-pg-"))
    os.chmod(root, 0o755)
    datadir = root / "data"
    datadir.mkdir()
    if os.geteuid() == 0:
        os.chown(root, pw.pw_uid, pw.pw_gid)
        os.chown(datadir, pw.pw_uid, pw.pw_gid)
    port = free_port()
    server = PostgresServer(port, datadir, bindir)
    subprocess.run(
        _as_postgres([str(bindir / "initdb"), "-D", str(datadir), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"]),
        check=True,
        capture_output=True,
    )
    opts = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={root} -c fsync=off"
    subprocess.run(
        _as_postgres([str(bindir / "pg_ctl"), "-D", str(datadir), "-o", opts, "-l", str(root / "server.log"), "-w", "-t", "60", "start"]),
        check=True,
        capture_output=True,
    )
    try:
        yield server
    finally:
        subprocess.run(_as_postgres([str(bindir / "pg_ctl"), "-D", str(datadir), "-m", "immediate", "-w", "stop"]), capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
