"""Run an environment's ``setup:`` commands, output to a log file.

A string command runs through ``/bin/sh -c`` (users write ``npm ci && ...``);
a list runs as argv.  Each command runs in its own session (process group),
recorded through ``on_start`` before it is waited for, so that an interrupted
``up`` stops it and everything it started, and a killed one leaves a record
the next run stops (``process_groups``, docs/faults.md row 38).

The log (``logs/<agent>/setup.log``, 0600, opened without following a
symlink) gets a header per run; the command's output goes straight to the
file, never through hybridiso's memory, and an error shows a bounded tail of
this command's output only, read from the end of the file (issue 11: a 20 MB
line once took 170 MB and all of it went to stderr).
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from hybridiso import process_groups, safe_files
from hybridiso.output import plural
from hybridiso.errors import UserError
from hybridiso.manifest import Command
from hybridiso.state import ProcessGroup

TAIL_LINES = 40  # lines of output an error shows at most
LINE_WIDTH = 500  # characters of one line it shows
TAIL_CHARS = 4096  # characters of output it shows in all
TAIL_WINDOW = 64 << 10  # bytes read from the end of the log to find them
ROTATE_AT = 8 << 20  # a log bigger than this is moved to setup.log.1 when a run starts


@dataclass(frozen=True)
class LogFile:
    """A log below a directory the caller trusts (the repository's git dir)."""

    anchor: Path
    rel: PurePosixPath

    @property
    def path(self) -> Path:
        return self.anchor.joinpath(*self.rel.parts)


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


# The command starts only once its process group is on disk: until hybridiso
# writes a line to the gate (the leader's stdin), the leader waits in `read`;
# if hybridiso dies first (kill -9), the read sees end-of-file and the command
# never runs.  Then stdin is /dev/null, as for any setup command, and exec
# keeps the pid, so the recorded group is the command's.
_GATE = 'read -r _ || exit 125; exec </dev/null; exec "$@"'


def gated(argv: list[str]) -> list[str]:
    return ["/bin/sh", "-c", _GATE, "hybridiso-setup", *argv]


@dataclass
class Gated:
    """A command started in a session of its own, held at its gate (the
    leader waits to read "go") until its process group is recorded."""

    proc: subprocess.Popen[bytes]
    group: ProcessGroup
    gate: int  # the gate's write end

    def open_gate(self, on_start: Callable[[ProcessGroup], None] | None) -> None:
        """``on_start(group)`` (on disk before the command runs: a kill -9
        of this run leaves its trace), then let the command run."""
        try:
            if on_start is not None:
                on_start(self.group)
            with contextlib.suppress(BrokenPipeError):  # somebody killed it already: the wait says how
                os.write(self.gate, b"go\n")
        finally:
            os.close(self.gate)  # without "go" the leader reads end-of-file and exits


def start_gated(argv: list[str], cwd: Path, env: Mapping[str, str], token: str, out: int, shown: str) -> Gated:
    """Start ``argv`` (stdout and stderr to ``out``) in its own session with
    ``token`` in its environment, held at its gate; OSError when it cannot
    start."""
    gate_r, gate_w = os.pipe()
    try:
        proc = subprocess.Popen(
            gated(argv),
            cwd=cwd,
            env={**env, process_groups.TOKEN_VAR: token},
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=gate_r,
            start_new_session=True,
        )
    except OSError:
        os.close(gate_w)
        raise
    finally:
        os.close(gate_r)
    return Gated(proc, process_groups.stamp(proc.pid, token, shown), gate_w)


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
    log: LogFile,
    cancel: threading.Event | None = None,
    agent: str = "",
    *,
    run: str = "up",
    on_start: Callable[[ProcessGroup], None] | None = None,
) -> None:
    """Run ``commands`` one after the other; a failure is a UserError with
    the tail of its output.  ``on_start`` gets each command's group as soon
    as it runs (the caller saves it); a command that fails, is cancelled or
    is interrupted is stopped with everything it started."""
    fd = open_log(log)
    try:
        _write(fd, f"=== {run} {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} pid {os.getpid()} ===\n")
        for command in commands:
            _run_one(command, cwd, {**os.environ, **env}, fd, log, cancel, agent, on_start)
    finally:
        os.close(fd)


def _run_one(
    command: Command,
    cwd: Path,
    env: dict[str, str],
    fd: int,
    log: LogFile,
    cancel: threading.Event | None,
    agent: str,
    on_start: Callable[[ProcessGroup], None] | None,
) -> None:
    shown = _short(describe(command))
    _write(fd, f"$ {describe(command)}\n")
    begin = os.lseek(fd, 0, os.SEEK_END)
    started = time.monotonic()
    token = secrets.token_hex(16)
    argv = argv_for(command)
    missing = _missing(argv[0], cwd, env)
    if missing:
        # the gate's shell would only say it in the log
        raise UserError(f"setup command for agent {agent} could not start: {shown}: {missing}")
    try:
        started_gated = start_gated(argv, cwd, env, token, fd, shown)
    except OSError as e:
        raise UserError(f"setup command for agent {agent} could not start: {shown}: {e.strerror or e}") from None
    proc, group = started_gated.proc, started_gated.group
    try:
        started_gated.open_gate(on_start)
        code = _wait(proc, cancel, shown)
    except BaseException:
        # interrupted (cancel, Ctrl-C in this thread), or its record could not
        # be saved: stop the command and everything it started
        _stop(group, proc)
        raise
    end = os.lseek(fd, 0, os.SEEK_END)
    _write(fd, f"# exit {code} after {time.monotonic() - started:.2f}s\n")
    if code != 0:
        # what it left running in the background must not write on into an
        # environment that is about to be rolled back
        _stop(group, proc)
        why = f"killed by signal {-code}" if code < 0 else f"exit {code}"
        raise UserError(
            f"setup command failed for agent {agent} ({why}): {shown}\n  last output:\n{tail(fd, begin, end)}",
            hint=f"full log: {log.path}; fix the command in hybridiso.yaml and run `hybridiso up` again",
        )


def _missing(program: str, cwd: Path, env: Mapping[str, str]) -> str:
    """Why ``program`` cannot be run ('' when it can): a name is looked up
    on the environment's PATH, a path relative to the environment."""
    if "/" not in program:
        return "" if shutil.which(program, path=env.get("PATH", os.defpath)) else f"{program}: not found on PATH"
    path = Path(program) if os.path.isabs(program) else cwd / program
    if not path.is_file():
        return f"{program}: No such file"
    return "" if os.access(path, os.X_OK) else f"{program}: Permission denied"


def _wait(proc: subprocess.Popen[bytes], cancel: threading.Event | None, shown: str) -> int:
    while True:
        try:
            return proc.wait(timeout=0.1)
        except subprocess.TimeoutExpired:
            if cancel is not None and cancel.is_set():
                raise SetupInterrupted(shown) from None


def _stop(group: ProcessGroup, proc: subprocess.Popen[bytes]) -> None:
    process_groups.stop([group])
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)  # reap the leader


def _write(fd: int, text: str) -> None:
    data = text.encode("utf-8", errors="replace")
    while data:
        data = data[os.write(fd, data):]


def _short(text: str, width: int = 200) -> str:
    return text if len(text) <= width else text[:width] + f" [... {plural(len(text) - width, 'more character')}]"


def open_log(log: LogFile) -> int:
    """The log opened for appending (and reading its tail), 0600; one over
    ``ROTATE_AT`` is moved to ``<name>.1`` first.  A symlink, FIFO or device
    there is refused (docs/faults.md row 31)."""
    flags = os.O_RDWR | os.O_APPEND | os.O_CREAT
    fd = safe_files.open_regular(log.anchor, log.rel, flags)
    if os.fstat(fd).st_size > ROTATE_AT:
        os.close(fd)
        with safe_files.open_dir(log.anchor, log.rel.parent) as dfd, contextlib.suppress(OSError):
            os.rename(log.rel.name, log.rel.name + ".1", src_dir_fd=dfd, dst_dir_fd=dfd)
        fd = safe_files.open_regular(log.anchor, log.rel, flags)
    os.fchmod(fd, 0o600)  # a log made by an older version may be 0644; output can hold secrets
    return fd


def tail(fd: int, begin: int, end: int) -> str:
    """The last lines of the output between offsets ``begin`` and ``end``,
    indented, each cut to ``LINE_WIDTH`` characters, ``TAIL_CHARS`` in all,
    read from at most the last ``TAIL_WINDOW`` bytes: memory stays bounded
    whatever the command printed.  Control characters are shown escaped (a
    command's output must not drive the user's terminal)."""
    start = max(begin, end - TAIL_WINDOW)
    data = os.pread(fd, end - start, start) if end > start else b""
    lines = data.decode("utf-8", errors="replace").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not lines:
        return "    (no output)"
    shown: list[str] = []
    total = 0
    for i in range(len(lines) - 1, -1, -1):
        line = _printable(lines[i])
        if len(line) > LINE_WIDTH:
            line = line[:LINE_WIDTH] + f" [... {plural(len(line) - LINE_WIDTH, 'more character')}]"
        if i == 0 and start > begin:
            line = "[...] " + line  # the window began inside this line
        if len(shown) == TAIL_LINES or (shown and total + len(line) > TAIL_CHARS):
            break
        shown.append(line)
        total += len(line) + 1
    earlier = start > begin or len(shown) < len(lines)
    body = (["[... earlier output is in the log]"] if earlier else []) + shown[::-1]
    return "\n".join("    " + line for line in body)


def _printable(line: str) -> str:
    return "".join(c if c.isprintable() or c == "\t" else (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}") for c in line)
