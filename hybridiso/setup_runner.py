"""Run an environment's ``setup:`` commands, output to a log file.

A string command runs through ``/bin/sh -c`` (users write ``npm ci && ...``);
a list runs as argv.  Each command runs in its own process group so that an
interrupted ``up`` can stop it and everything it started.
"""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from hybridiso.errors import UserError
from hybridiso.manifest import Command

LOCKFILES = (
    "package-lock.json",
    "npm-shrinkwrap.json",
    "yarn.lock",
    "pnpm-lock.yaml",
    "bun.lockb",
    "poetry.lock",
    "uv.lock",
    "Pipfile.lock",
    "pdm.lock",
    "requirements.txt",
    "Cargo.lock",
    "go.sum",
    "Gemfile.lock",
    "composer.lock",
    "mix.lock",
)


class SetupInterrupted(Exception):
    pass


def argv_for(command: Command) -> list[str]:
    return ["/bin/sh", "-c", command] if isinstance(command, str) else list(command)


def describe(command: Command) -> str:
    return command if isinstance(command, str) else " ".join(command)


def setup_hash(path: Path, commands: Sequence[Command]) -> str:
    """Changes when the commands or any lockfile in the env root change."""
    h = hashlib.sha256()
    for c in commands:
        h.update(describe(c).encode() + b"\0")
    for name in LOCKFILES:
        f = path / name
        if f.is_file():
            h.update(name.encode() + b"\0" + hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()[:16]


def run_setup(
    commands: Sequence[Command],
    cwd: Path,
    env: Mapping[str, str],
    log: Path,
    cancel: threading.Event | None = None,
    agent: str = "",
) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, **env}
    with log.open("a", encoding="utf-8") as out:
        for command in commands:
            out.write(f"$ {describe(command)}\n")
            out.flush()
            started = time.monotonic()
            try:
                proc = subprocess.Popen(
                    argv_for(command),
                    cwd=cwd,
                    env=full_env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            except OSError as e:
                raise UserError(f"setup command for agent {agent} could not start: {describe(command)}: {e}") from None
            try:
                while True:
                    try:
                        code = proc.wait(timeout=0.1)
                        break
                    except subprocess.TimeoutExpired:
                        if cancel is not None and cancel.is_set():
                            raise SetupInterrupted(describe(command)) from None
            except BaseException:
                # interrupted (cancel, Ctrl-C in this thread): stop the command
                # and everything it started; it runs in its own session
                _kill_group(proc)
                raise
            out.write(f"# exit {code} after {time.monotonic() - started:.2f}s\n")
            out.flush()
            if code != 0:
                raise UserError(
                    f"setup command failed for agent {agent} (exit {code}): {describe(command)}\n"
                    f"  last output:\n{_tail(log)}",
                    hint=f"full log: {log}; fix the command in hybridiso.yaml and run `hybridiso up` again",
                )


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=2)
            return
        except subprocess.TimeoutExpired:
            continue


def _tail(log: Path, lines: int = 8) -> str:
    text = log.read_text(encoding="utf-8", errors="replace").splitlines()
    body = [line for line in text if not line.startswith("# exit")][-lines:]
    return "\n".join("    " + line for line in body)
