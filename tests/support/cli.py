"""Drive the real CLI in a subprocess, as a user would."""
from __future__ import annotations

import json
import re
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any


EXIT_BUG = 3
_CRASH_LOG = re.compile(r"traceback written to (\S+)")
# a traceback that escaped hybridiso's error handler is printed on stderr (and
# exits 1, like a user error): it is a bug only when its frames are hybridiso's
_PACKAGE = str(Path(__file__).resolve().parent.parent.parent / "hybridiso") + os.sep
_ESCAPED = re.compile(r"Traceback \(most recent call last\):\n(?:[ \t].*\n)*?\s+File \"" + re.escape(_PACKAGE))


REPORTED: set[Path] = set()  # crash logs a failed call already showed


def crash_logs() -> set[Path]:
    """The crash logs hybridiso has written for this test: each test runs
    with a TMPDIR of its own (tests/conftest.py), where errors.py puts them;
    a crash log under the test's HOME counts too, wherever it is kept there."""
    found: set[Path] = set()
    tmp = os.environ.get("TMPDIR")
    if tmp and os.path.isdir(tmp):
        found.update(Path(tmp).glob("hybridiso-crash-*"))
    home = os.environ.get("HOME")
    if home and os.path.isdir(home):
        found.update(p for p in Path(home).rglob("*crash*") if p.is_file() and (p.name.startswith("hybridiso") or p.suffix == ".log"))
    return found


def hybridiso(
    cwd: Path, *args: str, ok: bool | None = True, timeout: float = 180, bug_ok: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run ``hybridiso ARGS`` in ``cwd``; ``ok=True`` asserts exit 0, ``False``
    asserts a failure that is not a crash (not exit 3, not a signal).  A crash
    fails the test with its traceback unless ``bug_ok``, whatever ``ok``
    says: exit 3, a crash log written during the call, or a traceback of
    hybridiso's own code on stderr."""
    proc = checked_run([sys.executable, "-m", "hybridiso", *args], cwd, args, timeout=timeout, bug_ok=bug_ok)
    if ok is True:
        assert proc.returncode == 0, f"hybridiso {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    elif ok is False:
        assert proc.returncode not in (0, EXIT_BUG) and proc.returncode > 0, (
            f"hybridiso {' '.join(args)} did not fail with an error ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def checked_run(
    argv: list[str], cwd: Path, args: tuple[str, ...] | list[str], *, timeout: float = 180, bug_ok: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run a hybridiso command line; fail on a crash (``check_no_crash``) or a
    crash log written meanwhile, unless ``bug_ok``."""
    before = crash_logs()
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    new_logs = sorted(crash_logs() - before)
    if bug_ok:
        for log in new_logs:  # accepted: the end-of-test check must not see it
            log.unlink()
    elif new_logs:
        REPORTED.update(new_logs)  # once is enough: the end-of-test check skips these
        raise AssertionError(
            f"hybridiso {' '.join(args)} wrote a crash log (exit {proc.returncode}):\n{proc.stderr}\n"
            + "\n".join(f"--- {log}\n{_read(log)}" for log in new_logs)
        )
    check_no_crash(proc, args, bug_ok=bug_ok)
    return proc


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(crash log unreadable)"


def check_no_crash(proc: subprocess.CompletedProcess[str], args: tuple[str, ...] | list[str] = (), *, bug_ok: bool = False) -> None:
    """A run that exited 3, or printed a traceback of hybridiso's code, is a
    bug in hybridiso: fail with the traceback.  (For runs not made with
    ``hybridiso()``; the end of every test also fails on any crash log.)"""
    if not bug_ok:
        no_crash(proc.returncode, proc.stderr, args)


def no_crash(returncode: int | None, stderr: str | bytes | None, args: tuple[str, ...] | list[str] = ()) -> None:
    """``check_no_crash`` for a run started with Popen: its exit code and stderr."""
    text = stderr.decode(errors="replace") if isinstance(stderr, bytes) else (stderr or "")
    if returncode == EXIT_BUG:
        m = _CRASH_LOG.search(text)
        trace = _read(Path(m.group(1))) if m else ""
        raise AssertionError(f"hybridiso {' '.join(args)} crashed (exit 3):\n{text}\n{trace}")
    if _ESCAPED.search(text):
        raise AssertionError(f"hybridiso {' '.join(args)} printed a traceback (exit {returncode}):\n{text}")


def as_plain_user(argv: list[str]) -> list[str]:
    """Root ignores file permissions; drop the capabilities that let it, so a
    permission fault is real (a normal user needs nothing)."""
    if os.geteuid() != 0:
        return argv
    if not shutil.which("setpriv"):
        from tests.support import needs

        needs.cannot_run("running as root without setpriv: cannot make permissions bite")
    caps = "-dac_override,-dac_read_search,-fowner,-chown"
    return ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}", *argv]


def hybridiso_as_plain_user(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return checked_run(as_plain_user([sys.executable, "-m", "hybridiso", *args]), cwd, args)


def status_json(cwd: Path) -> dict[str, dict[str, Any]]:
    rows = json.loads(hybridiso(cwd, "status", "--json").stdout)
    return {r["agent"]: r for r in rows}


def write_manifest(repo: Path, text: str) -> Path:
    path = repo / "hybridiso.yaml"
    path.write_text(text)
    return path


def state(repo: Path) -> dict[str, Any]:
    path = repo / ".git" / "hybridiso" / "state.json"
    return json.loads(path.read_text()) if path.exists() else {}
