"""Which git failures ``git.run`` waits out (docs/faults.md row 11): a lock
another git holds, and nothing else.  A compare-and-swap that lost, a ref
that another ref is in the way of, a lock that cannot be made: trying again
changes nothing, so the error comes at once (before, each cost eight
retries, about 4.5 s).  Real git in a temp repository; the spy only counts
the calls that go through to it."""
from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import pytest

from hybridiso import git
from hybridiso.process import CommandError, Result
from tests.support.gitrepo import make_repo


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, ...]]:
    seen: list[tuple[str, ...]] = []
    real = git._execute

    def counting(cwd: Path | str, args: Sequence[str], env: dict[str, str] | None = None, input: str | None = None) -> Result:
        seen.append(tuple(args))
        return real(cwd, args, env, input)

    monkeypatch.setattr(git, "_execute", counting)
    return seen


def test_a_compare_and_swap_that_lost_fails_at_once(tmp_path: Path, calls: list[tuple[str, ...]]) -> None:
    repo = make_repo(tmp_path / "r")
    head = git.out(repo, "rev-parse", "HEAD")
    calls.clear()
    with pytest.raises(CommandError) as e:
        git.run(repo, "update-ref", "refs/heads/main", head, "0" * 39 + "1")
    assert "but expected" in e.value.result.stderr
    assert len(calls) == 1, calls


def test_a_ref_in_the_way_fails_at_once(tmp_path: Path, calls: list[tuple[str, ...]]) -> None:
    repo = make_repo(tmp_path / "r")
    git.run(repo, "branch", "feat")
    calls.clear()
    with pytest.raises(CommandError) as e:
        git.run(repo, "branch", "feat/x")
    assert "'refs/heads/feat' exists" in e.value.result.stderr
    assert len(calls) == 1, calls


def test_a_lock_another_git_holds_is_waited_out(tmp_path: Path, calls: list[tuple[str, ...]]) -> None:
    repo = make_repo(tmp_path / "r")
    lock = repo / ".git" / "refs" / "heads" / "x.lock"
    lock.write_text("")
    threading.Timer(0.3, lock.unlink).start()
    calls.clear()
    git.run(repo, "update-ref", "refs/heads/x", "HEAD")
    assert len(calls) > 1, "the first try met the lock, so it must have been retried"
    assert git.out(repo, "rev-parse", "refs/heads/x") == git.out(repo, "rev-parse", "HEAD")
