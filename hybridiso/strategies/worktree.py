"""``worktree``: a linked git worktree sharing the repository's object store."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hybridiso import cleanup, git
from hybridiso.process import CommandError
from hybridiso.strategies.base import EnvContext, Observation, host_setup

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
    if _find(ctx) is not None:  # metadata left, directory gone: clear it first
        git.worktree_prune(repo)
    path.parent.mkdir(parents=True, exist_ok=True)
    if ctx.record.created_branch:
        git.worktree_add(repo, path, branch, ctx.record.base_commit)
    else:
        git.worktree_add(repo, path, branch, None)


def start(ctx: EnvContext) -> str | None:
    return None


def remove(ctx: EnvContext) -> None:
    repo, path = ctx.project.root, ctx.path
    if _find(ctx) is not None and path.exists():
        try:
            git.worktree_remove(repo, path, force=True)
        except CommandError:
            pass  # e.g. files git cannot delete: removed or named below
    cleanup.remove_tree_or_explain(path, f"agent {ctx.name}")
    git.worktree_prune(repo)


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


run_setup = host_setup  # setup runs in the environment's directory, on the host
