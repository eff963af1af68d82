"""``hybridiso up [AGENT...]``: converge the machine to the manifest.

Plan first, then act (like compose's convergence plan): every selected agent
gets one action (create, resume, setup, start, noop); ports are leased for all
of them before anything is created; creations run in parallel, with git's own
lock contention retried in ``hybridiso.git``.  Ctrl-C rolls back what this run
half-created and exits 130 (docs/faults.md row 9).
"""
from __future__ import annotations

import argparse
import os
import threading
import time
from pathlib import Path
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Literal

from hybridiso import git, output, ports, ready_marker, safe_files, strategies
from hybridiso.envs import branches
from hybridiso.envs import lifecycle
from hybridiso.commands.common import add_json_flag, check_names, check_records, int_in, make_plan, project_from_args
from hybridiso.env_context import context, environment_for
from hybridiso.errors import UserError, is_disk_full
from hybridiso.errors import Cancelled
from hybridiso.envs.lifecycle import ENV_EXCLUDE
from hybridiso.planner import AgentPlan
from hybridiso.project import Project, require_workspace, write_owner_marker
from hybridiso.envs.reconcile import adopt_from_reality
from hybridiso.state import PHASE_CREATING, PHASE_READY, AgentRecord, State
from hybridiso.env_context import EnvContext

HELP = "create or update agents' environments to match the manifest"
MAX_JOBS = 256

# what up does with an agent: make its environment, or check the one it has
UpAction = Literal["create", "update"]
# what it did (the progress line's word, and up --json's "action")
UpResult = Literal["Created", "Recreated", "Restarted", "Set up", "Updated", "Up to date", "Failed", "Kept", "Cancelled"]
UP_TO_DATE: UpResult = "Up to date"


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "up",
        help=HELP,
        description=HELP + ". Running it twice changes nothing the second time.",
    )
    p.add_argument("agents", nargs="*", metavar="AGENT", help="only these agents (default: all)")
    p.add_argument("-j", "--jobs", type=int_in(1, MAX_JOBS), default=0, metavar="N", help=f"environments created at once, 1-{MAX_JOBS} (default: cores, at least 2)")
    add_json_flag(p)


@dataclass
class Outcome:
    name: str
    strategy: str
    action: UpResult
    ok: bool
    seconds: float
    error: str | None = None
    path: str | None = None
    ports: dict[str, int] | None = None
    note: str = ""  # said on the progress line, e.g. how a clone's objects were made


def run(args: argparse.Namespace) -> int:
    project = project_from_args(args)
    repo = project.repo
    if not repo.has_commits:
        raise UserError(
            "the repository has no commits yet, so there is nothing to branch agents from",
            hint="make a first commit (git commit --allow-empty -m init works), then run `hybridiso up`",
        )
    with project.store.locked("up"):
        state = project.store.load()
        for note in state.warnings:
            output.warn(note)
        adopt_from_reality(project, state)
        names = check_names(project, args.agents)
        missing_in_manifest = [n for n in names if n not in {a.name for a in project.manifest.agents}]
        if missing_in_manifest:
            raise UserError(f"{', '.join(missing_in_manifest)} is not in the manifest any more; `hybridiso down` removes it")
        base_commit = git.resolve_commit(project.root, project.manifest.base)
        if base_commit is None:
            raise UserError(
                f"base {project.manifest.base!r} does not name a commit in {project.root}",
                hint="set `base:` in hybridiso.yaml to an existing branch, tag or commit",
            )
        plan = make_plan(project, state)
        for w in plan.warnings:
            output.warn(w)
        selected = [p for p in plan.agents if not names or p.agent.name in names]
        selected, left_alone = _without_set_aside(state, selected)
        for p in selected:
            for note in p.warnings:
                output.warn(f"{p.agent.name}: {note}")
            strategies.get(p.strategy)  # unknown/unavailable strategy: fail before acting
        check_records(project, state, [p.agent.name for p in selected])  # docs/faults.md row 30: before anything is touched
        # a branch that would shadow a remote-tracking one is a manifest
        # problem: refused for every agent before anything is made
        refs = branches.refuse_shadowing(project.root, project.manifest.agents)
        selected, refused = check_docker(project, selected)
        outcomes = left_alone + refused + converge(project, state, selected, base_commit, args.jobs, refs)
    if args.json:
        for o in outcomes:
            record = state.agents.get(o.name)
            if record is not None:
                o.path, o.ports = record.path, dict(record.ports)
        output.print_json(outcomes)
    failed = [o for o in outcomes if not o.ok]
    if failed:
        details = "\n".join(f"  {o.name}: {o.error}" for o in failed)
        raise UserError(f"{len(failed)} of {len(outcomes)} agents failed:\n{details}")
    return 0


def _without_set_aside(state: State, selected: list[AgentPlan]) -> tuple[list[AgentPlan], list[Outcome]]:
    """An agent whose record is set aside (a strategy this hybridiso does not
    know) is not touched: nothing is created at its path, and it fails."""
    left_alone = []
    for p in selected:
        aside = state.set_aside.get(p.agent.name)
        if aside is not None:
            error = f"{aside.reason}: left alone (use the hybridiso that made it, or remove its record by hand)"
            left_alone.append(Outcome(p.agent.name, str(aside.raw.get("strategy")), "Failed", False, 0.0, error))
            output.progress_line(False, p.agent.name, str(aside.raw.get("strategy")), "Failed", None)
    return [p for p in selected if p.agent.name not in state.set_aside], left_alone


def check_docker(project: Project, selected: list[AgentPlan]) -> tuple[list[AgentPlan], list[Outcome]]:
    """Container agents need the engine (docs/faults.md row 12: the others go ahead
    without it) and their images (docs/faults.md row 13: checked before anything starts)."""
    containers = [p for p in selected if p.strategy == "container"]
    if not containers:
        return selected, []
    from hybridiso.containers import compose_cli
    from hybridiso.containers import docker_client

    # An agent with containerised services is started by Compose v2: if it is
    # missing, say so before creating anything.  Its version check is a
    # process of its own, so it runs while the engine is asked.  (One-container
    # projects start through the engine itself: engine_apply.py.)
    compose_found = None
    if any(project.manifest.runs_services_in_containers(p.agent) for p in containers):
        compose_check = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hybridiso-compose-check")
        compose_found = compose_check.submit(compose_cli.compose_command)
        compose_check.shutdown(wait=False)
    ok, why = docker_client.reachable()
    if not ok:
        refused = [Outcome(p.agent.name, p.strategy, "Failed", False, 0.0, why) for p in containers]
        for o in refused:
            output.progress_line(False, o.name, o.strategy, "Failed", None)
        return [p for p in selected if p.strategy != "container"], refused
    if compose_found is not None:
        compose_found.result()
    for image in sorted({p.agent.image for p in containers if p.agent.image}):
        docker_client.ensure_image(image)
    return selected, []


def _lease_ports(project: Project, state: State, selected: list[AgentPlan]) -> dict[str, dict[str, int]]:
    """Every selected agent's ports, never a port another repository on the
    machine has leased (docs/faults.md row 37), before anything is created (#14)."""
    current = {n: r.ports for n, r in state.agents.items()}
    taken = _taken_by_others(project, state, selected)
    current = {n: {k: p for k, p in leased.items() if k not in taken.get(n, {})} for n, leased in current.items()}
    wanted = {p.agent.name: p.agent.ports for p in selected}
    leases = ports.lease_machine_wide(project.repo.common_dir, wanted, current, project.manifest.ports.bounds())
    if leases.note:
        output.warn(leases.note)
    for moved in leases.moved:
        output.warn(f"{moved}: it gets another port")
    for name, held in taken.items():
        for port_name, holder in held.items():
            old = state.agents[name].ports[port_name]
            output.warn(f"{name}: its port {port_name}={old} is taken by another program ({holder}); leased {leases.ports[name][port_name]} instead")
    return leases.ports


def _taken_by_others(project: Project, state: State, selected: list[AgentPlan]) -> dict[str, dict[str, str]]:
    """Container agents' leased ports that another program took while the
    agent was not publishing them: leased again (issue 11).  (A worktree
    agent's port in use is most likely its own server: it keeps it.)"""
    leased = {p.agent.name: state.agents[p.agent.name].ports for p in selected if p.strategy == "container" and p.agent.name in state.agents}
    if not any(leased.values()):
        return {}
    from hybridiso.strategies import container

    return container.ports_taken_by_others(project, leased)


def converge(
    project: Project, state: State, selected: list[AgentPlan], base_commit: str, jobs: int, refs: branches.Refs | None = None
) -> list[Outcome]:
    store = project.store
    if any(p.agent.name not in state.agents or state.agents[p.agent.name].phase == PHASE_CREATING for p in selected):
        require_workspace(project.workspace)  # one clear error, not a PermissionError per agent (issue 16)
    leases = _lease_ports(project, state, selected)  # fails before anything is created (docs/faults.md row 14)
    git.add_exclude(project.repo.common_dir, ENV_EXCLUDE)
    refs = refs if refs is not None else branches.Refs.read(project.root)  # once for every agent's branch question
    todo: list[tuple[EnvContext, UpAction]] = []
    refused: list[Outcome] = []
    for p in selected:
        try:
            todo.append(_prepare_one(project, state, p, base_commit, leases[p.agent.name], refs))
        except lifecycle.WorkKept as e:
            # work was written into its unfinished environment since (docs/faults.md
            # row 25): this agent stays as it is, the others go on
            refused.append(Outcome(p.agent.name, p.strategy, "Kept", False, 0.0, str(e)))
        except UserError as e:
            # one agent's problem (a directory in its way, its branch checked
            # out elsewhere) stops that agent only; the others are created
            refused.append(Outcome(p.agent.name, p.strategy, "Failed", False, 0.0, str(e)))
    store.save(state)  # the journal: every creation is on disk before it starts

    outcomes: list[Outcome] = list(refused)
    jobs = jobs if jobs > 0 else max(2, os.cpu_count() or 1)
    cancel = threading.Event()
    for ctx, _ in todo:
        ctx.cancel = cancel
    width = max([*(len(c.name) for c, _ in todo), *(len(o.name) for o in refused)], default=8)
    for o in refused:
        output.progress_line(False, o.name, o.strategy, o.action, None, width)
    save_error: UserError | None = None
    unsaved = False
    if any(a == "create" for _, a in todo):
        output.message(f"[+] {sum(a == 'create' for _, a in todo)} to create, {sum(a == 'update' for _, a in todo)} to check")
    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="hybridiso-up") as pool:
        futures: dict[Future[Outcome], EnvContext] = {pool.submit(_one, ctx, action): ctx for ctx, action in todo}
        pending = set(futures)
        try:
            while pending:
                done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                for f in done:
                    outcome = f.result()
                    outcomes.append(outcome)
                    output.progress_line(outcome.ok, outcome.name, outcome.strategy, outcome.action, outcome.seconds, width, outcome.note)
                    if futures[f].record.rolled_back:
                        state.agents.pop(outcome.name, None)
                    if outcome.ok and outcome.action == UP_TO_DATE:
                        # nothing of it changed on disk: one save at the end
                        # does for all of them (a save per agent wrote the
                        # whole file N times: a no-op up was O(N^2))
                        unsaved = True
                        continue
                    try:
                        store.save(state)
                    except UserError as e:
                        # keep going: the others are mid-creation; the last good
                        # file stays, and their records say "creating" until saved
                        save_error = e
        except KeyboardInterrupt:
            cancel.set()
            output.message("hybridiso: interrupted; stopping and rolling back what this run half-created...")
            wait(pending)
            for ctx in futures.values():
                if ctx.record.phase == PHASE_CREATING:
                    try:
                        lifecycle.rollback(ctx, check_work=False)  # this run's own, half-made
                    except Exception as e:  # noqa: BLE001 - the others still roll back
                        # the record stays, marked creating: the next `up` rolls it back again
                        message = e.message if isinstance(e, UserError) else f"{type(e).__name__}: {e}"
                        output.warn(f"{ctx.name}: could not roll back: {message}; `hybridiso up` retries, `hybridiso gc --yes` removes it")
                        continue
                    state.agents.pop(ctx.name, None)
            store.save(state)
            _release_unrecorded(project, state, selected)
            raise
    if save_error is not None or unsaved:
        store.save(state)  # once more: space may have been freed by the rollbacks
    _release_unrecorded(project, state, selected)
    return outcomes


def _release_unrecorded(project: Project, state: State, selected: list[AgentPlan]) -> None:
    """Agents that ended with no record (refused, rolled back) give their
    fresh leases back to the machine (other repositories would find them
    stale anyway: no record holds them)."""
    gone = [p.agent.name for p in selected if p.agent.name not in state.agents]
    if gone:
        ports.release(project.repo.common_dir, gone)


def _prepare_one(
    project: Project, state: State, p: AgentPlan, base_commit: str, leased: dict[str, int], refs: branches.Refs
) -> tuple[EnvContext, UpAction]:
    """One agent's action, with its record ready to be saved as the journal.
    A UserError is this agent's failure; its record is left as it was (a
    half-made one stays ``creating`` for the next run) or not made at all."""
    name = p.agent.name
    record = state.agents.get(name)
    carried: AgentRecord | None = None
    if record is not None and record.phase == PHASE_CREATING:
        # an earlier run was interrupted half-way: undo it, then create anew
        try:
            lifecycle.rollback(context(project, state, name), check_work=True)
        except lifecycle.WorkKept:
            raise  # its own outcome: kept, with what was found
        except UserError as e:
            raise UserError(f"an interrupted creation could not be undone: {e.message}", hint=e.hint) from None
        del state.agents[name]
        project.store.save(state)
        carried = record  # a branch it made that had commits survived the rollback: still ours
        record = None
    if record is not None and not strategies.get(record.strategy).observe(context(project, state, name)).exists:
        # deleted by hand (docs/faults.md row 7): clear git's metadata, create it again
        output.warn(f"{name}: its directory {record.path} is gone; creating it again")
        strategies.get(record.strategy).remove(context(project, state, name))
        del state.agents[name]
        carried, record = record, None
    if record is not None:
        record.ports = leased
        return context(project, state, name), "update"
    record = AgentRecord(
        name=name,
        strategy=p.strategy,
        branch=p.branch,
        path=p.path,
        base=project.manifest.base,
        base_commit=base_commit,
        ports=leased,
    )
    state.agents[name] = record
    ctx = context(project, state, name)
    if carried is not None:
        refs = branches.Refs.read(project.root)  # the rollback may have deleted its branch
    try:
        lifecycle.prepare(ctx, refs, carried)
    except BaseException:
        del state.agents[name]  # nothing was made for it
        raise
    return ctx, "create"


def _one(ctx: EnvContext, action: UpAction) -> Outcome:
    started = time.monotonic()
    strategy = ctx.record.strategy
    try:
        if action == "create":
            lifecycle.create(ctx)
            verb: UpResult = "Created"
        else:
            verb = _update(ctx)
        return Outcome(ctx.name, strategy, verb, True, time.monotonic() - started, note=_note(ctx, action))
    except Cancelled:
        return Outcome(ctx.name, strategy, "Cancelled", False, time.monotonic() - started, "interrupted")
    except Exception as e:  # noqa: BLE001 - one agent's failure must not hide the others'
        error = str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {e}"
        if action == "create" and (is_disk_full(e) or _space_left(Path(ctx.record.path)) < LOW_SPACE):
            # docs/faults.md row 15: a half-made environment only takes more of the
            # space that ran out; undo it now rather than on the next run
            error = "the disk is full (No space left on device)"
            try:
                lifecycle.rollback(ctx, check_work=False)  # this run's own, half-made
                ctx.record.rolled_back = True
                error += "; what it had made is rolled back"
            except Exception:  # noqa: BLE001 - the record stays marked creating: the next up retries
                error += "; rolling back failed too: the next `hybridiso up` retries"
        return Outcome(ctx.name, strategy, "Failed", False, time.monotonic() - started, error)


def _note(ctx: EnvContext, action: UpAction) -> str:
    if action == "create" and ctx.record.clone_objects == git.CLONE_COPIED:
        # docs/faults.md row 36: say it, it costs the whole object store again on disk
        return "objects copied, not hard-linked: the workspace is on another file system than the repository"
    return ""


LOW_SPACE = 1 << 20  # git says only "unable to write file" when the disk fills


def _space_left(path: Path) -> int:
    """Bytes free for us on the file system that holds ``path``."""
    for p in (path, *path.parents):
        try:
            st = os.statvfs(p)
        except OSError:
            continue
        return st.f_bavail * st.f_frsize
    return LOW_SPACE


def _update(ctx: EnvContext) -> UpResult:
    """An existing env: refresh its env file, re-run setup if its inputs
    changed, restart what should run."""
    from hybridiso import envfile

    if ctx.cancel.is_set():  # Ctrl-C while it waited for a worker: touch nothing
        raise Cancelled(ctx.name)
    if ctx.record.strategy == "clone" and safe_files.is_plain_dir(ctx.path / ".git"):
        # commands run from inside the clone act on this project (docs/faults.md row 22)
        write_owner_marker(ctx.path / ".git", ctx.project.repo.common_dir)
    changed = envfile.write_env_file(ctx.path, environment_for(ctx.project, ctx.agent, ctx.record))
    reran = lifecycle.run_setup(ctx)
    strategy = strategies.get(ctx.record.strategy)
    observation = strategy.observe(ctx)
    did = None
    if observation.process is not None:
        # something runs (a container): make it match its file again -- a
        # changed manifest recreates it, a stopped one starts
        did = strategy.start(ctx)
    if not ready_marker.is_marked(ctx.project.repo.common_dir, ctx.path, ctx.name):
        # made before the marker existed: its ready record vouches for it
        ready_marker.mark(ctx.project.repo.common_dir, ctx.path, ctx.name)
    ctx.record.phase = PHASE_READY
    if did == "recreated":
        return "Recreated"
    if did in ("created", "started"):
        return "Restarted"
    if reran:
        return "Set up"
    return "Updated" if changed else UP_TO_DATE
