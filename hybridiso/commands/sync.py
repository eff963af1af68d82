"""``hybridiso sync [AGENT...]``: bring every environment up to date with base.

Under the repository lock:
1. one ``git fetch --prune`` of base's remote (``origin`` when base has no
   upstream) into the shared object store: the only network access;
2. base advances by fast-forward only: a base branch that tracks an upstream
   (``main`` -> ``origin/main``) is moved with ``git merge --ff-only`` where it
   is checked out (git keeps local changes safe and refuses when they would be
   overwritten) or ``update-ref`` where it is not; a base with local commits of
   its own is left alone and said so.  An upstream that was rewritten
   (force-pushed) while base had nothing of its own is followed, with ``git
   reset --keep`` where base is checked out, and said so (docs/faults.md row 35).
   ``base: origin/main`` moves with the fetch;
3. clones fetch base (and a mirror of ``refs/remotes/origin/*``) from the local
   repository, remote ``hybridiso-base``: no network, N cheap local fetches;
4. each clean environment is rebased onto the new base, in parallel, with
   ``git rebase --onto NEW OLD``: OLD is the commit the branch forked from or
   was last synced onto (the record's ``base_commit``, checked to be in the
   branch's history; else the fork point from base's reflog; else the merge
   base, said so), so commits that base dropped (a purged secret) are left
   behind instead of being replayed (docs/faults.md row 35); dirty ones are skipped; a
   conflicting rebase is aborted (files and branch as before) and reported;
5. setup re-runs only where its hash (commands + lockfiles) changed.
"""
from __future__ import annotations

import argparse
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal
from pathlib import Path

from hybridiso import git, output, strategies
from hybridiso.envs import lifecycle
from hybridiso.gc import merged
from hybridiso.commands.common import add_json_flag, check_names, check_records, int_in, project_from_args
from hybridiso.env_context import context
from hybridiso.envfile import ENV_FILE
from hybridiso.errors import AgentsFailed, UserError
from hybridiso.process import CommandError
from hybridiso.project import Project
from hybridiso.envs.reconcile import adopt_from_reality
from hybridiso.state import PHASE_READY
from hybridiso.env_context import EnvContext

HELP = "fetch once, then rebase each clean environment onto the updated base"


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "sync",
        help=HELP,
        description=(
            HELP + ". Dirty environments are skipped, a conflicting rebase is aborted and "
            "reported, and setup re-runs only where a lockfile changed."
        ),
    )
    p.add_argument("agents", nargs="*", metavar="AGENT", help="only these agents (default: all)")
    p.add_argument("-j", "--jobs", type=int_in(1, 256), default=0, metavar="N", help="environments rebased at once, 1-256 (default: 2 x cores)")
    add_json_flag(p)


SyncResult = Literal["rebased", "up to date", "merged", "skipped", "conflict", "missing", "failed"]
SetupRun = Literal["re-ran", "unchanged", "failed", "-"]  # "-": setup was not looked at
OldBaseFrom = Literal["record", "fork point", "merge base"]  # what said where a branch forked


@dataclass
class Outcome:
    agent: str
    strategy: str
    result: SyncResult
    before: str = ""
    after: str = ""
    setup: SetupRun = "-"
    seconds: float = 0.0
    detail: str = ""
    old_base: str = ""  # the commit its own commits were replayed from (rebase --onto NEW OLD)
    old_base_from: OldBaseFrom | Literal[""] = ""
    dropped: int = 0  # commits under the branch that base no longer has, left behind


def run(args: argparse.Namespace) -> int:
    project = project_from_args(args)
    with project.store.locked("sync"):
        state = project.store.load()
        if state.rebuilt_from:
            output.warn(state.rebuilt_from)
        adopt_from_reality(project, state)
        names = check_names(project, args.agents, state) or sorted(state.agents)
        check_records(project, state, names)  # docs/faults.md row 30
        before = upstream_commit(project)
        fetched = fetch_upstream(project)
        base_note = advance_base(project, before)
        base_commit = git.resolve_commit(project.root, project.manifest.base)
        if base_commit is None:
            raise UserError(
                f"base {project.manifest.base!r} does not name a commit in {project.root}",
                hint="set `base:` in hybridiso.yaml to an existing branch, tag or commit",
            )
        base_ref = git.full_ref(project.root, project.manifest.base)
        contexts = [context(project, state, n) for n in names if n in state.agents]
        jobs = args.jobs if args.jobs > 0 else 2 * (os.cpu_count() or 1)
        with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="hybridiso-sync") as pool:
            outcomes = list(pool.map(lambda c: sync_one(c, base_commit, base_ref), contexts))
        project.store.save(state)
    for note in (fetched, base_note):
        if note:
            output.message(note)
    if args.json:
        output.print_json({"fetch": fetched, "base": base_note, "base_commit": base_commit, "agents": outcomes})
    else:
        rows = [
            [o.agent, o.strategy, o.result, f"{o.before}->{o.after}" if o.after and o.after != o.before else o.before or "-", o.setup, f"{o.seconds:.2f}s", o.detail]
            for o in outcomes
        ]
        output.print_table(rows, ["AGENT", "STRATEGY", "RESULT", "HEAD", "SETUP", "TIME", "DETAIL"])
        if not outcomes:
            output.message("no environments to sync: `hybridiso up` creates them")
    bad = [o for o in outcomes if o.result in ("conflict", "failed") or o.setup == "failed"]
    if bad:
        raise AgentsFailed(
            "could not be synced",
            [(o.agent, o.detail) for o in bad],
            len(outcomes),
            hint=_conflict_hint(project, [o for o in bad if o.result == "conflict"]),
        )
    return 0


def _conflict_hint(project: Project, conflicts: list[Outcome]) -> str:
    """How to resolve each conflict by hand: a container agent's branch is
    rebased inside its container, onto the base as it sees it there."""
    base = project.manifest.base
    ways = [strategies.get(o.strategy).rebase_by_hand(o.agent, base) for o in conflicts]
    head = f"for a conflict: {'; '.join(ways)}, and resolve it by hand; " if ways else ""
    return head + "otherwise fix what is named, then `hybridiso sync` again"


def upstream_commit(project: Project) -> str | None:
    """Where base's upstream is before the fetch: with the reflog, what tells
    a rewritten upstream from one base has commits of its own beside."""
    root, base = project.root, project.manifest.base
    up = git.upstream(root, base) if git.branch_exists(root, base) else None
    return git.resolve_commit(root, up.ref) if up is not None and up.ref else None


def fetch_upstream(project: Project) -> str:
    """One fetch for the shared object store; returns what it did."""
    root, base = project.root, project.manifest.base
    up = git.upstream(root, base) if git.branch_exists(root, base) else None
    remote = up.remote if up and up.remote and up.remote != "." else "origin"
    if git.remote_url(root, remote) is None:
        return ""
    t = time.monotonic()
    try:
        git.fetch(root, remote, prune=True)
    except CommandError as e:
        output.warn(f"git fetch {remote} failed; syncing onto the local {base}: {e.result.stderr.strip()[:300]}")
        return ""
    return f"fetched {remote} in {time.monotonic() - t:.2f}s"


def advance_base(project: Project, before: str | None = None) -> str:
    """Fast-forward a base branch to its upstream.  The one other move: an
    upstream that was rewritten (force-pushed) while base had no commits of
    its own (all of them were the upstream's, ``before`` the fetch or in its
    reflog) is followed, as ``git pull --rebase`` would (docs/faults.md row 35)."""
    root, base = project.root, project.manifest.base
    if not git.branch_exists(root, base):
        return ""
    up = git.upstream(root, base)
    if up is None or not up.ref or up.gone:
        return ""
    local, remote = git.branch_commit(root, base), git.resolve_commit(root, up.ref)
    if local is None or remote is None or local == remote:
        return ""
    short = up.ref.removeprefix("refs/remotes/")
    if not git.is_ancestor(root, local, remote):
        if git.is_ancestor(root, remote, local):
            return ""  # base is ahead of its upstream: nothing to take
        if _upstreams_alone(root, up.ref, local, before):
            return _follow_rewrite(root, base, short, local, remote)
        output.warn(f"{base} and {short} have diverged; {base} was left alone and agents rebase onto it (merge or rebase {base} yourself)")
        return ""
    holder = next((wt for wt in git.worktree_list(root) if wt.branch == base), None)
    if holder is None:
        git.run(root, "update-ref", f"refs/heads/{base}", remote, local)
    elif not git.ff_merge(holder.path, up.ref):
        output.warn(
            f"{base} is checked out in {holder.path} with changes a fast-forward to {short} would overwrite; "
            f"{base} was left alone (commit or stash them, then sync again)"
        )
        return ""
    return f"{base} fast-forwarded to {short} ({local[:8]}->{remote[:8]})"


def _upstreams_alone(root: Path, up_ref: str, local: str, before: str | None) -> bool:
    """Every commit of base was on its upstream once: base has nothing of its
    own that moving it to the rewritten upstream could hide."""
    if before is not None and git.is_ancestor(root, local, before):
        return True
    return git.fork_point(root, up_ref, local) == local


def _follow_rewrite(root: Path, base: str, short: str, local: str, remote: str) -> str:
    dropped = git.count_commits(root, remote, local)
    holder = next((wt for wt in git.worktree_list(root) if wt.branch == base), None)
    if holder is None:
        git.run(root, "update-ref", f"refs/heads/{base}", remote, local)
    else:
        busy = git.operation_in_progress(holder.path)
        if busy is not None or not git.reset_keep(holder.path, remote):
            why = f"{busy} is in progress there" if busy else "it has changes the move would overwrite"
            output.warn(
                f"{short} was rewritten (force-pushed) and {base} has none of its own commits, but {base} is checked out "
                f"in {holder.path} and {why}; {base} was left alone and agents rebase onto it "
                f"(finish or stash, then `git -C '{holder.path}' reset --keep {short}` and sync again)"
            )
            return ""
    return (
        f"{short} was rewritten (force-pushed): {base} had no commits of its own and now follows it "
        f"({local[:8]}->{remote[:8]}; {dropped} commit{'s' if dropped != 1 else ''} it no longer has stay out of the agents' branches; "
        f"the old tip is in `git reflog {base}`)"
    )


def sync_one(ctx: EnvContext, base_commit: str, base_ref: str | None) -> Outcome:
    started = time.monotonic()
    record = ctx.record
    o = Outcome(record.name, record.strategy, "skipped")
    try:
        _sync(ctx, o, base_commit, base_ref)
    except UserError as e:  # a failing git too: its command and last words
        o.result, o.detail = "failed", e.message + (f"; {e.hint}" if e.hint else "")
    o.seconds = time.monotonic() - started
    return o


def _sync(ctx: EnvContext, o: Outcome, base_commit: str, base_ref: str | None) -> None:
    record = ctx.record
    busy = ctx.project.store.agent_busy(record.name)
    if busy is not None:
        # a running `up` works in it now (it claimed it, docs/faults.md row 10)
        o.detail = f"{busy} is working on it now; sync it when that run is done"
        return
    if record.phase != PHASE_READY:
        o.detail = "creation did not finish (it failed or was interrupted); `hybridiso up` retries it"
        return
    strategy = strategies.get(record.strategy)
    obs = strategy.observe(ctx)
    if not obs.exists or not obs.registered:
        o.result, o.detail = "missing", (obs.problems[0] if obs.problems else "directory is gone or not a git environment; `hybridiso gc` or `up`")
        return
    if obs.branch != record.branch:
        o.detail = f"checked out {obs.branch or 'a detached HEAD'}, not {record.branch}" + _under_way(ctx)
        return
    strategy.before_sync(ctx)  # a clone's ignore rules: what it ignores is not "dirty"
    dirty = [n for _, n in git.status_porcelain(ctx.path) if n != ENV_FILE]
    if dirty:
        o.detail = f"dirty: {output.plural(len(dirty), 'changed file')} ({', '.join(dirty[:3])}{', ...' if len(dirty) > 3 else ''})" + _under_way(ctx)
        return
    env_base_ref = strategy.take_base(ctx, base_commit, base_ref)  # a clone fetches it from the local repository
    # a repository of its own is read after it took base; the others' HEAD is git's worktree list's
    head = (obs.head if strategy.SHARES_REFS else None) or git.resolve_commit(ctx.path, "HEAD") or ""
    o.before = o.after = head[:8]
    old: str | None
    if head == base_commit == record.base_commit:
        # nothing new upstream, and the branch is base as it was last synced
        # onto: what old_base and the checks below conclude (a commit is its
        # own ancestor and merge base; none lies between it and itself),
        # without their seven git processes (issue 15)
        old, o.old_base_from = head, "record"
    else:
        old, o.old_base_from = old_base(ctx.path, head, record.base_commit, base_commit, env_base_ref)
    o.old_base = (old or "")[:8]
    # base dropped commits that lie under this branch (a force-push): they
    # must not stay, even where base's new tip is already in its history
    o.dropped = git.count_commits(ctx.path, base_commit, old) if old and old != base_commit else 0
    if o.dropped == 0 and (head == base_commit or git.is_ancestor(ctx.path, base_commit, head)):
        o.result = "up to date"
    elif o.dropped == 0 and (v := merged.verdict(ctx.path, head, [(ctx.project.manifest.base, base_commit)], record.base_commit, record.branch)).merged:
        # rebasing would drop its commits as already upstream and erase the
        # evidence gc needs; there is nothing left to bring up to date
        o.result, o.detail = "merged", v.describe() + "; `hybridiso gc --yes` removes it"
        return
    else:
        # a container's in its own repository, by its own git, as its uid: the
        # host never runs git there, nor anything of the agent's (docs/containers.md)
        r = strategy.rebase(ctx, base_commit, old)
        if not r.ok:
            o.result = "conflict" if r.conflicts else "failed"
            o.detail = (f"rebase aborted, nothing changed; conflicts in {', '.join(r.conflicts)}" if r.conflicts else r.error)
            return
        o.result = "rebased"
        o.after = (git.resolve_commit(ctx.path, "HEAD") or "")[:8]
        o.detail = _rebase_note(o, git.unique_commits(ctx.path, base_commit, old) if o.dropped and old else [])
    record.base_commit = base_commit  # the branch now forks from here (gc's "own commits")
    if ctx.agent is None:
        return
    try:
        o.setup = "re-ran" if lifecycle.run_setup(ctx, "sync") else "unchanged"
    except UserError as e:
        o.setup, o.detail = "failed", e.message.splitlines()[0]


def _under_way(ctx: EnvContext) -> str:
    """Why an environment is off its branch or dirty, when git is in the
    middle of something there (a sync killed during its rebase, say)."""
    what = git.operation_in_progress(ctx.path)
    if what is None:
        return ""
    if what == "a bisect":
        return "; a bisect is in progress there (git bisect reset ends it)"
    verb = "rebase" if "rebase" in what else what.removeprefix("a ")
    return f"; {what} is in progress there: finish it (git {verb} --continue) or undo it (git {verb} --abort)"


_COMMIT_ID = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


def old_base(cwd: Path, head: str, recorded: str | None, new_base: str, base_ref: str | None) -> tuple[str | None, OldBaseFrom]:
    """The commit the branch's own commits sit on, and how it was found: the
    latest of the record's (it forked or was last synced there) and base's
    fork point from its reflog (``git merge-base --fork-point``: later than
    the record when the agent merged base in itself; the only one for a
    record whose base is not in the branch's history), each only when it is
    in the branch's history; else the merge base with the new base.  Where
    the merge base is later still, it is the better one: everything below it
    is in the new base."""
    mb = git.merge_base(cwd, new_base, head)

    def latest(commit: str) -> str:
        return mb if mb is not None and git.is_ancestor(cwd, commit, mb) else commit

    mine = recorded if recorded and _COMMIT_ID.fullmatch(recorded) and git.is_ancestor(cwd, recorded, head) else None
    fork = git.fork_point(cwd, base_ref, head) if base_ref else None
    # the record's commit counts only where base really was: in the new
    # base, or under the fork point base's reflog gives (a base rewritten
    # since).  A record naming a commit of the agent's own would make its
    # commits look like what base dropped, and leave them out (docs/faults.md row 30)
    if mine is not None and not git.is_ancestor(cwd, mine, new_base) and not (fork is not None and git.is_ancestor(cwd, mine, fork)):
        mine = None
    if mine is not None and (fork is None or fork == mine or not git.is_ancestor(cwd, mine, fork)):
        return latest(mine), "record"
    if fork is not None:
        return latest(fork), "fork point"
    return mb, "merge base"


def _rebase_note(o: Outcome, left_out: list[str]) -> str:
    notes = []
    if o.dropped:
        shown = ", ".join(left_out[:3]) + (", ..." if len(left_out) > 3 else "")
        notes.append(
            f"base was rewritten: {o.dropped} commit{'s' if o.dropped != 1 else ''} under the branch that base no longer has "
            f"were left out ({shown}; the branch's previous tip is in its reflog)"
        )
    if o.old_base_from == "fork point":
        notes.append(f"replayed its commits after {o.old_base}, where it left base by base's reflog (its recorded base is older or not in its history)")
    elif o.old_base_from == "merge base":
        notes.append(
            f"its recorded base is not in its history; replayed its commits after the merge base {o.old_base} "
            "(commits base dropped, if any were under it, are kept: check `git log` there)"
        )
    return "; ".join(notes)

