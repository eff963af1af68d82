"""``hybridiso sync [AGENT...]``: bring every environment up to date with base.

Under the repository lock:
1. one ``git fetch --prune`` of base's remote (``origin`` when base has no
   upstream) into the shared object store: the only network access;
2. base advances by fast-forward only: a base branch that tracks an upstream
   (``main`` -> ``origin/main``) is moved with ``git merge --ff-only`` where it
   is checked out (git keeps local changes safe and refuses when they would be
   overwritten) or ``update-ref`` where it is not; a base with local commits of
   its own is left alone and said so.  ``base: origin/main`` moves with the fetch;
3. clones fetch base (and a mirror of ``refs/remotes/origin/*``) from the local
   repository, remote ``hybridiso-base``: no network, N cheap local fetches;
4. each clean environment is rebased onto the new base, in parallel; dirty ones
   are skipped; a conflicting rebase is aborted (files and branch as before) and
   reported;
5. setup re-runs only where its hash (commands + lockfiles) changed.
"""
from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

from hybridiso import git, lifecycle, merged, output, strategies
from hybridiso.commands.common import add_json_flag, check_names, context, project_from_args
from hybridiso.envfile import ENV_FILE
from hybridiso.errors import UserError
from hybridiso.project import Project
from hybridiso.reconcile import adopt_from_reality
from hybridiso.state import PHASE_READY
from hybridiso.strategies.base import EnvContext
from hybridiso.strategies.clone import BASE_REMOTE

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
    p.add_argument("-j", "--jobs", type=int, default=0, help="environments rebased at once (default: 2 x cores)")
    add_json_flag(p)


@dataclass
class Outcome:
    agent: str
    strategy: str
    result: str  # rebased | up to date | merged | skipped | conflict | missing | failed
    before: str = ""
    after: str = ""
    setup: str = "-"  # re-ran | unchanged | failed | -
    seconds: float = 0.0
    detail: str = ""


def run(args: argparse.Namespace) -> int:
    project = project_from_args(args)
    with project.store.locked("sync"):
        state = project.store.load()
        if state.rebuilt_from:
            output.warn(state.rebuilt_from)
        adopt_from_reality(project, state)
        names = check_names(project, args.agents, state) or sorted(state.agents)
        fetched = fetch_upstream(project)
        base_note = advance_base(project)
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
        output.print_json({"fetch": fetched, "base": base_note, "base_commit": base_commit, "agents": [asdict(o) for o in outcomes]})
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
        raise UserError(
            f"{len(bad)} of {len(outcomes)} agents could not be synced: "
            + "; ".join(f"{o.agent}: {o.detail}" for o in bad),
            hint=(
                f"for a conflict: in that environment `git rebase {project.manifest.base}` and resolve it by hand; "
                "otherwise fix what is named, then `hybridiso sync` again"
            ),
        )
    return 0


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
    except git.CommandError as e:
        output.warn(f"git fetch {remote} failed; syncing onto the local {base}: {e.result.stderr.strip()[:300]}")
        return ""
    return f"fetched {remote} in {time.monotonic() - t:.2f}s"


def advance_base(project: Project) -> str:
    """Fast-forward a base branch to its upstream; never anything else."""
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


def sync_one(ctx: EnvContext, base_commit: str, base_ref: str | None) -> Outcome:
    started = time.monotonic()
    record = ctx.record
    o = Outcome(record.name, record.strategy, "skipped")
    try:
        _sync(ctx, o, base_commit, base_ref)
    except UserError as e:
        o.result, o.detail = "failed", e.message + (f"; {e.hint}" if e.hint else "")
    except git.CommandError as e:
        o.result, o.detail = "failed", str(e).splitlines()[0] + ": " + e.result.stderr.strip()[:200]
    o.seconds = time.monotonic() - started
    return o


def _sync(ctx: EnvContext, o: Outcome, base_commit: str, base_ref: str | None) -> None:
    record = ctx.record
    if record.phase != PHASE_READY:
        o.detail = "creation did not finish (it failed or was interrupted); `hybridiso up` retries it"
        return
    obs = strategies.get(record.strategy).observe(ctx)
    if not obs.exists or not obs.registered:
        o.result, o.detail = "missing", "directory is gone or not a git environment; `hybridiso gc` or `up`"
        return
    if obs.branch != record.branch:
        o.detail = f"checked out {obs.branch or 'a detached HEAD'}, not {record.branch}"
        return
    dirty = [n for _, n in git.status_porcelain(ctx.path) if n != ENV_FILE]
    if dirty:
        o.detail = f"dirty: {len(dirty)} changed files ({', '.join(dirty[:3])}{', ...' if len(dirty) > 3 else ''})"
        return
    if record.strategy == "clone":
        update_clone(ctx, base_commit, base_ref)
    head = (obs.head if record.strategy != "clone" else None) or git.resolve_commit(ctx.path, "HEAD") or ""
    o.before = o.after = head[:8]
    if git.is_ancestor(ctx.path, base_commit, head):
        o.result = "up to date"
    elif (v := merged.verdict(ctx.path, head, [(ctx.project.manifest.base, base_commit)], record.base_commit, record.branch)).merged:
        # rebasing would drop its commits as already upstream and erase the
        # evidence gc needs; there is nothing left to bring up to date
        o.result, o.detail = "merged", v.describe() + "; `hybridiso gc --yes` removes it"
        return
    else:
        r = git.rebase(ctx.path, base_commit)
        if not r.ok:
            o.result = "conflict" if r.conflicts else "failed"
            o.detail = (f"rebase aborted, nothing changed; conflicts in {', '.join(r.conflicts)}" if r.conflicts else r.error)
            return
        o.result = "rebased"
        o.after = (git.resolve_commit(ctx.path, "HEAD") or "")[:8]
    record.base_commit = base_commit  # the branch now forks from here (gc's "own commits")
    if ctx.agent is None:
        return
    try:
        o.setup = "re-ran" if lifecycle.run_setup(ctx, "sync") else "unchanged"
    except UserError as e:
        o.setup, o.detail = "failed", e.message.splitlines()[0]


def update_clone(ctx: EnvContext, base_commit: str, base_ref: str | None) -> None:
    """A clone takes base from the local repository (remote ``hybridiso-base``),
    never from the network; its view of ``origin`` is mirrored from the local
    repository's fresh one, so ``gc`` sees upstream branches that were deleted."""
    path, root = ctx.path, ctx.project.root
    if base_ref:
        short = base_ref.removeprefix("refs/heads/") if base_ref.startswith("refs/heads/") else base_ref.removeprefix("refs/")
        git.fetch(path, BASE_REMOTE, f"+{base_ref}:refs/remotes/{BASE_REMOTE}/{short}")
    elif not git.has_object(path, base_commit):
        git.fetch(path, BASE_REMOTE, base_commit)
    origin = git.remote_url(root, "origin")
    if origin and git.remote_url(path, "origin") == origin and git.has_refs_under(root, "refs/remotes/origin/"):
        git.fetch(path, BASE_REMOTE, "+refs/remotes/origin/*:refs/remotes/origin/*", prune=True)
