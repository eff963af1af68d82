"""``worktree``: a linked git worktree sharing the repository's object store."""
from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path

from hybridiso import cleanup, git
from hybridiso.process import CommandError
from hybridiso.output import plural
from hybridiso.env_context import EnvContext
from hybridiso.strategies import base
from hybridiso.strategies.base import Observation
from hybridiso.work.inventory import (
    MainRepo,
    SnapshotPlan,
    Tip,
    WorkReport,
    add_submodule_work,
    closure,
    describe_commits,
    left_on_no_branch,
    newest_tips,
    ref_label,
)

NAME = "worktree"
SHARES_REFS = True
USES_DOCKER = False
UNTRUSTED_FILES = False
REMOVES: tuple[str, ...] = ("worktree metadata",)


def _find(ctx: EnvContext) -> git.Worktree | None:
    # one listing and one index of it for every agent (issue 15: a scan of the
    # list, resolving every path, per agent was O(N^2))
    return git.worktree_at(ctx.project.root, ctx.path)


def create(ctx: EnvContext) -> None:
    """``ctx.path`` is absent or empty (lifecycle.prepare checked it)."""
    repo, path, branch = ctx.project.root, ctx.path, ctx.record.branch
    _one_entry(ctx.project.repo.common_dir, path)
    # metadata left, directory gone: clear this env's entry, nobody else's (docs/faults.md row 28)
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


def remove(ctx: EnvContext) -> None:
    """Remove this env's directory and git's record of it, and only those:
    never a repository-wide ``git worktree prune``, which would also drop
    the metadata of the user's own worktrees that are briefly missing
    (an unmounted disk: docs/faults.md row 28)."""
    repo, path, common = ctx.project.root, ctx.path, ctx.project.repo.common_dir
    # one scan of the entries, not three (issue 15: each scan reads every
    # worktree's gitdir, so a down of N agents read N^2 of them)
    entries = git.worktree_entries(common, path)
    if len(entries) > 1:
        raise git.ambiguous_worktree(path, entries)
    if path.exists() and entries:
        try:
            git.worktree_remove(repo, path, force=True)
        except CommandError:
            pass  # e.g. files git cannot delete: removed or named below
    cleanup.remove_tree_or_explain(path, f"agent {ctx.name}")
    if any(os.path.lexists(e) for e in entries):
        git.worktree_forget(common, path)  # what git did not remove: this entry, nobody else's


def _one_entry(common: Path, path: Path) -> None:
    """git keeps one entry per worktree; two naming this env's path mean an
    edited ``gitdir`` file, and removing either would be a guess that can
    take a user's worktree metadata: refuse before touching anything."""
    entries = git.worktree_entries(common, path)
    if len(entries) > 1:
        raise git.ambiguous_worktree(path, entries)


def observe(ctx: EnvContext) -> Observation:
    wt = _find(ctx)
    exists = ctx.path.is_dir()
    problems = []
    if wt is not None and not exists:
        problems.append("directory is gone but git still lists the worktree (prunable)")
    if wt is None and exists:
        problems.append("directory exists but git does not know it as a worktree")
    registered = wt is not None
    if wt is not None and exists:
        # a .git file an agent rewrote (to the main repository's git dir, to
        # another worktree's) would make git act there: nothing runs git in
        # it until it is repaired (docs/faults.md row 24)
        try:
            link = _link_problem(ctx.path, git.worktree_admin_dir(ctx.project.repo.common_dir, ctx.path))
        except git.AmbiguousWorktree as e:
            link = e.message
        if link is not None:
            registered = False
            problems.append(f"{link}; nothing runs git in it (`git -C '{ctx.project.root}' worktree repair '{ctx.path}'` writes it again)")
    return Observation(exists, registered, wt.branch if wt else None, wt.head if wt else None, None, tuple(problems))


def inventory(ctx: EnvContext, main: MainRepo, *, submodules: bool = True) -> WorkReport:
    """A worktree shares the repository's refs and objects: what it alone
    holds is its HEAD and HEAD reflog (in its admin dir
    ``worktrees/<id>``, deleted with it), its files and its submodules'
    git dirs (also in the admin dir), and the agent branch when hybridiso
    deletes it.  Stash entries and tags made here live in the shared refs:
    not lost, but said (``kept``)."""
    report = WorkReport()
    record, path = ctx.record, ctx.path
    admin = main.admin_dir(path)
    head, head_ref = main.head(admin) if admin is not None else (None, None)
    branch_tip = report.branch_tip = main.branch(record.branch)
    if path.is_dir():
        problem = _link_problem(path, admin)
        if problem:
            report.readable = False
            report.unreadable.append(f"{path}: {problem}")
            report.repair = f"`git -C '{ctx.project.root}' worktree repair '{path}'` writes its .git link again"
            report.snapshot = SnapshotPlan(admin or main.common_dir, admin is not None, head or branch_tip or record.base_commit)
            if (path / ".git").is_dir() and not (path / ".git").is_symlink():
                # e.g. `git init` in the env: a repository of its own, whose
                # commits nothing here can read as the worktree's
                report.force_blocker = f"its .git is a directory, a repository of its own that may hold commits; move {path / '.git'} out of the workspace first"
    entries = _commits(ctx, main, admin, branch_tip, head, head_ref, report)
    made_here = {e.commit for e in entries if e.subject.startswith("commit")}  # "commit:", "commit (amend):" ...
    report.kept += [f"tag {t} stays in the repository" for t in main.tags_at(made_here)]
    report.kept += _stash_made_here(ctx, main, {e.commit for e in entries}, head_ref)
    if submodules and report.readable and path.is_dir():
        add_submodule_work(report, path)
    return report


def _link_problem(path: Path, admin: Path | None) -> str | None:
    """Why git cannot read the worktree through its own ``.git`` file (a
    missing, replaced or garbage link: docs/faults.md row 24), or None.  Read as git
    reads it, without running git: a ``gitdir:`` line naming this
    worktree's admin dir, whose own ``gitdir`` names this ``.git`` (a
    git that still fails on it fails ``git status`` next)."""
    dotgit = path / ".git"
    try:
        st = os.lstat(dotgit)
    except FileNotFoundError:
        return "its .git file is missing, so git cannot read it"
    except OSError as e:
        return f"its .git file cannot be read ({e.strerror})"
    if not stat.S_ISREG(st.st_mode):
        return "its .git is not the file git wrote (a directory, a symlink or a special file), so git cannot read it as this worktree"
    try:
        text = dotgit.read_text(encoding="utf-8", errors="replace") if st.st_size < 4096 else ""
    except OSError as e:
        return f"its .git file cannot be read ({e.strerror})"
    if not text.startswith("gitdir: "):
        return f"git cannot read it: invalid gitfile format: {dotgit}"
    target = Path(text.removeprefix("gitdir: ").strip())
    target = target if target.is_absolute() else path / target
    if admin is None or os.path.realpath(target) != os.path.realpath(admin):
        return f"its .git file points at {target}, not at this worktree's own metadata"
    return None


def _commits(
    ctx: EnvContext, main: MainRepo, admin: Path | None, branch_tip: str | None, head: str | None, head_ref: str | None, report: WorkReport
) -> list[git.ReflogEntry]:
    """The agent branch's commits no other ref holds, the commits only the
    HEAD reflog reaches, and a HEAD on another branch: ONE ``rev-list``.
    Returns the HEAD reflog (for the notes)."""
    branch_ref = f"refs/heads/{ctx.record.branch}"
    if head_ref is not None and head_ref != branch_ref:
        report.head.append(f"HEAD is on {ref_label(head_ref)}, not on branch {ctx.record.branch}")
        other = main.refs.get(head_ref)
        if other is not None:
            report.tips.append(Tip(head_ref, other.oid, None, "head"))
    entries: list[git.ReflogEntry] = []
    branch_reflogs: list[str] = []
    if admin is not None:
        branches = sorted(b for b in {branch_ref, head_ref or ""} if b in main.refs)
        entries, branch_reflogs = main.head_and_branch_reflogs(admin, *branches)
    head_reflog = ([head] if head else []) + [e.commit for e in entries]
    # refs only this worktree has (refs/worktree/*, refs/bisect/*, a
    # rebase's refs/rewritten/*) live in its admin dir and go with it
    own_refs = _per_worktree_refs(ctx.path, admin, main.common_dir) if report.readable and ctx.path.is_dir() else []
    # every ref but the agent branch (removal may delete it) is safe
    safe = main.safe_tips(branch_ref)
    tips = [*([branch_tip] if branch_tip else []), *head_reflog, *branch_reflogs, *(r.commit for r in own_refs if r.commit)]
    # a tip that is itself a safe ref's commit reaches nothing new: when all
    # are (a fresh agent, one whose commits are on other refs), rev-list
    # would print nothing, so it is not asked (issue 15)
    safe_set = set(safe)
    graph = {} if all(t in safe_set for t in tips) else git.commits_not_in(ctx.project.root, tips, safe)
    on_branch = closure(graph, branch_tip)
    report.commits = describe_commits(graph, on_branch)
    if on_branch and branch_tip:
        report.tips.append(Tip(branch_ref, branch_tip, None, "commits"))
    held = set(on_branch)
    for r in own_refs:
        mine = closure(graph, r.commit) - on_branch if r.commit else set()
        if mine:
            report.refs.append(f"{ref_label(r.name)} ({plural(len(mine), 'commit')}, only in this worktree)")
            report.tips.append(Tip(f"worktree/{r.name}", r.oid, None, "refs"))
            held |= mine
    lost = left_on_no_branch(graph, head_reflog, branch_reflogs, held)
    report.detached = describe_commits(graph, lost)
    for i, tip in enumerate(newest_tips(graph, lost)):
        report.tips.append(Tip(f"detached/{i}", tip, None, "detached"))
    return entries


def _per_worktree_refs(path: Path, admin: Path | None = None, common_dir: Path | None = None) -> list[git.RefEntry]:
    """The refs git keeps for this worktree alone (read in it: the main
    repository's listing does not show them).  Not asked when its admin
    dir provably holds none (git.no_per_worktree_refs: most worktrees)."""
    if admin is not None and common_dir is not None and git.no_per_worktree_refs(admin, common_dir):
        return []
    try:
        return git.list_refs(path, *PER_WORKTREE_REFS)
    except CommandError:
        return []


PER_WORKTREE_REFS = ("refs/worktree/", "refs/bisect/", "refs/rewritten/")


def _stash_made_here(ctx: EnvContext, main: MainRepo, visited: set[str], head_ref: str | None) -> list[str]:
    """The repository's stash is shared by all its worktrees: ``down`` never
    touches it, so entries made here stay.  They are told by the branch
    their message names or, made on a detached HEAD, by their first parent
    being a commit this HEAD was at."""
    if not main.stash:
        return []
    branches = {ctx.record.branch}
    if head_ref and head_ref.startswith("refs/heads/"):
        branches.add(head_ref.removeprefix("refs/heads/"))
    mine = []
    for entry in main.stash:
        on = entry.subject.removeprefix("WIP on ").removeprefix("On ").split(":", 1)[0]
        if on in branches or (on == "(no branch)" and entry.parents[:1] and entry.parents[0] in visited):
            mine.append(entry.selector)
    if not mine:
        return []
    entries = "1 stash entry" if len(mine) == 1 else f"{len(mine)} stash entries"
    return [f"{entries} made here ({', '.join(mine)}) stay in the repository's shared stash (`git stash list`)"]


def adopt(path: Path, worktree: git.Worktree | None, env: Mapping[str, str], branch_name: str, finished: bool) -> str | None:
    """A worktree git lists at ``path``, on a branch."""
    if worktree is not None and path.is_dir():
        return worktree.branch
    return None


# a plain directory on the host: every other member is the shared default
start = base.start_nothing
exec_argv = base.exec_in_directory
after_exec = base.exit_code_as_is
run_setup = base.host_setup  # setup runs in the environment's directory, on the host
before_sync = base.nothing_to_refresh
take_base = base.base_as_is
rebase = base.host_rebase
rebase_by_hand = base.rebase_in_directory
ports_taken_by_others = base.no_ports_taken
render = base.no_compose_file
planned_boundary = base.no_boundary
