"""Applying a candidate onto the target, never in anyone's checkout.

``predict`` asks ``git merge-tree --write-tree`` (objects only, no worktree)
whether the candidate's changes meet the target's; ``apply`` makes the commit
that would land in a scratch worktree under the state dir (land/scratch.py), with
the candidate's method:

- ``rebase``: the candidate's commits replayed onto the target (``git
  rebase``; merge commits in it are flattened, as git does); the target then
  fast-forwards to the result, so it stays linear.  A candidate already on
  top of the target lands as it is (same commit ids);
- ``merge``: one ``--no-ff`` merge commit, the target its first parent;
- ``squash``: one commit with the candidate's whole change (``merge
  --squash``; merge commits inside the candidate are fine).
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

from hybridiso import git

SIMULATED_MESSAGE = "hybridiso land --dry-run"


@dataclass(frozen=True)
class Applied:
    commit: str | None  # what the target would move to; None on a conflict or when nothing is new
    conflicts: tuple[str, ...] = ()
    error: str = ""

    @property
    def empty(self) -> bool:
        return self.commit is None and not self.conflicts and not self.error


def predict(repo: Path, target: str, tip: str) -> tuple[str, ...] | None:
    """The paths a merge of ``tip`` into ``target`` would conflict in
    (empty: none); None when git cannot tell (an error: the caller applies
    and sees)."""
    r = git.run(repo, "merge-tree", "--write-tree", "--name-only", "--no-messages", "-z", target, tip, check=False)
    if r.returncode == 0:
        return ()
    if r.returncode == 1:
        parts = [p for p in r.stdout.split("\0") if p]
        return tuple(dict.fromkeys(parts[1:]))
    return None


def simulate(repo: Path, target: str, tip: str) -> tuple[str | None, tuple[str, ...]]:
    """For ``--dry-run``: the commit a merge of ``tip`` onto ``target`` would
    make (an unreferenced object, so the next candidate is predicted on top
    of this one), or the paths it conflicts in.  Nothing moves."""
    conflicts = predict(repo, target, tip)
    if conflicts:
        return None, conflicts
    tree = git.merge_tree(repo, target, tip)
    if tree is None:
        return None, ()
    return git.commit_tree(repo, tree, [target, tip], SIMULATED_MESSAGE), ()


def new_scratch(scratch_dir: Path, agent: str) -> Path:
    return scratch_dir / f"{agent}-{secrets.token_hex(4)}"


def remove_scratch(repo: Path, common_dir: Path, scratch_dir: Path, path: Path) -> str:
    """Remove a scratch worktree and its own metadata, only when it is one
    land made ('' when gone, else why it was left; git.remove_scratch_worktree,
    docs/faults.md row 41)."""
    return git.remove_scratch_worktree(repo, common_dir, scratch_dir, path)


def start_at(method: str, target: str, tip: str) -> str:
    """The commit the scratch worktree is at when ``apply`` starts."""
    return tip if method == "rebase" else target


def apply(scratch: Path, method: str, target: str, tip: str, message: str) -> Applied:
    """Make, in the scratch worktree ``scratch`` (clean, its detached HEAD
    at ``start_at``: land/scratch.py), the commit that would land ``tip``
    onto ``target`` with ``method``."""
    if method == "rebase":
        result = git.rebase(scratch, target)
        if not result.ok:
            return Applied(None, result.conflicts, "" if result.conflicts else result.error)
        head = git.out(scratch, "rev-parse", "HEAD")
        return Applied(None if head == target else head)
    args = ["merge", "-q", "--no-ff", "--no-edit", "-m", message, tip] if method == "merge" else ["merge", "-q", "--squash", tip]
    r = git.run(scratch, "-c", "core.editor=true", *args, check=False)
    if r.returncode != 0:
        conflicts = tuple(p for p in git.out(scratch, "diff", "--name-only", "--diff-filter=U", "-z").split("\0") if p)
        if method == "merge":
            git.run(scratch, "merge", "--abort", check=False)
        else:
            git.run(scratch, "reset", "-q", "--hard", "HEAD", check=False)
        return Applied(None, conflicts, "" if conflicts else (r.stderr or r.stdout).strip()[-500:])
    if method == "squash":
        if git.run(scratch, "diff", "--cached", "--quiet", check=False).returncode == 0:
            return Applied(None)  # everything it changes is in the target already
        git.run(scratch, "commit", "-q", "--no-verify", "-m", message)
    head = git.out(scratch, "rev-parse", "HEAD")
    return Applied(None if head == target else head)
