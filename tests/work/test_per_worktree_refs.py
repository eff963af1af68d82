"""Refs git keeps for one linked worktree alone (``refs/worktree/*``,
``refs/bisect/*``, a rebase's ``refs/rewritten/*``) live in its admin dir
and go with it: a commit only they hold is work (docs/faults.md row 23).
Found in a hostile pass: `down` lost such a commit, exit 0, nothing said."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.cli import hybridiso, write_manifest
from tests.support.gitrepo import git, git_ok, make_repo


@pytest.mark.parametrize("ref", ["refs/worktree/keep", "refs/bisect/bad"])
def test_a_commit_only_a_per_worktree_ref_holds_is_work(tmp_path: Path, ref: str) -> None:
    repo = make_repo(tmp_path / "repo")
    write_manifest(repo, "agents:\n  - name: w1\n")
    hybridiso(repo, "up")
    env = tmp_path / "repo.agents" / "w1"
    kept = git(env, "commit-tree", "-m", "kept aside", "-p", "HEAD", "HEAD^{tree}")
    git(env, "update-ref", ref, kept)
    r = hybridiso(repo, "down", "w1", ok=False)
    assert r.returncode == 1 and f"{ref} (1 commit, only in this worktree)" in r.stderr, r.stderr
    assert env.is_dir()
    forced = hybridiso(repo, "down", "--force", "w1")
    assert "work saved to refs/hybridiso/backup/w1/" in forced.stderr
    saved = [line.split()[1] for line in git(repo, "for-each-ref", "--format=%(objectname) %(refname)", "refs/hybridiso/backup/w1/").splitlines()]
    assert any(name.endswith(f"/worktree/{ref}") for name in saved), saved
    assert git_ok(repo, "cat-file", "-e", f"{kept}^{{commit}}")


def test_a_per_worktree_ref_at_a_commit_the_branch_holds_is_not_work(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    write_manifest(repo, "agents:\n  - name: w1\n")
    hybridiso(repo, "up")
    env = tmp_path / "repo.agents" / "w1"
    git(env, "update-ref", "refs/worktree/here", "HEAD")  # base's commit: nothing of its own
    hybridiso(repo, "down", "w1")
    assert not env.exists()
