"""``worktree``: a linked git worktree sharing the repository's object store."""
from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path

from hybridiso import cleanup, git
from hybridiso.process import CommandError
from hybridiso.strategies.base import EnvContext, Observation
from hybridiso.work import MainRepo, SnapshotPlan, Tip, WorkReport, add_submodule_work, describe_commits, left_on_no_branch, newest_tips, ref_label

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


def inventory(ctx: EnvContext, main: MainRepo) -> WorkReport:
    """A worktree shares the repository's refs and objects: what it alone
    holds is its HEAD and HEAD reflog (in its admin dir
    ``worktrees/<id>``, deleted with it), its files and its submodules'
    git dirs (also in the admin dir), and the agent branch when hybridiso
    deletes it.  Stash entries and tags made here live in the shared refs:
    not lost, but said (``kept``)."""
    report = WorkReport()
    record, path = ctx.record, ctx.path
    admin = git.worktree_admin_dir(main.common_dir, path)
    head, head_ref = git.head_of(admin) if admin is not None else (None, None)
    branch_tip = main.branch(record.branch)
    if path.is_dir():
        problem = _link_problem(path, admin)
        if problem:
            report.readable = False
            report.unreadable.append(f"{path}: {problem}")
            if (path / ".git").is_dir() and not (path / ".git").is_symlink():
                # e.g. `git init` in the env: a repository of its own, whose
                # commits nothing here can read as the worktree's
                report.force_blocker = f"its .git is a directory, a repository of its own that may hold commits; move {path / '.git'} out of the workspace first"
            report.repair = f"`git -C '{ctx.project.root}' worktree repair '{path}'` writes its .git link again"
            report.snapshot = SnapshotPlan(admin or main.common_dir, admin is not None, head or branch_tip or record.base_commit)
    mine = _branch_commits(ctx, main, branch_tip, report)
    if admin is not None:
        mine |= _head_work(ctx, main, admin, head, head_ref, report)
    report.kept += [f"tag {t} stays in the repository" for t in main.tags_at(mine)]
    report.kept += _stash_made_here(ctx, main, admin, head_ref)
    if report.readable and path.is_dir():
        add_submodule_work(report, path)
    return report


def _link_problem(path: Path, admin: Path | None) -> str | None:
    """Why git cannot read the worktree through its own ``.git`` file (a
    missing, replaced or garbage link: FAULTS #24), or None."""
    dotgit = path / ".git"
    try:
        st = os.lstat(dotgit)
    except FileNotFoundError:
        return "its .git file is missing, so git cannot read it"
    except OSError as e:
        return f"its .git file cannot be read ({e.strerror})"
    if not stat.S_ISREG(st.st_mode):
        return "its .git is not the file git wrote (a directory, a symlink or a special file), so git cannot read it as this worktree"
    loc = git.locate(path)
    if loc.toplevel is None or loc.git_dir is None:
        return f"git cannot read it: {loc.why}"
    if os.path.realpath(loc.toplevel) != os.path.realpath(path):
        return f"git reads it as part of {loc.toplevel}"
    if admin is None or os.path.realpath(loc.git_dir) != os.path.realpath(admin):
        return f"its .git file points at {loc.git_dir}, not at this worktree's own metadata"
    return None


def _branch_commits(ctx: EnvContext, main: MainRepo, tip: str | None, report: WorkReport) -> set[str]:
    base = git.resolve_commit(ctx.project.root, ctx.record.base) or ctx.record.base_commit
    if tip is None or base is None:
        return set()
    graph = git.commits_not_in(ctx.project.root, [tip], [base])
    report.commits = describe_commits(graph, set(graph))
    if graph:
        report.tips.append(Tip(f"refs/heads/{ctx.record.branch}", tip, None, "commits"))
    return set(graph)


def _head_work(ctx: EnvContext, main: MainRepo, admin: Path, head: str | None, head_ref: str | None, report: WorkReport) -> set[str]:
    """Commits only the HEAD reflog reaches, and a HEAD on another branch."""
    branch_ref = f"refs/heads/{ctx.record.branch}"
    if head_ref is not None and head_ref != branch_ref:
        report.head.append(f"HEAD is on {ref_label(head_ref)}, not on branch {ctx.record.branch}")
        other = main.refs.get(head_ref)
        if other is not None:
            report.tips.append(Tip(head_ref, other.oid, None, "head"))
    entries = git.reflog(admin)
    head_reflog = ([head] if head else []) + [e.commit for e in entries]
    branches = {branch_ref} | ({head_ref} if head_ref and head_ref.startswith("refs/heads/") else set())
    branch_reflogs = git.reflog_commits(main.common_dir, *sorted(b for b in branches if b in main.refs))
    graph = git.commits_not_in(ctx.project.root, head_reflog + branch_reflogs, main.ref_tips)
    lost = left_on_no_branch(graph, head_reflog, branch_reflogs, set())
    report.detached = describe_commits(graph, lost)
    for i, tip in enumerate(newest_tips(graph, lost)):
        report.tips.append(Tip(f"detached/{i}", tip, None, "detached"))
    # commits made here ("commit: ...", "commit (amend): ...") for the tag note
    return {e.commit for e in entries if e.subject.startswith("commit")}


def _stash_made_here(ctx: EnvContext, main: MainRepo, admin: Path | None, head_ref: str | None) -> list[str]:
    """The repository's stash is shared by all its worktrees: ``down`` never
    touches it, so entries made here stay.  They are told by the branch
    their message names or, made on a detached HEAD, by their first parent
    being a commit this HEAD was at."""
    if not main.stash:
        return []
    branches = {ctx.record.branch}
    if head_ref and head_ref.startswith("refs/heads/"):
        branches.add(head_ref.removeprefix("refs/heads/"))
    visited = {e.commit for e in git.reflog(admin)} if admin is not None else set()
    mine = []
    for entry in main.stash:
        on = entry.subject.removeprefix("WIP on ").removeprefix("On ").split(":", 1)[0]
        if on in branches or (on == "(no branch)" and entry.parents[:1] and entry.parents[0] in visited):
            mine.append(entry.selector)
    if not mine:
        return []
    entries = "1 stash entry" if len(mine) == 1 else f"{len(mine)} stash entries"
    return [f"{entries} made here ({', '.join(mine)}) stay in the repository's shared stash (`git stash list`)"]


def exec_argv(ctx: EnvContext, argv: Sequence[str], env: dict[str, str]) -> tuple[list[str], Path | None]:
    return list(argv), ctx.path
