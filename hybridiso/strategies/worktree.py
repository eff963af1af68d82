"""``worktree``: a linked git worktree sharing the repository's object store."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hybridiso import cleanup, git
from hybridiso.errors import UserError
from hybridiso.process import CommandError
from hybridiso.strategies.base import EnvContext, Observation

NAME = "worktree"
SHARES_REFS = True


def _find(ctx: EnvContext) -> git.Worktree | None:
    for wt in git.worktree_list(ctx.project.root):
        if wt.path.resolve() == ctx.path.resolve():
            return wt
    return None


def create(ctx: EnvContext) -> None:
    """``ctx.path`` is absent or empty (lifecycle.prepare checked it)."""
    repo, path, branch = ctx.project.root, ctx.path, ctx.record.branch
    _one_entry(ctx.project.repo.common_dir, path)
    # metadata left, directory gone: clear this env's entry, nobody else's (FAULTS #28)
    git.worktree_forget(ctx.project.repo.common_dir, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # what git has decides, not whose the branch is: a branch hybridiso made
    # before (its directory was deleted by hand) is checked out again, never
    # created twice ("a branch named ... already exists", issue 11)
    if git.branch_exists(repo, branch):
        git.worktree_add(repo, path, branch, None)
    elif ctx.record.track:
        git.worktree_add(repo, path, branch, ctx.record.track, track=True)  # `branch: feature` only origin has
    else:
        git.worktree_add(repo, path, branch, ctx.record.base_commit)


def start(ctx: EnvContext) -> str | None:
    return None


def remove(ctx: EnvContext) -> None:
    """Remove this env's directory and git's record of it, and only those:
    never a repository-wide ``git worktree prune``, which would also drop
    the metadata of the user's own worktrees that are briefly missing
    (an unmounted disk: FAULTS #28)."""
    repo, path, common = ctx.project.root, ctx.path, ctx.project.repo.common_dir
    _one_entry(common, path)
    if path.exists() and git.worktree_entry(common, path) is not None:
        try:
            git.worktree_remove(repo, path, force=True)
        except CommandError:
            pass  # e.g. files git cannot delete: removed or named below
    cleanup.remove_tree_or_explain(path, f"agent {ctx.name}")
    git.worktree_forget(common, path)


def _one_entry(common: Path, path: Path) -> None:
    """git keeps one entry per worktree; two naming this env's path mean an
    edited ``gitdir`` file, and removing either would be a guess that can
    take a user's worktree metadata: refuse before touching anything."""
    entries = git.worktree_entries(common, path)
    if len(entries) > 1:
        shown = ", ".join(str(e / "gitdir") for e in entries)
        raise UserError(
            f"{len(entries)} worktree entries name {path} ({shown}); hybridiso will not guess which one is its own",
            hint="one of those files was edited: make it name its own worktree again, then run the command again",
        )


def observe(ctx: EnvContext) -> Observation:
    wt = _find(ctx)
    exists = ctx.path.is_dir()
    problems = []
    if wt is not None and not exists:
        problems.append("directory is gone but git still lists the worktree (prunable)")
    if wt is None and exists:
        problems.append("directory exists but git does not know it as a worktree")
    return Observation(exists, wt is not None, wt.branch if wt else None, wt.head if wt else None, None, tuple(problems))


def unmerged_commits(ctx: EnvContext, base_commit: str) -> list[str]:
    head = git.branch_commit(ctx.project.root, ctx.record.branch)
    if head is None:
        return []
    return git.unique_commits(ctx.project.root, base_commit, head)


def save_ref(ctx: EnvContext, commit: str, ref: str) -> None:
    git.update_ref(ctx.project.root, ref, commit)  # one object store: nothing to copy


def exec_argv(ctx: EnvContext, argv: Sequence[str], env: dict[str, str]) -> tuple[list[str], Path | None]:
    return list(argv), ctx.path
