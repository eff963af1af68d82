"""Is an agent's branch merged into base?  Decided by content, not only ancestry.

Hosting services merge in three ways, and only one leaves the branch an
ancestor of base (issue 5, docs/faults.md row 6):
- merge commit / fast-forward: the tip is an ancestor of base;
- rebase merge: base has new commits with the same patches (``git cherry``
  marks every branch commit '-');
- squash merge: base has one commit with the branch's combined change
  (``git patch-id`` of ``fork..tip`` found in ``fork..base``), or, when base
  has moved on since, merging the branch into base would change nothing
  (``git merge-tree --write-tree`` gives base's own tree).
A branch with no commits of its own (a fresh agent) is never "merged", and
neither is one whose commits cancel out: there is nothing to have merged.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hybridiso import git


@dataclass(frozen=True)
class Verdict:
    merged: bool
    how: str  # ancestry | rebase | squash | content | "" when not merged
    own_commits: int  # commits on the branch since it forked from base
    into: str = ""  # which base ref it is merged into (base, or base's upstream)

    def describe(self) -> str:
        if self.merged:
            return f"merged into {self.into} ({self.how})"
        if self.own_commits == 0:
            return "no commits of its own yet"
        return f"{self.own_commits} commit{'s' if self.own_commits != 1 else ''} not in base"


def fork_point(cwd: Path, tip: str, base: str, created_from: str | None, branch: str | None = None) -> str | None:
    """Where the branch left base: the commit it was created (or last synced)
    from per the state record, else per the branch's reflog, when that is an
    ancestor of the tip; else the merge base (which makes a fast-forward
    merged branch look like it has no commits: the safe side)."""
    # a commit is its own ancestor (the tip came from a ref, so it exists):
    # a fresh agent's branch is not asked about (issue 15)
    if created_from and (created_from == tip or git.is_ancestor(cwd, created_from, tip)):  # fails on a missing object too
        return created_from
    created = git.branch_created_at(cwd, branch) if branch else None
    if created and git.is_ancestor(cwd, created, tip):
        return created
    return git.merge_base(cwd, base, tip)


def verdict(
    cwd: Path, tip: str, bases: Sequence[tuple[str, str]], created_from: str | None, branch: str | None = None
) -> Verdict:
    """``bases``: (label, commit) pairs to test against, e.g. [("main", sha),
    ("origin/main", sha)]; the first one that contains the branch wins."""
    own = 0
    for label, base in bases:
        fork = fork_point(cwd, tip, base, created_from, branch)
        if fork is None:
            continue
        mine = 0 if tip == fork else git.count_commits(cwd, fork, tip)
        own = max(own, mine)
        how = _how_merged(cwd, tip, base, fork) if mine else ""  # a fresh branch is not "merged"
        if how:
            return Verdict(True, how, mine, label)
    return Verdict(False, "", own)


def _how_merged(cwd: Path, tip: str, base: str, fork: str) -> str:
    if git.is_ancestor(cwd, tip, base):
        return "ancestry"
    mine = git.changed_paths(cwd, fork, tip)
    if not mine:
        return ""  # its commits cancel out
    if mine.isdisjoint(git.changed_paths(cwd, fork, base)):
        return ""  # base never touched its files: its changes cannot be in base
    marks = git.cherry_marks(cwd, base, tip)
    if marks and all(m == "-" for m in marks):
        return "rebase"
    if git.squash_in(cwd, fork, tip, base):
        return "squash"
    merged_tree = git.merge_tree(cwd, base, tip)
    if merged_tree is not None and merged_tree == git.tree_of(cwd, base):
        return "content"
    return ""
