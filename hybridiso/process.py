"""Every external command goes through here, as an argv list (never a shell string).

Errors show the command, its exit code, stdout and stderr, so a failure deep in
``git`` or ``docker compose`` is diagnosable from one message.
"""
from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from hybridiso.errors import DISK_FULL_TEXTS, UserError

# GIT_* variables leaked from a hook or a parent git (GIT_DIR, GIT_INDEX_FILE...)
# would point our git calls at the wrong repository.  Keep only the ones that
# configure transport or config, as pre-commit's no_git_env does.
_GIT_ENV_KEEP = {
    "GIT_EXEC_PATH",
    "GIT_SSH",
    "GIT_SSH_COMMAND",
    "GIT_SSL_CAINFO",
    "GIT_SSL_NO_VERIFY",
    "GIT_CONFIG_COUNT",
    "GIT_HTTP_PROXY_AUTHMETHOD",
    "GIT_ALLOW_PROTOCOL",
    "GIT_ASKPASS",
    "GIT_AUTHOR_NAME",
    "GIT_AUTHOR_EMAIL",
    "GIT_COMMITTER_NAME",
    "GIT_COMMITTER_EMAIL",
    "GIT_AUTHOR_DATE",
    "GIT_COMMITTER_DATE",
    "GIT_TERMINAL_PROMPT",
}


def no_git_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    return {
        k: v
        for k, v in env.items()
        if not k.startswith("GIT_")
        or k in _GIT_ENV_KEEP
        or k.startswith(("GIT_CONFIG_KEY_", "GIT_CONFIG_VALUE_"))
    }


@dataclass(frozen=True)
class Result:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


class CommandError(UserError):
    """An external command (git, docker compose, ...) failed.

    The user can act on it: the message names the command, where it ran and
    the last thing it said on stderr, and the next step is to run it there
    and fix what it says.  ``details`` keeps all of its output."""

    def __init__(self, result: Result, cwd: str | None) -> None:
        self.result = result
        self.cwd = cwd
        where = f" in {_printable(cwd)}" if cwd else ""
        said = self.last_words
        super().__init__(
            f"`{_printable(shlex.join(result.argv))}` failed (exit {result.returncode}){where}" + (f": {said}" if said else ""),
            hint=_next_step(result, cwd),
        )

    @property
    def last_words(self) -> str:
        """The last line of its stderr that is not a hint (git's
        ``fatal:``/``error:`` line), or ''."""
        lines = [line.strip() for line in self.result.stderr.splitlines() if line.strip()]
        said = [line for line in lines if not line.startswith("hint:")]
        return _printable((said or lines or [""])[-1])

    @property
    def details(self) -> str:
        """The command, its exit code, its directory, all its stdout and stderr."""
        r = self.result
        lines = [f"command failed (exit {r.returncode}): {shlex.join(r.argv)}"]
        if self.cwd:
            lines.append(f"  in: {self.cwd}")
        if r.stdout.strip():
            lines.append("  stdout: " + r.stdout.strip().replace("\n", "\n          "))
        if r.stderr.strip():
            lines.append("  stderr: " + r.stderr.strip().replace("\n", "\n          "))
        return "\n".join(_printable(line) for line in "\n".join(lines).split("\n"))


def _printable(text: str) -> str:
    """One line of a command's output for the terminal (output.printable,
    with line breaks shown too: the message holds one line)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _next_step(result: Result, cwd: str | None) -> str:
    text = result.stderr
    if "Permission denied" in text or "Read-only file system" in text or "Operation not permitted" in text:
        return "make the files it names writable by you (owned by root? mounted read-only? immutable?), then run hybridiso again"
    if any(t in text for t in DISK_FULL_TEXTS):
        return "free some space on that file system, then run hybridiso again"
    shown = _printable(shlex.join(result.argv))
    here = f"cd {_printable(shlex.quote(cwd))} && " if cwd else ""
    return f"run `{here}{shown}` to see all it says, fix that, then run hybridiso again"


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    input: str | None = None,
    timeout: float | None = None,
) -> Result:
    args = tuple(os.fspath(a) for a in argv)
    proc = subprocess.run(  # noqa: PLW1510 - the caller decides, below
        args,
        cwd=cwd,
        env=dict(env) if env is not None else None,
        input=input,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=timeout,
        stdin=None if input is not None else subprocess.DEVNULL,
    )
    result = Result(args, proc.returncode, proc.stdout, proc.stderr)
    if check and proc.returncode != 0:
        raise CommandError(result, os.fspath(cwd) if cwd is not None else None)
    return result
