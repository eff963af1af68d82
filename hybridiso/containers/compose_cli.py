"""Applying rendered compose files with the Compose v2 CLI (``docker compose``).

We drive the CLI rather than re-implementing compose on the SDK: the rendered
file is then exactly what a user can run by hand (``docker compose -f FILE
up``), and ``--wait`` gives "ready = healthy (or running)" semantics for free.
docs/containers.md has the reasoning.
"""
from __future__ import annotations

import functools
import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from hybridiso.errors import UserError
from hybridiso.process import CommandError, run


@functools.lru_cache(maxsize=1)
def compose_command() -> tuple[str, ...]:
    """argv prefix of a Compose v2, or a UserError saying what was found."""
    found = []
    candidates: list[tuple[str, ...]] = []
    if shutil.which("docker"):
        candidates.append(("docker", "compose"))
    if shutil.which("docker-compose"):
        candidates.append(("docker-compose",))
    for argv in candidates:
        try:
            r = run([*argv, "version", "--short"], check=False, timeout=30)
        except OSError:
            continue
        text = (r.stdout or r.stderr).strip()
        m = re.search(r"v?(\d+)\.(\d+)", text)
        if r.returncode == 0 and m:
            if int(m.group(1)) >= 2:
                return argv
            found.append(f"{' '.join(argv)} {text}")
    seen = "; found " + ", ".join(found) if found else ""
    raise UserError(
        f"Docker Compose v2 (`docker compose`) is needed for container agents{seen}",
        hint="install the Compose v2 plugin (Docker's docker-compose-plugin package)",
    )


def _compose(project: str, file: Path, *args: str, timeout: float | None = None) -> str:
    argv = [*compose_command(), "-p", project, "-f", str(file), *args]
    try:
        return run(argv, timeout=timeout).stdout
    except CommandError as e:
        raise UserError(f"docker compose failed for project {project}:\n{e.details}") from None
    except subprocess.TimeoutExpired as e:  # an engine that stopped answering: said, not a crash
        raise UserError(
            f"docker compose {' '.join(args[:1])} did not finish in {e.timeout:g} s for project {project}",
            hint=f"see what `docker compose -p {project} ps` says; once the engine answers, run the same hybridiso command again",
        ) from None


def up(project: str, file: Path, *, wait: bool, timeout: int = 120) -> None:
    """Create and start; with ``wait``, return only once every healthcheck
    passes.  (``--wait`` polls, costing ~0.5 s even for a container that is
    running at once, so it is used only where there is a healthcheck.)"""
    args = ["up", "--detach", "--remove-orphans"]
    if wait:
        args += ["--wait", "--wait-timeout", str(timeout)]
    _compose(project, file, *args, timeout=timeout + 60)


def down(project: str, file: Path) -> None:
    _compose(project, file, "down", "--volumes", "--remove-orphans", "--timeout", "5", timeout=120)


def exec_argv(project: str, file: Path, service: str, argv: Sequence[str], *, tty: bool, workdir: str | None, user: str | None) -> list[str]:
    args = [*compose_command(), "-p", project, "-f", str(file), "exec"]
    if not tty:
        args.append("-T")
    if workdir:
        args += ["--workdir", workdir]
    if user:
        args += ["--user", user]
    return [*args, service, *argv]
