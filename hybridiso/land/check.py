"""Running ``land.check`` in a scratch worktree, each command with a timeout.

Each command runs in a session of its own behind setup_runner's gate: its
process group is handed to ``on_start`` (the journal) before it runs, so a
``kill -9`` of ``land`` leaves a record the next run stops (docs/faults.md row 38).  A
command past its timeout is stopped with its whole group (and whatever
carries its token), SIGTERM then SIGKILL.  Output goes to the candidate's
log, never through memory; a failure shows its tail.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hybridiso import process_groups
from hybridiso.errors import UserError
from hybridiso.manifest import Command
from hybridiso.setup_runner import LogFile, argv_for, describe, gated, open_log, tail
from hybridiso.state import ProcessGroup

if TYPE_CHECKING:
    from hybridiso.land.container_check import ImageCheck


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    seconds: float
    why: str = ""  # "exit 1: pytest -q", "timed out after 30s: ..."
    tail: str = ""


def run_checks(
    commands: Sequence[Command],
    cwd: Path,
    env: Mapping[str, str],
    log: LogFile,
    timeout: float,
    *,
    header: str,
    project_id: str,
    on_start: Callable[[ProcessGroup], None],
    on_end: Callable[[ProcessGroup], None],
    image: ImageCheck | None = None,
) -> CheckResult:
    """``image``: a container agent's check, each command in its image
    (land/container_check.py); None: on the host."""
    started = time.monotonic()
    fd = open_log(log)
    try:
        _write(fd, f"=== {header} {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} pid {os.getpid()}{' in ' + image.image if image else ''} ===\n")
        if image is not None:
            begin = os.lseek(fd, 0, os.SEEK_END)
            try:
                image.prepare(cwd, env, log)
            except UserError as e:
                _write(fd, f"hybridiso: {e}\n")
                why = f"could not start in its image {image.image}: {e.message}" + (f" (next step: {e.hint})" if e.hint else "")
                return CheckResult(False, time.monotonic() - started, why, tail(fd, begin, os.lseek(fd, 0, os.SEEK_END)))
        for command in commands:
            why, begin, end = _run_one(command, cwd, {**os.environ, **env}, fd, timeout, project_id, on_start, on_end, image)
            if why:
                return CheckResult(False, time.monotonic() - started, why, tail(fd, begin, end))
        return CheckResult(True, time.monotonic() - started)
    finally:
        if image is not None:
            image.finish()
        os.close(fd)


def _run_one(
    command: Command,
    cwd: Path,
    env: dict[str, str],
    fd: int,
    timeout: float,
    project_id: str,
    on_start: Callable[[ProcessGroup], None],
    on_end: Callable[[ProcessGroup], None],
    image: ImageCheck | None = None,
) -> tuple[str, int, int]:
    """Why the command failed ('' when it passed) and where its output is."""
    shown = describe(command)
    # a token only land issues (land:<project>:<random>): the next run and gc
    # stop a journal's group only when it carries one (docs/faults.md row 41)
    token = process_groups.land_token(project_id)
    if image is not None:
        _write(fd, f"$ {shown}  (in a container of {image.image})\n")
        argv, extra = image.command(command, token)  # its supervisor, a host process like any check's
        env = {**env, **extra}
        try:
            return _run_process(command, argv, token, cwd, env, fd, timeout, on_start, on_end)
        finally:
            image.sweep(token)
    _write(fd, f"$ {shown}\n")
    argv = argv_for(command)
    if "/" not in argv[0] and not shutil.which(argv[0], path=env.get("PATH", os.defpath)):
        begin = os.lseek(fd, 0, os.SEEK_END)
        _write(fd, f"{argv[0]}: not found on PATH\n")
        return f"could not start: {argv[0]} is not found on PATH: {shown}", begin, os.lseek(fd, 0, os.SEEK_END)
    return _run_process(command, argv, token, cwd, env, fd, timeout, on_start, on_end)


def _run_process(
    command: Command,
    argv: list[str],
    token: str,
    cwd: Path,
    env: dict[str, str],
    fd: int,
    timeout: float,
    on_start: Callable[[ProcessGroup], None],
    on_end: Callable[[ProcessGroup], None],
) -> tuple[str, int, int]:
    shown = describe(command)
    begin = os.lseek(fd, 0, os.SEEK_END)
    gate_r, gate_w = os.pipe()
    try:
        proc = subprocess.Popen(
            gated(argv),
            cwd=cwd,
            env={**env, process_groups.TOKEN_VAR: token},
            stdout=fd,
            stderr=subprocess.STDOUT,
            stdin=gate_r,
            start_new_session=True,
        )
    except OSError as e:
        os.close(gate_w)
        return f"could not start: {e.strerror or e}: {shown}", begin, os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(gate_r)
    group = process_groups.stamp(proc.pid, token, shown)
    started = time.monotonic()
    try:
        try:
            on_start(group)  # on disk before the command runs
            with contextlib.suppress(BrokenPipeError):
                os.write(gate_w, b"go\n")
        finally:
            os.close(gate_w)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _stop(group, proc)
            end = os.lseek(fd, 0, os.SEEK_END)
            _write(fd, f"# timed out after {timeout:g}s: stopped with its process group\n")
            return f"timed out after {timeout:g}s: {shown}", begin, end
    except BaseException:
        _stop(group, proc)  # Ctrl-C, SIGTERM: nothing of the check may run on
        raise
    # what it left running in the background is stopped too: the scratch
    # worktree is about to go
    _stop(group, proc)
    on_end(group)
    end = os.lseek(fd, 0, os.SEEK_END)
    _write(fd, f"# exit {code} after {time.monotonic() - started:.2f}s\n")
    if code != 0:
        why = f"killed by signal {-code}" if code < 0 else f"exit {code}"
        return f"{why}: {shown}", begin, end
    return "", begin, end


def _stop(group: ProcessGroup, proc: subprocess.Popen[bytes]) -> None:
    process_groups.stop([group], grace=2.0)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def _write(fd: int, text: str) -> None:
    data = text.encode("utf-8", errors="replace")
    while data:
        data = data[os.write(fd, data):]
