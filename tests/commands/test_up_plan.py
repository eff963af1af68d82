"""`up` plans a job for each agent, with its reason, before it acts."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.support.cli import hybridiso, write_manifest
from tests.support.gitrepo import make_repo


def _why(repo: Path) -> dict[str, tuple[str, str]]:
    rows = json.loads(hybridiso(repo, "up", "--json").stdout)
    return {r["name"]: (r["action"], r["why"]) for r in rows}


def test_each_agents_job_says_why(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r")
    write_manifest(repo, "agents:\n  - name: a\n  - {name: b, isolation: clone}\n")
    assert _why(repo) == {"a": ("Created", "no environment yet"), "b": ("Created", "no environment yet")}
    shutil.rmtree(tmp_path / "r.agents" / "a")
    rows = _why(repo)
    assert rows["a"] == ("Created", "its directory was deleted")
    assert rows["b"] == ("Up to date", "it exists: env file, setup if its inputs changed, what should run")
