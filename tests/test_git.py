"""git.py against real git: lock contention is waited out, a bounded number
of times (docs/faults.md row 11).  In-process, so git meets the lock at once:
through the CLI, Python's start-up could outlast the lock and the retry
would never be exercised."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from hybridiso import git
from hybridiso.process import CommandError
from tests.support.gitrepo import commit_file, git as sh_git, make_repo

HELD = 0.3  # seconds another git "holds" the lock


def _release_later(lock: Path, after: float = HELD) -> threading.Thread:
    t = threading.Thread(target=lambda: (time.sleep(after), lock.unlink()))
    t.start()
    return t


def test_a_ref_lock_held_for_a_moment_is_waited_out(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r")
    lock = repo / ".git" / "refs" / "heads" / "x.lock"
    lock.write_text("")
    releaser = _release_later(lock)
    started = time.monotonic()
    git.run(repo, "branch", "x")
    took = time.monotonic() - started
    releaser.join()
    assert took >= HELD  # git met the lock and failed first: the command was run again
    assert sh_git(repo, "rev-parse", "x") == sh_git(repo, "rev-parse", "HEAD")


def test_an_index_lock_held_for_a_moment_does_not_stop_a_rebase(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r")
    sh_git(repo, "switch", "-q", "-c", "topic")
    commit_file(repo, "t.txt", "topic\n")
    sh_git(repo, "switch", "-q", "main")
    base = commit_file(repo, "m.txt", "main\n")
    sh_git(repo, "switch", "-q", "topic")
    lock = repo / ".git" / "index.lock"
    lock.write_text("")
    releaser = _release_later(lock)
    started = time.monotonic()
    result = git.rebase(repo, "main")
    took = time.monotonic() - started
    releaser.join()
    assert result.ok, result
    assert took >= HELD
    assert sh_git(repo, "rev-parse", "HEAD~1") == base


def test_a_lock_that_stays_fails_after_bounded_retries_naming_it(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r")
    lock = repo / ".git" / "refs" / "heads" / "x.lock"
    lock.write_text("")  # fresh: not stale, so it is waited for, a bounded while
    started = time.monotonic()
    with pytest.raises(CommandError) as e:
        git.run(repo, "branch", "x")
    took = time.monotonic() - started
    assert 1.0 <= took < 15.0  # it waited, and gave up
    assert str(lock) in e.value.result.stderr
    assert lock.exists() and sh_git(repo, "branch", "--list", "x") == ""
