"""``hybridiso down [AGENT...]``: remove environments without losing work."""
from __future__ import annotations

import argparse
import functools
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from dataclasses import dataclass, field
from typing import Literal

from hybridiso import output, ports
from hybridiso.envs import lifecycle
from hybridiso.commands.common import add_json_flag, check_names, check_records, project_from_args
from hybridiso.env_context import EnvContext, context
from hybridiso.errors import AgentsFailed, UserError
from hybridiso.project import Project
from hybridiso.envs.reconcile import adopt_from_reality
from hybridiso.state import AgentRecord, State
from hybridiso.services.branches import Released
from hybridiso.work.inventory import MainRepo, WorkReport

HELP = "remove agents' environments (refuses when work would be lost)"


# down --json: one of these per agent (docs/cli.md, "JSON")
@dataclass(frozen=True)
class Removed:
    agent: str
    action: Literal["removed"] = field(default="removed", kw_only=True)
    backup_ref: str | None  # the backup --force saved its work to
    database_dumps: dict[str, str]  # database -> the file its changed data was dumped to
    restore: str | None = field(default=None, metadata=output.OMIT_IF_NONE)  # the command that brings the backup back


@dataclass(frozen=True)
class Refused:
    agent: str
    action: Literal["refused"] = field(default="refused", kw_only=True)
    reason: str


@dataclass(frozen=True)
class WouldRemove:
    agent: str
    action: Literal["would remove"] = field(default="would remove", kw_only=True)
    work: str | None  # what --force saves first (None: nothing at risk)


@dataclass(frozen=True)
class WouldRefuse:
    agent: str
    action: Literal["would refuse"] = field(default="would refuse", kw_only=True)
    work: str
    reason: str


DownResult = Removed | Refused | WouldRemove | WouldRefuse


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "down",
        help=HELP,
        description=(
            HELP + ". Work is everything the environment alone holds: modified, untracked or "
            "precious ignored files (like .env), commits not in base, other branches and tags "
            "of a clone, stash entries, commits its HEAD reflog reached that no ref holds "
            "(a detached HEAD), a HEAD on another branch, submodule commits and changes, and "
            "an environment git cannot read at all, and data written into the agent's "
            "database branches. Any of it makes down refuse, naming it; "
            "--force first saves all of it under refs/hybridiso/backup/<agent>/<id>/ and "
            "prints the `hybridiso restore` command that brings it back, and dumps each "
            "changed database with pg_dump into the state dir, saying where."
        ),
    )
    p.add_argument("agents", nargs="*", metavar="AGENT", help="only these agents (default: all)")
    p.add_argument("--force", action="store_true", help="save all the work to a backup (and changed databases to dumps), then remove")
    p.add_argument("--keep-branch", action="store_true", help="remove the environment but keep its branch")
    p.add_argument("--dry-run", action="store_true", help="say what would be removed; change nothing")
    add_json_flag(p)


def run(args: argparse.Namespace) -> int:
    project = project_from_args(args)
    results: list[DownResult] = []
    with project.store.locked("down"):
        state = project.store.load()
        if state.rebuilt_from:
            output.warn(state.rebuilt_from)
        adopt_from_reality(project, state)
        names = check_names(project, args.agents, state) or sorted(state.agents)
        check_records(project, state, names)  # docs/faults.md row 30: refused before anything is touched
        refused: list[tuple[str, UserError]] = []
        main: MainRepo | None = None  # the repository's refs, read once until a removal changes them
        done: dict[str, DownResult] = {}
        if not args.dry_run:
            # issue 15: every agent with nothing at risk, checked and removed
            # in parallel; the others below, one by one, as before
            done = _remove_clean(project, state, [n for n in names if n in state.agents], args, refused)
        for name in names:
            if name in done:
                results.append(done[name])
                continue
            if name not in state.agents:
                aside = state.set_aside.get(name)
                if aside is not None:  # a record this hybridiso cannot act on: never "nothing here"
                    refused.append((name, UserError(f"agent {name}: its record is left alone: {aside.reason}", hint="use the hybridiso that made it")))
                    results.append(Refused(name, aside.reason))
                    continue
                output.message(f" - {name}: no environment")
                continue
            busy = project.store.agent_busy(name)
            if busy is not None:
                # a running `up` is making or updating it (it claimed it): its
                # work is not judged half-made, nor removed (docs/faults.md row 10)
                e = UserError(f"agent {name}: {busy} is working on it now; nothing was removed", hint=f"wait for that run to finish, then `hybridiso down {name}` again")
                refused.append((name, e))
                results.append(Refused(name, e.message))
                continue
            ctx = context(project, state, name)
            main = main or lifecycle.main_repo(project)
            if args.dry_run:
                # the same decision the real run makes, without acting on it
                losing = lifecycle.work_at_risk(ctx, keep_branch=args.keep_branch, main=main)
                _notes(name, losing)
                if losing.empty or (args.force and not losing.force_blocker):
                    saved = f", after saving {losing.describe()} (git work to a backup, databases to dumps)" if not losing.empty else ""
                    results.append(WouldRemove(name, losing.describe() or None))
                    output.message(f" - {name}: would remove {ctx.path}{saved}")
                else:
                    e = lifecycle.refusal(ctx, losing)
                    refused.append((name, e))
                    results.append(WouldRefuse(name, losing.describe(), e.message))
                    output.message(f" - {name}: would refuse: it has {losing.describe()}")
                continue
            try:
                backup, report, released = lifecycle.remove(
                    ctx, force=args.force, keep_branch=args.keep_branch, starting=functools.partial(_removing, project, state, ctx.record), main=main
                )
            except UserError as e:
                refused.append((name, e))
                results.append(Refused(name, e.message))
                continue
            finally:
                if ctx.record.removing:
                    main = None  # refs changed (a backup, a deleted branch): read them again
            del state.agents[name]
            project.store.save(state)
            ports.release(project.repo.common_dir, [name])  # the machine-wide lease too (docs/faults.md row 37)
            results.append(_said_removed(ctx, backup, report, released))
    order = {n: i for i, n in enumerate(names)}
    refused.sort(key=lambda r: order.get(r[0], len(order)))  # in the order asked, whichever way each went
    if args.json:
        output.print_json(results)
    if len(refused) == 1 and len(names) == 1:
        raise refused[0][1]  # the one agent asked for: its own error says it all
    if refused:
        raise AgentsFailed("could not be removed" if not args.dry_run else "would be refused", refused, len(names))
    return 0


class _Marks:
    """``_removing`` for many threads: each record's mark is on disk before
    its removal starts; one save carries every mark made while another was
    being written."""

    def __init__(self, project: Project, state: State) -> None:
        self.project, self.state = project, state
        self.mutex = threading.Lock()  # the records and their serialising
        self.writer = threading.Lock()
        self.made = self.saved = 0

    def mark(self, record: AgentRecord) -> None:
        with self.mutex:
            record.begin_removal(Path(record.path))
            self.made += 1
            mine = self.made
        with self.writer:
            if self.saved >= mine:
                return  # written by the save another thread made after it
            with self.mutex:
                upto = self.made
                self.project.store.save(self.state)
            self.saved = upto


def _remove_clean(project: Project, state: State, names: list[str], args: argparse.Namespace, refused: list[tuple[str, UserError]]) -> dict[str, DownResult]:
    """Check and remove, on a thread pool, every agent whose removal loses
    nothing; the work check of each is the one ``lifecycle.remove`` makes,
    judged as if every branch this run deletes were gone already, so no
    agent's commits count as safe on another's branch.  An agent with
    anything at risk is left untouched (``HasWork``) for the one-by-one
    loop, which refuses or saves it as before.  Removed agents' records go
    in one save at the end, their branches in one transaction and their
    port leases in one call: a run killed before then leaves records marked
    ``removing``, which the next ``down`` or ``gc`` finishes."""
    contexts = [context(project, state, n) for n in names]
    if len(contexts) < 2:
        return {}
    leaving = {f"refs/heads/{c.record.branch}" for c in contexts if c.record.created_branch and not args.keep_branch}
    main = lifecycle.main_repo(project).without_refs(leaving)
    lifecycle.prefetch(main, contexts)
    marks = _Marks(project, state)
    branches: list[lifecycle.PendingBranch] = []

    stop = threading.Event()

    def one(ctx: EnvContext) -> tuple[EnvContext, tuple[str | None, WorkReport, list[Released]] | UserError | None]:
        if stop.is_set():
            return ctx, None  # interrupted: nothing of it was touched
        try:
            return ctx, lifecycle.remove(
                ctx, force=args.force, keep_branch=args.keep_branch, starting=functools.partial(marks.mark, ctx.record),
                main=main, only_if_clean=True, branch_later=branches,
            )
        except lifecycle.HasWork:
            return ctx, None
        except UserError as e:
            return ctx, e

    jobs = min(len(contexts), 2 * (os.cpu_count() or 1))
    pool = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="hybridiso-down")
    try:
        outcomes = list(pool.map(one, contexts))
    except BaseException:
        # Ctrl-C: the removals under way finish (their marks are saved, so
        # the next down completes them), no other one starts
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    lifecycle.delete_branches_as_judged(branches)
    done: dict[str, DownResult] = {}
    removed = []
    for ctx, outcome in outcomes:
        if outcome is None:
            continue  # work at risk: the one-by-one loop
        if isinstance(outcome, UserError):
            # refused before anything was touched, or stopped half-way with
            # its mark saved (the next run finishes it): said as the loop says it
            refused.append((ctx.name, outcome))
            done[ctx.name] = Refused(ctx.name, outcome.message)
            continue
        backup, report, released = outcome
        del state.agents[ctx.name]
        removed.append((ctx, backup, report, released))
    if removed:
        project.store.save(state)
        ports.release(project.repo.common_dir, [ctx.name for ctx, *_ in removed])  # the machine-wide leases too (docs/faults.md row 37)
    for ctx, backup, report, released in removed:
        done[ctx.name] = _said_removed(ctx, backup, report, released)
    return done


def _said_removed(ctx: EnvContext, backup: str | None, report: WorkReport, released: list[Released]) -> Removed:
    name = ctx.name
    _notes(name, report, removed=True)
    dumps = {r.name: str(r.dump) for r in released if r.dump}
    line = f" {output.mark(True)} {name}: removed {ctx.path}"
    restore = f"hybridiso restore {name} {backup.rsplit('/', 1)[-1]}" if backup else None
    if restore:
        line += f"; work saved to {backup}; bring it back: {restore}"
    output.message(line)
    for r in released:
        if r.dump:
            # docs/faults.md row 26: say where the data went, and how it comes back
            output.message(f"   database {r.name} changed ({r.change}); dumped to {r.dump} "
                           f"(restore: createdb NAME && psql -d NAME -f {r.dump})")
        elif r.left:
            later = "" if r.foreign else "; `hybridiso gc` drops it once the server is back, unless its data changed"
            output.warn(f"{name}: database {r.name} was not dropped: {r.left}{later}")
    return Removed(name, backup, dumps, restore)


def _removing(project: Project, state: State, record: AgentRecord) -> None:
    """On disk before anything is deleted: a removal that stops half-way
    (files it cannot delete) is finished by the next run, whose work check
    then no longer counts the .git link it already took (lifecycle.work_at_risk)."""
    record.begin_removal(Path(record.path))
    project.store.save(state)


def _notes(name: str, report: WorkReport, *, removed: bool = False) -> None:
    for note in report.kept:
        output.message(f"   {name}: note: {note}")
    # not work (the repository's own rules ignore them), but never deleted unsaid (attack11 #1)
    gone = [n for n in report.ignored if n not in report.ignored_saved]
    if gone:
        shown = ", ".join(gone[:5]) + (f" (+{len(gone) - 5} more)" if len(gone) > 5 else "")
        verb = "deleted" if removed else "removing it deletes"
        output.message(f"   {name}: note: {verb} what the repository's own ignore rules ignore: {shown}")
    if report.ignored_saved:
        shown = ", ".join(report.ignored_saved[:5]) + (f" (+{len(report.ignored_saved) - 5} more)" if len(report.ignored_saved) > 5 else "")
        output.message(f"   {name}: note: ignored files kept in the backup too: {shown}")
