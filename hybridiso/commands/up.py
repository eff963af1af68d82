"""``hybridiso up [AGENT...]``: converge the machine to the manifest.

Plan first, then act, as compose separates its convergence plan from
executing it.  ``run`` checks what must hold for every agent before anything
is touched (the base, the records, branches that would shadow remote ones,
Docker and images for container agents).  ``converge`` then

1. plans (``plan_jobs``): leases every agent's ports (an exhausted range
   fails before anything is made), and gives each agent one job with its
   reason -- ``create`` (no environment yet; or its directory was deleted by
   hand; or an earlier run was interrupted half-way, which is rolled back
   first) or ``update`` (it exists: env file, setup if its inputs changed,
   restart what should run) -- or refuses it alone (a directory in its way,
   work written into its unfinished environment); the journal (every
   record about to be created, phase ``creating``) is saved before any job
   runs;
2. executes the jobs on a thread pool (``_execute``), saving the state as
   each finishes; git's own lock contention is retried in ``hybridiso.git``;
3. on Ctrl-C or SIGTERM (``_interrupted``): cancels what has not started,
   waits for the rest, rolls back what this run half-created, and exits 130
   (docs/faults.md row 9).
"""
from __future__ import annotations

import argparse
import os
import threading
import time
from pathlib import Path
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Literal

from hybridiso import git, output, output_live, ports, ready_marker, safe_files, strategies
from hybridiso.envs import admission
from hybridiso.envs import branches
from hybridiso.envs import lifecycle
from hybridiso.commands.common import add_json_flag, check_names, check_records, int_in, make_plan, project_from_args
from hybridiso.env_context import context, environment_for
from hybridiso.errors import AgentsFailed, BugsReported, UserError, is_disk_full, job_problem
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
    p.add_argument("-j", "--jobs", type=int_in(1, MAX_JOBS), default=0, metavar="N", help=f"environments worked on at once (laying files, includes, starting), 1-{MAX_JOBS} (default: cores, at least 2); setups are admitted by workload.kind and limits: (docs/manifest.md)")
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
    why: str = ""  # why the plan gave it its job (Job.why)
    bug: bool = field(default=False, metadata=output.NOT_IN_JSON)  # the error is a bug in hybridiso (its crash log is named): exit 3


def run(args: argparse.Namespace) -> int:
    project = project_from_args(args)
    repo = project.repo
    if not repo.has_commits:
        raise UserError(
            "the repository has no commits yet, so there is nothing to branch agents from",
            hint="make a first commit (git commit --allow-empty -m init works), then run `hybridiso up`",
        )
    with project.store.locked("up"):
        # the agents this run works on are claimed first: one another run
        # works on now is waited for, saying for whom (docs/faults.md row 10)
        project.store.claim(check_names(project, args.agents) or [a.name for a in project.manifest.agents])
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
        error = AgentsFailed("failed", [(o.name, o.error or o.action) for o in failed], len(outcomes))
        if any(o.bug for o in failed):
            raise BugsReported(str(error))
        raise error
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
    containers = [p for p in selected if strategies.uses_docker(p.strategy)]
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
        return [p for p in selected if not strategies.uses_docker(p.strategy)], refused
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
    leased = {p.agent.name: state.agents[p.agent.name].ports for p in selected if p.agent.name in state.agents}
    if not any(leased.values()):
        return {}
    return strategies.ports_taken_by_others(project, leased, {p.agent.name: p.strategy for p in selected})


CREATE: UpAction = "create"
UPDATE: UpAction = "update"


@dataclass
class Job:
    """What ``up`` will do to one agent (``CREATE`` or ``UPDATE``), and why."""

    ctx: EnvContext
    action: UpAction
    why: str


def converge(
    project: Project, state: State, selected: list[AgentPlan], base_commit: str, jobs: int, refs: branches.Refs | None = None
) -> list[Outcome]:
    # one scan of the worktrees' admin dirs for every agent's question while
    # the lock is held (issue 15); each worktree this run adds or removes clears it
    with git.one_admin_scan():
        plan, refused = plan_jobs(project, state, selected, base_commit, refs)
        project.store.save(state)  # the journal: every creation is on disk before it starts
    width = max([*(len(j.ctx.name) for j in plan), *(len(o.name) for o in refused)], default=8)
    for o in refused:
        output.progress_line(False, o.name, o.strategy, o.action, None, width)
    # the long steps (create, includes, setup, start) run without the
    # repository lock: this run's agents are claimed (StateStore.claim), so
    # status, down/gc and an up of other agents go on meanwhile, and saves
    # merge this run's records into the file as it is then. Other runs add
    # and remove worktrees meanwhile, so no admin-dir scan is kept here.
    with project.store.unlocked():
        outcomes = refused + _execute(project, state, plan, jobs if jobs > 0 else max(2, os.cpu_count() or 1), width, selected)
        _release_unrecorded(project, state, selected)
    return outcomes


def plan_jobs(
    project: Project, state: State, selected: list[AgentPlan], base_commit: str, refs: branches.Refs | None = None
) -> tuple[list[Job], list[Outcome]]:
    """Every selected agent's job, its ports leased and its record ready to be
    saved as the journal; or its refusal, which stops that agent only."""
    if any(
        p.agent.name not in state.agents
        or state.agents[p.agent.name].phase == PHASE_CREATING
        or not os.path.isdir(state.agents[p.agent.name].path)  # deleted by hand: made again
        for p in selected
    ):
        require_workspace(project.workspace)  # one clear error, not a PermissionError per agent (issue 16)
    leases = _lease_ports(project, state, selected)  # fails before anything is created (docs/faults.md row 14)
    git.add_exclude(project.repo.common_dir, ENV_EXCLUDE)
    refs = refs if refs is not None else branches.Refs.read(project.root)  # once for every agent's branch question
    plan: list[Job] = []
    refused: list[Outcome] = []
    for p in selected:
        try:
            plan.append(_prepare_one(project, state, p, base_commit, leases[p.agent.name], refs))
        except lifecycle.WorkKept as e:
            # work was written into its unfinished environment since (docs/faults.md
            # row 25): this agent stays as it is, the others go on
            refused.append(Outcome(p.agent.name, p.strategy, "Kept", False, 0.0, str(e)))
        except UserError as e:
            # one agent's problem (a directory in its way, its branch checked
            # out elsewhere, a git command failing for it) stops that agent
            # only; the others are created
            refused.append(Outcome(p.agent.name, p.strategy, "Failed", False, 0.0, str(e)))
    return plan, refused


def _execute(project: Project, state: State, plan: list[Job], workers: int, width: int, selected: list[AgentPlan]) -> list[Outcome]:
    """Run the jobs, ``workers`` at a time, saving the state as each
    finishes; Ctrl-C goes to ``_interrupted``."""
    store = project.store
    outcomes: list[Outcome] = []
    cancel = threading.Event()
    for job in plan:
        job.ctx.cancel = cancel
    save_error: UserError | None = None
    unsaved = False
    if any(j.action == CREATE for j in plan):
        output.message(f"[+] {sum(j.action == CREATE for j in plan)} to create, {sum(j.action == UPDATE for j in plan)} to check")
    # issue 15: every job has a thread; admission.py lets `workers` of them
    # work at once and setups in by their kind, saying who waits
    drawn = threading.Event()
    board = admission.Admission(admission.setup_limits(project.manifest), workers, lambda text: None if drawn.is_set() else output.message(f"hybridiso: {text}"))
    for job in plan:
        job.ctx.steps = board.steps_for(job.ctx)
    with output_live.drawing(board.snapshot) as live, ThreadPoolExecutor(max_workers=max(1, min(len(plan), MAX_JOBS)), thread_name_prefix="hybridiso-up") as pool:
        if live:
            drawn.set()  # the drawing shows who waits
        futures: dict[Future[Outcome], Job] = {pool.submit(_one, job.ctx, job.action): job for job in plan}
        pending = set(futures)
        try:
            while pending:
                done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                changed = False
                for f in done:
                    outcome = f.result()
                    outcome.why = futures[f].why
                    outcomes.append(outcome)
                    output.progress_line(outcome.ok, outcome.name, outcome.strategy, outcome.action, outcome.seconds, width, outcome.note)
                    if futures[f].ctx.record.rolled_back:
                        state.agents.pop(outcome.name, None)
                    if outcome.ok and outcome.action == UP_TO_DATE:
                        # nothing of it changed on disk: one save at the end
                        # does for all of them (a save per agent wrote the
                        # whole file N times: a no-op up was O(N^2))
                        unsaved = True
                        continue
                    changed = True
                if not changed:
                    continue
                try:
                    # one save for the agents that finished together: each
                    # save writes the whole file (docs/benchmarks.md, issue 15)
                    store.save(state)
                except UserError as e:
                    # keep going: the others are mid-creation; the last good
                    # file stays, and their records say "creating" until saved
                    save_error = e
        except KeyboardInterrupt:
            cancel.set()
            _interrupted(project, state, pending, [job.ctx for job in futures.values()], selected)
            raise
    if save_error is not None or unsaved:
        store.save(state)  # once more: space may have been freed by the rollbacks
    return outcomes


def _interrupted(
    project: Project, state: State, pending: set[Future[Outcome]], contexts: list[EnvContext], selected: list[AgentPlan]
) -> None:
    """Ctrl-C (or SIGTERM) during the jobs: wait for the running ones (told to
    stop), then roll back what this run half-created (docs/faults.md row 9)."""
    output.message("hybridiso: interrupted; stopping and rolling back what this run half-created...")
    wait(pending)
    for ctx in contexts:
        if ctx.record.phase == PHASE_CREATING:
            try:
                lifecycle.rollback(ctx, check_work=False)  # this run's own, half-made
            except Exception as e:  # noqa: BLE001 - the others still roll back; said, never dropped
                # the record stays, marked creating: the next `up` rolls it back again
                message = e.message if isinstance(e, UserError) else job_problem(e)[0]
                output.warn(f"{ctx.name}: could not roll back: {message}; `hybridiso up` retries, `hybridiso gc --yes` removes it")
                continue
            state.agents.pop(ctx.name, None)
    project.store.save(state)
    _release_unrecorded(project, state, selected)


def _release_unrecorded(project: Project, state: State, selected: list[AgentPlan]) -> None:
    """Agents that ended with no record (refused, rolled back) give their
    fresh leases back to the machine (other repositories would find them
    stale anyway: no record holds them)."""
    gone = [p.agent.name for p in selected if p.agent.name not in state.agents]
    if gone:
        ports.release(project.repo.common_dir, gone)


def _prepare_one(
    project: Project, state: State, p: AgentPlan, base_commit: str, leased: dict[str, int], refs: branches.Refs
) -> Job:
    """One agent's job, with its record ready to be saved as the journal.
    A UserError is this agent's failure; its record is left as it was (a
    half-made one stays ``creating`` for the next run) or not made at all."""
    name = p.agent.name
    record = state.agents.get(name)
    carried: AgentRecord | None = None
    why = "no environment yet"
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
        why = "an earlier run was interrupted while creating it: rolled back, made anew"
    if record is not None and not strategies.get(record.strategy).observe(context(project, state, name)).exists:
        # deleted by hand (docs/faults.md row 7): clear git's metadata, create it again
        output.warn(f"{name}: its directory {record.path} is gone; creating it again")
        strategies.get(record.strategy).remove(context(project, state, name))
        del state.agents[name]
        carried, record = record, None
        why = "its directory was deleted"
    if record is not None:
        record.ports = leased
        return Job(context(project, state, name), UPDATE, "it exists: env file, setup if its inputs changed, what should run")
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
    return Job(ctx, CREATE, why)


def _one(ctx: EnvContext, action: UpAction) -> Outcome:
    started = time.monotonic()
    strategy = ctx.record.strategy
    try:
        with ctx.steps.job():  # its turn (envs/admission.py)
            started = time.monotonic()
            if action == CREATE:
                lifecycle.create(ctx)
                verb: UpResult = "Created"
            else:
                verb = _update(ctx)
        return Outcome(ctx.name, strategy, verb, True, time.monotonic() - started, note=_note(ctx, action))
    except Cancelled:
        return Outcome(ctx.name, strategy, "Cancelled", False, time.monotonic() - started, "interrupted")
    except Exception as e:  # noqa: BLE001 - one agent's failure must not hide the others'
        error, bug = job_problem(e)
        if action == CREATE and (is_disk_full(e) or _space_left(Path(ctx.record.path)) < LOW_SPACE):
            # docs/faults.md row 15: a half-made environment only takes more of the
            # space that ran out; undo it now rather than on the next run (git
            # does not always say so: "Could not reset index file").  A
            # workspace the kernel refuses also shows no space free (/sys):
            # require_workspace stops that before any agent is made
            error = "the disk is full (No space left on device)" + (f"; and {error}" if bug else "")
            try:
                lifecycle.rollback(ctx, check_work=False)  # this run's own, half-made
                ctx.record.rolled_back = True
                error += "; what it had made is rolled back"
            except Exception as rollback_error:  # noqa: BLE001 - the record stays marked creating: the next up retries
                said, rollback_bug = job_problem(rollback_error)
                bug = bug or rollback_bug
                error += f"; rolling back failed too ({said}): the next `hybridiso up` retries"
        return Outcome(ctx.name, strategy, "Failed", False, time.monotonic() - started, error, bug=bug)


def _note(ctx: EnvContext, action: UpAction) -> str:
    if action == CREATE and ctx.record.clone_objects == git.CLONE_COPIED:
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
    strategy = strategies.get(ctx.record.strategy)
    if not strategy.SHARES_REFS and safe_files.is_plain_dir(ctx.path / ".git"):
        # commands run from inside a clone act on this project (docs/faults.md row 22)
        write_owner_marker(ctx.path / ".git", ctx.project.repo.common_dir)
    changed = envfile.write_env_file(ctx.path, environment_for(ctx.project, ctx.agent, ctx.record))
    reran = lifecycle.run_setup(ctx)
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
