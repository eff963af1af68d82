"""One user-facing error type, and the exit codes every command uses.

A user mistake (bad manifest, dirty env, Docker down) is a ``UserError``: one
message on stderr, exit 1, no traceback.  A bug exits 3 and leaves the
traceback in a log file so the message on screen stays short.
"""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import traceback
from collections.abc import Iterator, Sequence

from hybridiso.output import printable

EXIT_OK = 0
EXIT_USER = 1
EXIT_USAGE = 2
EXIT_BUG = 3
EXIT_INTERRUPTED = 130


class UserError(Exception):
    """Something the user can fix; ``hint`` says what to do next."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  next step: {self.hint}"
        return self.message


def agent_line(name: str, problem: str | UserError) -> str:
    """One agent's part of a message about several, the one format every
    command uses: ``  NAME: PROBLEM``, its further lines (a next step)
    indented under it.  A problem that already starts by naming the agent
    (``agent NAME has work ...``) is shown as it is."""
    text = str(problem)
    lead = "  " if text.startswith(f"agent {name}") else f"  {name}: "
    return lead + text.replace("\n", "\n  ")


class AgentsFailed(UserError):
    """Some of the agents a command worked on failed: how many of how many,
    then each with why (``agent_line``)."""

    def __init__(self, what: str, failures: Sequence[tuple[str, str | UserError]], total: int, hint: str | None = None) -> None:
        agents = f"{total} agent" + ("" if total == 1 else "s")
        lines = [agent_line(name, problem) for name, problem in failures]
        super().__init__(f"{len(failures)} of {agents} {what}:\n" + "\n".join(lines), hint=hint)
        self.failures = list(failures)


class BugsReported(Exception):
    """A command went on past a bug in one agent's job (the others' must not
    be lost) and said it, crash log included: it exits 3 all the same."""


class DockerUnavailable(UserError):
    """The Docker engine cannot be reached (docs/faults.md row 12)."""


VERSION_TIMEOUT = 2.0  # seconds each version question may take: a crash report must not hang


def _program_version(argv: list[str]) -> str:
    """What ``argv`` prints, one line; a program that is missing, slow or
    failing says so (Docker's server may be unreachable)."""
    import subprocess

    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=VERSION_TIMEOUT, stdin=subprocess.DEVNULL, check=False)
    except FileNotFoundError:
        return "not installed"
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"not known ({type(e).__name__})"
    said = (proc.stdout.strip() or proc.stderr.strip()).splitlines()
    first = said[0] if said else ""
    return first if proc.returncode == 0 else f"not known (exit {proc.returncode}: {first})"


def versions() -> dict[str, str]:
    """What a bug report needs to know about this machine."""
    import platform

    from hybridiso import __version__

    return {
        "hybridiso": __version__,
        "python": f"{platform.python_version()} ({sys.executable})",
        "git": _program_version(["git", "--version"]),
        "docker": _program_version(["docker", "version", "--format", "client {{.Client.Version}}, server {{.Server.Version}}"]),
        "platform": platform.platform(),
    }


def write_crash_log(trace: str) -> str:
    """The traceback and the versions, in a new file only the user can read
    (a traceback may show paths and values): returns its path."""
    fd, path = tempfile.mkstemp(prefix="hybridiso-crash-", suffix=".log")  # mode 0600, never an existing file
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(f"hybridiso crashed: {' '.join(sys.argv)}\n")
        for name, version in versions().items():
            f.write(f"{name}: {version}\n")
        f.write("\n" + trace)
    return path


def job_problem(exc: BaseException) -> tuple[str, bool]:
    """What to say about an exception one agent's job raised while the
    others go on, and whether it is a bug: a user error's message, an
    OSError as Python says it; anything else is a bug, whose traceback goes
    to a crash log that the message names."""
    if isinstance(exc, UserError):
        return str(exc), False
    if isinstance(exc, OSError):
        return f"{type(exc).__name__}: {exc}", False
    where = _crash_log_said("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    return f"internal error (this is a bug): {type(exc).__name__}: {exc}; {where}", True


def _crash_log_said(trace: str) -> str:
    try:
        return f"traceback written to {write_crash_log(trace)}"
    except OSError as e:  # a full disk, say: the bug is still said
        return f"its traceback could not be written ({e})"


@contextlib.contextmanager
def error_handler() -> Iterator[None]:
    """Turn exceptions into the exit codes documented in docs/cli.md."""
    try:
        yield
    except UserError as e:
        print(printable(f"hybridiso: error: {e}"), file=sys.stderr)
        raise SystemExit(EXIT_USER) from None
    except BugsReported as e:
        print(printable(f"hybridiso: error: {e}"), file=sys.stderr)
        raise SystemExit(EXIT_BUG) from None
    except KeyboardInterrupt:
        print("hybridiso: interrupted", file=sys.stderr)
        raise SystemExit(EXIT_INTERRUPTED) from None
    except BrokenPipeError:
        raise SystemExit(EXIT_OK) from None
    except Exception:  # noqa: BLE001 - a bug: keep the screen short, keep the details
        print(f"hybridiso: internal error (this is a bug); {_crash_log_said(traceback.format_exc())}", file=sys.stderr)
        raise SystemExit(EXIT_BUG) from None


DISK_FULL_TEXTS = ("No space left on device", "Disk quota exceeded", "Out of diskspace")  # the last: git's


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC/EDQUOT, raised by Python or reported by a command (git, docker)."""
    import errno

    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    # a command's message holds its last line only; what it said before
    # (git: "No space left on device", then "fatal: could not ...") is in
    # its details (process.CommandError, which imports this module)
    said = f"{exc}\n{getattr(exc, 'details', '')}"
    return any(text in said for text in DISK_FULL_TEXTS)


class Cancelled(Exception):
    """An environment's creation stopped because ``up`` was interrupted."""
