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
from collections.abc import Iterator

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


class DockerUnavailable(UserError):
    """The Docker engine cannot be reached (docs/faults.md row 12)."""


def _bug_log_path() -> str:
    fd, path = tempfile.mkstemp(prefix="hybridiso-crash-", suffix=".log")
    os.close(fd)
    return path


@contextlib.contextmanager
def error_handler() -> Iterator[None]:
    """Turn exceptions into the exit codes documented in docs/cli.md."""
    try:
        yield
    except UserError as e:
        print(f"hybridiso: error: {e}", file=sys.stderr)
        raise SystemExit(EXIT_USER) from None
    except KeyboardInterrupt:
        print("hybridiso: interrupted", file=sys.stderr)
        raise SystemExit(EXIT_INTERRUPTED) from None
    except BrokenPipeError:
        raise SystemExit(EXIT_OK) from None
    except Exception:  # noqa: BLE001 - a bug: keep the screen short, keep the details
        path = _bug_log_path()
        with open(path, "w", encoding="utf-8") as f:
            f.write(traceback.format_exc())
        print(
            f"hybridiso: internal error (this is a bug); traceback written to {path}",
            file=sys.stderr,
        )
        raise SystemExit(EXIT_BUG) from None


DISK_FULL_TEXTS = ("No space left on device", "Disk quota exceeded")


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC/EDQUOT, raised by Python or reported by a command (git, docker)."""
    import errno

    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return any(text in str(exc) for text in DISK_FULL_TEXTS)


class Cancelled(Exception):
    """An environment's creation stopped because ``up`` was interrupted."""
