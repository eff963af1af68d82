"""``hybridiso up [AGENT...]``: converge the machine to the manifest.

Plan first, then act (like compose's convergence plan): every selected agent
gets one action (create, resume, setup, start, noop); ports are leased for all
of them before anything is created; creations run in parallel, with git's own
lock contention retried in ``hybridiso.git``.  Ctrl-C rolls back what this run
half-created and exits 130 (FAULTS #9).
"""
from __future__ import annotations

import argparse
import os
import threading
import time
from pathlib import Path
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

from hybridiso import git, lifecycle, output, ports, strategies
from hybridiso.commands.common import add_json_flag, check_names, context, make_plan, project_from_args
from hybridiso.errors import UserError, is_disk_full
from hybridiso.errors import Cancelled
from hybridiso.lifecycle import ENV_EXCLUDE
from hybridiso.planner import AgentPlan
from hybridiso.project import Project
from hybridiso.reconcile import adopt_from_reality
from hybridiso.state import PHASE_CREATING, PHASE_READY, AgentRecord, State
from hybridiso.strategies.base import EnvContext

HELP = "create or update agents' environments to match the manifest"


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "up",
        help=HELP,
        description=HELP + ". Running it twice changes nothing the second time.",
    )
    p.add_argument("agents", nargs="*", metavar="AGENT", help="only these agents (default: all)")
    p.add_argument("-j", "--jobs", type=int, default=0, help="environments created at once (default: cores, at least 2)")
    add_json_flag(p)


@dataclass
class Outcome:
    name: str
    strategy: str
    action: str
    ok: bool
    seconds: float
    error: str | None = None
    path: str | None = None
    ports: dict[str, int] | None = None


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
        if state.rebuilt_from:
            output.warn(state.rebuilt_from)
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
        for p in selected:
            for note in p.warnings:
                output.warn(f"{p.agent.name}: {note}")
            strategies.get(p.strategy)  # unknown/unavailable strategy: fail before acting
        selected, refused = check_docker(project, selected)
        outcomes = refused + converge(project, state, selected, base_commit, args.jobs)
    if args.json:
        for o in outcomes:
            record = state.agents.get(o.name)
            if record is not None:
                o.path, o.ports = record.path, dict(record.ports)
        output.print_json([o.__dict__ for o in outcomes])
    failed = [o for o in outcomes if not o.ok]
    if failed:
        details = "\n".join(f"  {o.name}: {o.error}" for o in failed)
        raise UserError(f"{len(failed)} of {len(outcomes)} agents failed:\n{details}")
    return 0


def check_docker(project: Project, selected: list[AgentPlan]) -> tuple[list[AgentPlan], list[Outcome]]:
    """Container agents need the engine (FAULTS #12: the others go ahead
    without it) and their images (FAULTS #13: checked before anything starts)."""
    containers = [p for p in selected if p.strategy == "container"]
    if not containers:
        return selected, []
    from hybridiso import compose_cli, docker_client

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
    current = {n: r.ports for n, r in state.agents.items()}
    taken = _taken_by_others(project, state, selected)
    current = {n: {k: p for k, p in leased.items() if k not in taken.get(n, {})} for n, leased in current.items()}
    wanted = {p.agent.name: p.agent.ports for p in selected}
    leases = ports.lease(wanted, current, project.manifest.ports.bounds())
    for name, held in taken.items():
        for port_name, holder in held.items():
            old = state.agents[name].ports[port_name]
            output.warn(f"{name}: its port {port_name}={old} is taken by another program ({holder}); leased {leases[name][port_name]} instead")
    return leases


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
    project: Project, state: State, selected: list[AgentPlan], base_commit: str, jobs: int
) -> list[Outcome]:
    store = project.store
    leases = _lease_ports(project, state, selected)  # fails before anything is created (FAULTS #14)
    git.add_exclude(project.repo.common_dir, ENV_EXCLUDE)
    todo: list[tuple[EnvContext, str]] = []
    for p in selected:
        name = p.agent.name
        record = state.agents.get(name)
        if record is not None and record.phase == PHASE_CREATING:
            # an earlier run was interrupted half-way: undo it, then create anew
            try:
                lifecycle.rollback(context(project, state, name))
            except UserError as e:
                raise UserError(f"{name}: an interrupted creation could not be undone: {e.message}", hint=e.hint) from None
            del state.agents[name]
            store.save(state)
            record = None
        carried_branch = False
        if record is not None and not strategies.get(record.strategy).observe(context(project, state, name)).exists:
            # deleted by hand (FAULTS #7): clear git's metadata, create it again
            output.warn(f"{name}: its directory {record.path} is gone; creating it again")
            strategies.get(record.strategy).remove(context(project, state, name))
            carried_branch = record.created_branch
            del state.agents[name]
            record = None
        if record is None:
            record = AgentRecord(
                name=name,
                strategy=p.strategy,
                branch=p.branch,
                path=p.path,
                base=project.manifest.base,
                base_commit=base_commit,
            )
            state.agents[name] = record
            record.ports = leases[name]
            ctx = context(project, state, name)
            lifecycle.prepare(ctx)
            record.created_branch = record.created_branch or carried_branch
            todo.append((ctx, "create"))
        else:
            record.ports = leases[name]
            todo.append((context(project, state, name), "update"))
    store.save(state)  # the journal: every creation is on disk before it starts

    outcomes: list[Outcome] = []
    jobs = jobs if jobs > 0 else max(2, os.cpu_count() or 1)
    cancel = threading.Event()
    for ctx, _ in todo:
        ctx.cancel = cancel
    width = max((len(c.name) for c, _ in todo), default=8)
    save_error: UserError | None = None
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
                    output.progress_line(outcome.ok, outcome.name, outcome.strategy, outcome.action, outcome.seconds, width)
                    if futures[f].record.extra.get("rolled_back"):
                        state.agents.pop(outcome.name, None)
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
            for f, ctx in futures.items():
                if ctx.record.phase == PHASE_CREATING:
                    try:
                        lifecycle.rollback(ctx)
                    except Exception as e:  # noqa: BLE001 - the others still roll back
                        # the record stays, marked creating: the next `up` rolls it back again
                        message = e.message if isinstance(e, UserError) else f"{type(e).__name__}: {e}"
                        output.warn(f"{ctx.name}: could not roll back: {message}; `hybridiso up` retries, `hybridiso gc --yes` removes it")
                        continue
                    state.agents.pop(ctx.name, None)
            store.save(state)
            raise
    if save_error is not None:
        store.save(state)  # once more: space may have been freed by the rollbacks
    return outcomes


def _one(ctx: EnvContext, action: str) -> Outcome:
    started = time.monotonic()
    strategy = ctx.record.strategy
    try:
        if action == "create":
            lifecycle.create(ctx)
            verb = "Created"
        else:
            verb = _update(ctx)
        return Outcome(ctx.name, strategy, verb, True, time.monotonic() - started)
    except Cancelled:
        return Outcome(ctx.name, strategy, "Cancelled", False, time.monotonic() - started, "interrupted")
    except Exception as e:  # one agent's failure must not hide the others'
        error = str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {e}"
        if action == "create" and (is_disk_full(e) or _space_left(Path(ctx.record.path)) < LOW_SPACE):
            # FAULTS #15: a half-made environment only takes more of the
            # space that ran out; undo it now rather than on the next run
            error = "the disk is full (No space left on device)"
            try:
                lifecycle.rollback(ctx)
                ctx.record.extra["rolled_back"] = True
                error += "; what it had made is rolled back"
            except Exception:  # noqa: BLE001 - the record stays marked creating: the next up retries
                error += "; rolling back failed too: the next `hybridiso up` retries"
        return Outcome(ctx.name, strategy, "Failed", False, time.monotonic() - started, error)


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


def _update(ctx: EnvContext) -> str:
    """An existing env: refresh its env file, re-run setup if its inputs
    changed, restart what should run."""
    from hybridiso import envfile

    if ctx.cancel.is_set():  # Ctrl-C while it waited for a worker: touch nothing
        raise Cancelled(ctx.name)
    changed = envfile.write_env_file(ctx.path, lifecycle.environment_for(ctx.project, ctx.agent, ctx.record))
    reran = lifecycle.run_setup(ctx)
    strategy = strategies.get(ctx.record.strategy)
    observation = strategy.observe(ctx)
    did = None
    if observation.process is not None:
        # something runs (a container): make it match its file again -- a
        # changed manifest recreates it, a stopped one starts
        did = strategy.start(ctx)
    ctx.record.phase = PHASE_READY
    if did == "recreated":
        return "Recreated"
    if did in ("created", "started"):
        return "Restarted"
    if reran:
        return "Set up"
    return "Updated" if changed else "Up to date"
