"""Real git repositories in temp dirs for tests (no mocks)."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path


def git(cwd: Path | str, *args: str, check: bool = True) -> str:
    proc = subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, check=False
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"git {' '.join(args)} failed in {cwd}: {proc.stdout}{proc.stderr}"
        )
    return proc.stdout.strip()


def make_repo(path: Path, files: dict[str, str] | None = None, *, branch: str = "main") -> Path:
    """Create a repository with one commit holding ``files``."""
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", branch)
    for name, text in (files or {"README.md": "hello\n"}).items():
        f = path / name
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "initial")
    return path


def commit_file(repo: Path, name: str, text: str, message: str | None = None) -> str:
    f = repo / name
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text(text)
    git(repo, "add", "--", name)
    git(repo, "commit", "-q", "-m", message or f"change {name}")
    return git(repo, "rev-parse", "HEAD")


def many_files_repo(path: Path, count: int) -> Path:
    """A repository with ``count`` small files spread over directories."""
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", "main")
    for i in range(count):
        d = path / f"pkg{i % 50:02d}"
        d.mkdir(exist_ok=True)
        (d / f"mod{i:05d}.py").write_text(f"VALUE = {i}\n" + "# filler line\n" * (i % 20))
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "many files")
    return path


def env_without_git_vars() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("GIT_DIR")}


def git_ok(cwd: Path | str, *args: str) -> bool:
    """Did ``git ARGS`` succeed?  For the commands that answer with their exit
    code and print nothing (``merge-base --is-ancestor``, ``cat-file -e``,
    ``check-ignore -q``): their output says nothing either way."""
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True).returncode == 0
