"""Repositories with agents' branches ready to land (real git, temp dirs)."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from tests.support.cli import hybridiso, write_manifest
from tests.support.gitrepo import git, make_repo


def train_repo(tmp_path: Path, land: str, agents: list[str], agent_extra: dict[str, str] | None = None) -> Path:
    """A repository on main with a committed manifest declaring ``agents``
    and the ``land:`` section ``land`` (YAML, indented two spaces)."""
    repo = make_repo(tmp_path / "repo", {"README.md": "hello\n", "app.txt": "one\ntwo\nthree\n"})
    lines = ["version: 1", "land:", land.rstrip("\n"), "agents:"]
    for a in agents:
        lines.append(f"  - name: {a}")
        if agent_extra and a in agent_extra:
            lines.append(agent_extra[a].rstrip("\n"))
    write_manifest(repo, "\n".join(lines) + "\n")
    git(repo, "add", "hybridiso.yaml")
    git(repo, "commit", "-q", "-m", "manifest")
    return repo


def agent_commit(repo: Path, agent: str, files: dict[str, str], message: str | None = None, *, start: str = "main") -> str:
    """One commit on hybridiso/<agent> (made from ``start`` when new),
    without touching the main worktree (a temporary index)."""
    branch = f"hybridiso/{agent}"
    parent = git(repo, "rev-parse", "--verify", "-q", f"refs/heads/{branch}", check=False) or git(repo, "rev-parse", start)
    index = repo / ".git" / f"tmp-index-{agent}"
    env = {"GIT_INDEX_FILE": str(index)}
    run = lambda *a, inp=None: subprocess.run(["git", *a], cwd=repo, env={**_env(), **env}, input=inp, capture_output=True, text=True, check=True).stdout.strip()  # noqa: E731
    run("read-tree", parent)
    for name, text in files.items():
        blob = run("hash-object", "-w", "--stdin", inp=text)
        run("update-index", "--add", "--cacheinfo", f"100644,{blob},{name}")
    tree = run("write-tree")
    index.unlink()
    commit = run("commit-tree", tree, "-p", parent, "-m", message or f"{agent}: {', '.join(files)}")
    git(repo, "update-ref", f"refs/heads/{branch}", commit)
    return commit


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)


def land_json(repo: Path, *args: str, ok: bool | None = None, timeout: float = 180) -> tuple[dict[str, Any], subprocess.CompletedProcess[str]]:
    proc = hybridiso(repo, "land", "--json", *args, ok=ok, timeout=timeout)
    return json.loads(proc.stdout), proc


def by_agent(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["agent"]: c for c in data["candidates"]}


def first_parents(repo: Path, ref: str = "main") -> list[str]:
    return git(repo, "log", "--first-parent", "--format=%s", ref).splitlines()


def scratch_entries(repo: Path) -> list[str]:
    d = repo / ".git" / "hybridiso" / "land" / "scratch"
    return sorted(p.name for p in d.iterdir()) if d.is_dir() else []
