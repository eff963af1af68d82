"""Files hybridiso reads and appends to under the state dir and the git dir,
replaced by a FIFO or a symlink (docs/faults.md row 31): never followed,
never hung on.  Real CLI, real repositories."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hybridiso import git, safe_files
from hybridiso.strategies import container
from tests.support.cli import hybridiso, write_manifest
from tests.support.gitrepo import make_repo


def _measured(text: str) -> str:
    return json.dumps({"measured_at": "2099-01-01T00:00:00+00:00", "strategies": [{"strategy": "worktree", "disk_bytes_per_env": 1, "startup_seconds": 0.0}]})


def test_plan_does_not_hang_on_a_fifo_where_the_last_measurement_is(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r")
    write_manifest(repo, "agents:\n  - name: a\n")
    latest = repo / ".git" / "hybridiso" / "reports" / "latest.json"
    latest.parent.mkdir(parents=True)
    os.mkfifo(latest)
    r = hybridiso(repo, "plan", timeout=30)
    assert "the last measurement is not read" in r.stderr and "a FIFO" in r.stderr, r.stderr
    assert "estimated" in r.stdout + r.stderr


def test_plan_does_not_believe_figures_a_symlink_points_at(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r")
    write_manifest(repo, "agents:\n  - name: a\n")
    foreign = tmp_path / "foreign.json"
    foreign.write_text(_measured(""))
    latest = repo / ".git" / "hybridiso" / "reports" / "latest.json"
    latest.parent.mkdir(parents=True)
    latest.symlink_to(foreign)
    r = hybridiso(repo, "plan", timeout=30)
    assert "a symlink" in r.stderr, r.stderr
    assert "1 B" not in r.stdout, r.stdout  # the foreign file's figure
    # and the same file as a regular file is believed: the test can tell
    latest.unlink()
    latest.write_text(_measured(""))
    believed = hybridiso(repo, "plan", timeout=30)
    assert "1 B" in believed.stdout, believed.stdout


def test_the_exclude_of_a_git_dir_is_never_written_through_a_symlink(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r")
    victim = tmp_path / "victim.txt"
    victim.write_text("mine\n")
    exclude = repo / ".git" / "info" / "exclude"
    exclude.unlink()
    exclude.symlink_to(victim)
    write_manifest(repo, "agents:\n  - name: a\n")
    r = hybridiso(repo, "up", ok=False)
    assert f"{exclude} is a symlink" in r.stderr, r.stderr
    assert victim.read_text() == "mine\n"
    exclude.unlink()
    hybridiso(repo, "up")
    assert exclude.read_text() == "/.hybridiso.env\n"  # each environment's env file stays out of git status


def test_a_cache_file_that_is_a_symlink_is_neither_read_nor_written(tmp_path: Path) -> None:
    anchor = tmp_path / "git"
    (anchor / "hybridiso").mkdir(parents=True)
    victim = tmp_path / "victim.txt"
    victim.write_text("sha256:abc\n")
    cache = anchor / "hybridiso" / "images-without-git"
    cache.symlink_to(victim)
    assert container._read_lines(anchor, cache) == set()
    container._remember_line(anchor, cache, "sha256:def")
    assert victim.read_text() == "sha256:abc\n"
    cache.unlink()
    os.mkfifo(cache)
    assert container._read_lines(anchor, cache) == set()  # returns: a FIFO is not opened for a read that waits
    container._remember_line(anchor, cache, "sha256:def")
    cache.unlink()
    container._remember_line(anchor, cache, "sha256:def")
    assert container._read_lines(anchor, cache) == {"sha256:def"}


def test_add_exclude_appends_once_and_keeps_what_was_there(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r")
    exclude = repo / ".git" / "info" / "exclude"
    exclude.write_text("mine")  # no final newline
    git.add_exclude(repo / ".git", "/agents/")
    git.add_exclude(repo / ".git", "/agents/")
    assert exclude.read_text() == "mine\n/agents/\n"
    with pytest.raises(safe_files.UnsafePath):
        exclude.unlink()
        os.mkfifo(exclude)
        git.add_exclude(repo / ".git", "/agents/")
