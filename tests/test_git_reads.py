"""What one command reads of the worktrees once (issue 15) is never believed
after hybridiso itself changed them, and the one-call drift of every branch
is what one ``rev-list`` per branch says."""
from __future__ import annotations

from pathlib import Path

import pytest

from hybridiso import git
from tests.support.gitrepo import commit_file, git as sh, make_repo


def test_drift_of_every_branch_in_one_call_is_rev_lists(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r")
    base = commit_file(repo, "a", "1\n")
    sh(repo, "branch", "behind", "HEAD~1")
    sh(repo, "switch", "-q", "-c", "side")
    commit_file(repo, "b", "1\n")
    commit_file(repo, "c", "1\n")
    sh(repo, "switch", "-q", "main")
    commit_file(repo, "d", "1\n")
    sh(repo, "-c", "user.name=t", "-c", "user.email=t@t", "merge", "-q", "--no-edit", "side")
    sh(repo, "switch", "-q", "-c", "after-merge")
    commit_file(repo, "e", "1\n")
    sh(repo, "switch", "-q", "main")
    drift = git.ahead_behind_of_branches(repo, base)
    assert drift is not None
    tips = {b: sh(repo, "rev-parse", b) for b in ("main", "behind", "side", "after-merge")}
    for tip in tips.values():
        assert drift[tip] == git.ahead_behind(repo, base, tip)
    assert drift[tips["after-merge"]] == (5, 0) and drift[tips["behind"]] == (0, 1)
    # a commit no branch is at (a detached HEAD) is not guessed
    assert sh(repo, "rev-parse", "main~1") not in drift
    # asked of some branches only: those, and nothing else is walked
    assert git.ahead_behind_of_branches(repo, base, ["side", "behind"]) == {tips["side"]: (2, 0), tips["behind"]: (0, 1)}
    assert git.ahead_behind_of_branches(repo, base, []) == {}


def test_drift_without_the_atom_says_none(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r")
    assert git.ahead_behind_of_branches(repo, "0" * 39 + "1") is None  # git refuses: the caller asks per commit


def test_a_worktree_hybridiso_adds_or_removes_is_seen_at_once(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r")
    common = repo / ".git"
    wt = tmp_path / "ws" / "a"
    with git.one_admin_scan():
        assert git.worktree_at(repo, wt) is None and git.worktree_admin_dir(common, wt) is None
        git.worktree_add(repo, wt, "feature", "HEAD")
        found = git.worktree_at(repo, wt)
        assert found is not None and found.branch == "feature"
        admin = git.worktree_admin_dir(common, wt)
        assert admin is not None and admin.parent == common / "worktrees"
        git.worktree_remove(repo, wt, force=True)
        assert git.worktree_at(repo, wt) is None and git.worktree_admin_dir(common, wt) is None


def test_outside_the_scope_every_admin_question_scans_again(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r")
    common = repo / ".git"
    wt = tmp_path / "a"
    with git.one_admin_scan():
        assert git.worktree_admin_dir(common, wt) is None
    sh(repo, "worktree", "add", "-q", "-b", "x", str(wt))  # by hand, not through hybridiso
    assert git.worktree_admin_dir(common, wt) is not None  # the scope's scan is gone with it


def test_a_listing_read_while_a_worktree_changed_is_not_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = make_repo(tmp_path / "r")
    git._forget_worktrees()
    real = git._worktree_list
    reads: list[int] = []

    def racing(cwd: Path) -> list[git.Worktree]:
        listed = real(cwd)
        reads.append(1)
        if len(reads) == 1:
            git._forget_worktrees()  # another thread added one while this was read
        return listed

    monkeypatch.setattr(git, "_worktree_list", racing)
    git.worktree_list(repo)
    git.worktree_list(repo)
    assert len(reads) == 2  # the first answer was used once, then read again
    git.worktree_list(repo)
    assert len(reads) == 2  # the second one was kept


def test_any_worktree_command_through_git_run_clears_what_was_read(tmp_path: Path) -> None:
    """`land --keep-failed` moves a scratch worktree with `git worktree move`:
    the old place must not be believed after it."""
    repo = make_repo(tmp_path / "r")
    old, new = tmp_path / "old", tmp_path / "new"
    git.worktree_add_detached(repo, old, "HEAD")
    with git.one_admin_scan():
        assert git.worktree_at(repo, old) is not None and git.worktree_admin_dir(repo / ".git", old) is not None
        git.run(repo, "worktree", "move", str(old), str(new))
        assert git.worktree_at(repo, old) is None and git.worktree_at(repo, new) is not None
        assert git.worktree_admin_dir(repo / ".git", old) is None and git.worktree_admin_dir(repo / ".git", new) is not None
