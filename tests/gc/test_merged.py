"""gc/merged.py on real repositories: each way a branch reaches base is named,
and a branch with anything base lacks is not merged (docs/faults.md row 6)."""
from __future__ import annotations

from pathlib import Path

from hybridiso.gc.merged import Verdict, verdict
from tests.support.gitrepo import commit_file, git, make_repo


def _branch_with_two_commits(tmp_path: Path) -> tuple[Path, str, str]:
    repo = make_repo(tmp_path / "r", {"a.txt": "1\n2\n3\n", "c.txt": "c\n"})
    fork = git(repo, "rev-parse", "HEAD")
    git(repo, "switch", "-q", "-c", "agent")
    commit_file(repo, "a.txt", "1\nTWO\n3\n", "agent edits a")
    tip = commit_file(repo, "b.txt", "new\n", "agent adds b")
    git(repo, "switch", "-q", "main")
    return repo, fork, tip


def _judge(repo: Path, tip: str, fork: str) -> Verdict:
    return verdict(repo, tip, [("main", git(repo, "rev-parse", "main"))], fork, "agent")


def test_a_squash_with_a_change_of_its_own_is_merged_by_content(tmp_path: Path) -> None:
    """The squash commit also carries a reviewer's fix elsewhere: no patch of
    the branch, nor its combined patch, is in base, but merging the branch
    into base would change nothing."""
    repo, fork, tip = _branch_with_two_commits(tmp_path)
    git(repo, "merge", "-q", "--squash", "agent")
    (repo / "c.txt").write_text("c, fixed in review\n")
    git(repo, "commit", "-q", "-am", "squash of agent, with a fix")
    assert _judge(repo, tip, fork) == Verdict(True, "content", 2, "main")


def test_the_same_squash_without_one_of_the_changes_is_not_merged(tmp_path: Path) -> None:
    repo, fork, tip = _branch_with_two_commits(tmp_path)
    git(repo, "merge", "-q", "--squash", "agent")
    git(repo, "rm", "-q", "--cached", "b.txt")
    (repo / "b.txt").unlink()
    (repo / "c.txt").write_text("c, fixed in review\n")
    git(repo, "commit", "-q", "-am", "squash of agent without b")
    v = _judge(repo, tip, fork)
    assert v == Verdict(False, "", 2) and v.describe() == "2 commits not in base"


def test_each_way_of_merging_is_named(tmp_path: Path) -> None:
    repo, fork, tip = _branch_with_two_commits(tmp_path)
    # not yet merged
    assert _judge(repo, tip, fork) == Verdict(False, "", 2)
    commit_file(repo, "c.txt", "c moved on\n", "base moves on")  # so a replayed commit is a new one
    # a rebase merge: the same patches as new commits on base
    git(repo, "switch", "-q", "-c", "rebased", "main")
    git(repo, "cherry-pick", f"{fork}..{tip}")
    assert verdict(repo, tip, [("rebased", git(repo, "rev-parse", "HEAD"))], fork, "agent") == Verdict(True, "rebase", 2, "rebased")
    # a plain squash: one commit with the combined patch
    git(repo, "switch", "-q", "-c", "squashed", "main")
    git(repo, "merge", "-q", "--squash", "agent")
    git(repo, "commit", "-q", "-m", "squash")
    assert verdict(repo, tip, [("squashed", git(repo, "rev-parse", "HEAD"))], fork, "agent") == Verdict(True, "squash", 2, "squashed")
    # a merge commit: the tip is an ancestor
    git(repo, "switch", "-q", "main")
    git(repo, "merge", "-q", "--no-ff", "-m", "merge", "agent")
    assert _judge(repo, tip, fork) == Verdict(True, "ancestry", 2, "main")


def test_a_fresh_branch_and_one_whose_commits_cancel_out_are_not_merged(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r", {"a.txt": "a\n"})
    fork = git(repo, "rev-parse", "HEAD")
    assert _judge(repo, fork, fork) == Verdict(False, "", 0)
    git(repo, "switch", "-q", "-c", "agent")
    commit_file(repo, "a.txt", "changed\n")
    tip = commit_file(repo, "a.txt", "a\n", "and back")
    git(repo, "switch", "-q", "main")
    commit_file(repo, "a.txt", "changed\n", "base makes the same first change")
    commit_file(repo, "a.txt", "a\n", "and undoes it")
    assert _judge(repo, tip, fork) == Verdict(False, "", 2)


def test_what_a_verdict_says() -> None:
    assert Verdict(True, "squash", 2, "main").describe() == "merged into main (squash)"
    assert Verdict(False, "", 0).describe() == "no commits of its own yet"
    assert Verdict(False, "", 1).describe() == "1 commit not in base"
    assert Verdict(False, "", 3).describe() == "3 commits not in base"


def test_where_the_branch_left_base_comes_from_the_record_then_the_reflog(tmp_path: Path) -> None:
    """A fast-forward merge makes the merge base the tip itself: the branch
    would look like it had no commits of its own (the safe side: kept).
    The record's start, or the branch's reflog, says where it really began."""
    repo, fork, tip = _branch_with_two_commits(tmp_path)
    git(repo, "merge", "-q", "--ff-only", "agent")
    main = [("main", git(repo, "rev-parse", "main"))]
    assert verdict(repo, tip, main, fork, "agent") == Verdict(True, "ancestry", 2, "main")  # the record
    assert verdict(repo, tip, main, None, "agent") == Verdict(True, "ancestry", 2, "main")  # the reflog
    assert verdict(repo, tip, main, None, None) == Verdict(False, "", 0)  # the merge base: the tip
    # a record whose start is not below the tip (stale, tampered) is not believed
    other = commit_file(repo, "x.txt", "x\n", "not under the agent's tip")
    assert verdict(repo, tip, main, other, "agent") == Verdict(True, "ancestry", 2, "main")
    assert verdict(repo, tip, main, "0" * 40, None) == Verdict(False, "", 0)


def test_the_first_base_that_has_it_is_named(tmp_path: Path) -> None:
    repo, fork, tip = _branch_with_two_commits(tmp_path)
    git(repo, "branch", "-q", "upstream", "agent")  # the work reached the upstream only
    bases = [("main", git(repo, "rev-parse", "main")), ("origin/main", git(repo, "rev-parse", "upstream"))]
    assert verdict(repo, tip, bases, fork, "agent") == Verdict(True, "ancestry", 2, "origin/main")
    assert verdict(repo, tip, bases[:1], fork, "agent") == Verdict(False, "", 2)
