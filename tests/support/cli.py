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


def hybridiso(
    cwd: Path, *args: str, ok: bool | None = True, timeout: float = 180, bug_ok: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run ``hybridiso ARGS`` in ``cwd``; ``ok=True`` asserts exit 0, ``False``
    asserts a failure that is not a crash.  Exit 3 (a bug) fails the test with
    the crash log's traceback unless ``bug_ok``, whatever ``ok`` says."""
    proc = subprocess.run(
        [sys.executable, "-m", "hybridiso", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    check_no_crash(proc, args, bug_ok=bug_ok)
    if ok is True:
        assert proc.returncode == 0, f"hybridiso {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    elif ok is False:
        assert proc.returncode != 0, f"hybridiso {' '.join(args)} unexpectedly succeeded:\n{proc.stdout}\n{proc.stderr}"
    return proc


def check_no_crash(proc: subprocess.CompletedProcess[str], args: tuple[str, ...] | list[str] = (), *, bug_ok: bool = False) -> None:
    """A run that exited 3 is a bug in hybridiso: show its traceback."""
    if bug_ok or proc.returncode != EXIT_BUG:
        return
    m = _CRASH_LOG.search(proc.stderr or "")
    trace = ""
    if m:
        try:
            trace = Path(m.group(1)).read_text(encoding="utf-8", errors="replace")
        except OSError:
            trace = "(crash log unreadable)"
    raise AssertionError(f"hybridiso {' '.join(args)} crashed (exit 3):\n{proc.stderr}\n{trace}")


def as_plain_user(argv: list[str]) -> list[str]:
    """Root ignores file permissions; drop the capabilities that let it, so a
    permission fault is real (a normal user needs nothing)."""
    if os.geteuid() != 0:
        return argv
    if not shutil.which("setpriv"):
        import pytest

        pytest.skip("running as root without setpriv: cannot make permissions bite")
    caps = "-dac_override,-dac_read_search,-fowner,-chown"
    return ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}", *argv]


def hybridiso_as_plain_user(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        as_plain_user([sys.executable, "-m", "hybridiso", *args]),
        cwd=cwd, capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL,
    )


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
