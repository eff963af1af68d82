"""Drive the real CLI in a subprocess, as a user would."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any


def hybridiso(cwd: Path, *args: str, ok: bool | None = True, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """Run ``hybridiso ARGS`` in ``cwd``; ``ok=True`` asserts exit 0, ``False`` asserts non-zero."""
    proc = subprocess.run(
        [sys.executable, "-m", "hybridiso", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    if ok is True:
        assert proc.returncode == 0, f"hybridiso {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    elif ok is False:
        assert proc.returncode != 0, f"hybridiso {' '.join(args)} unexpectedly succeeded:\n{proc.stdout}\n{proc.stderr}"
    return proc


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
