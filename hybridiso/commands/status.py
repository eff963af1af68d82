"""``hybridiso status``: every agent, from git (and Docker), not just the state file."""
from __future__ import annotations

import argparse
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from hybridiso import git, output, strategies
from hybridiso.commands.common import add_json_flag, check_names, project_from_args
from hybridiso.env_context import context
from hybridiso.report.measure import environments_disk
from hybridiso.envfile import ENV_FILE
from hybridiso.envs.health import repo_problems
from hybridiso.envs.lifecycle import log_path
from hybridiso.project import Project
from hybridiso.envs.reconcile import adopt_from_reality
from hybridiso.errors import AgentsFailed, UserError
from hybridiso.process import CommandError
from hybridiso.state import PHASE_READY, AgentRecord, LockHolder, SetAside, State
from hybridiso.strategies.base import Observation
from hybridiso.output import NOT_IN_JSON, plural

HELP = "show each agent's environment: strategy, branch, drift, dirty files, ports, disk"


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("status", help=HELP, description=HELP + ".")
    p.add_argument("agents", nargs="*", metavar="AGENT")
    p.add_argument("--no-disk", action="store_true", help="skip measuring disk use (faster on huge trees)")
    p.add_argument(
        "--check",
        action="store_true",
        help="exit 1 when any agent is not in the state the manifest asks for (for scripts and monitors)",
    )
    add_json_flag(p)


@dataclass
class AgentStatus:
    agent: str
    strategy: str
    state: str
    branch: str
    path: str
    ahead: int | None = None
    behind: int | None = None
    dirty: int | None = None
    ports: dict[str, int] = field(default_factory=dict)
    process: str | None = None
    disk_bytes: int | None = None  # unique to this environment, as `report` counts it (issue 16)
    disk_shared_bytes: int | None = None  # hard-linked to the object store or another environment
    problems: list[str] = field(default_factory=list)
    in_manifest: bool = True
    boundary: dict[str, Any] | None = None  # a container agent's: what Docker says it got (issue 12)
    # what differs from what the manifest asks for (None: nothing); its
    # text is among ``problems`` too.  `status --check` exits 1 on any.
    off: str | None = None
    land: dict[str, Any] | None = None  # its last `land` result (land/last.json), for --json
    creating: bool = field(default=False, metadata=NOT_IN_JSON)  # its record is not ready (what ``state`` says in words)

    JSON_PROPERTIES: ClassVar[tuple[str, ...]] = ("ok",)

    @property
    def ok(self) -> bool:
        return self.off is None


def collect(project: Project, state: State, names: list[str], with_disk: bool = True) -> list[AgentStatus]:
    base = project.manifest.base
    base_commit = git.resolve_commit(project.root, base)
    manifest_names = [a.name for a in project.manifest.agents]
    recorded = sorted(n for n in {*state.agents, *state.set_aside} if n not in manifest_names)
    wanted = [n for n in manifest_names + recorded if not names or n in names]
    # the drift of every branch from base in one for-each-ref (issue 15);
    # None on a git without %(ahead-behind): one rev-list per agent then
    # (of the recorded branches only: a repository's thousands of others cost nothing)
    recorded_branches = [r.branch for r in state.agents.values() if isinstance(r.branch, str) and r.branch]
    drift = git.ahead_behind_of_branches(project.root, base_commit, recorded_branches) if base_commit else None

    def one(name: str) -> AgentStatus:
        aside = state.set_aside.get(name)
        if aside is not None:
            return _set_aside(aside, name in manifest_names)
        record = state.agents.get(name)
        if record is None:
            st = AgentStatus(name, "-", "not created", "-", str(project.env_path(name)))
            st.off = "not created yet: `hybridiso up` creates it"  # said by its state, not a problem
            return st
        unsafe = project.record_problem(name, record)
        if unsafe:  # docs/faults.md row 30: shown, never looked into
            problem = f"hybridiso will not act on this record: {unsafe}"
            st = AgentStatus(
                name, str(record.strategy), "refused", str(record.branch), str(record.path),
                problems=[problem], in_manifest=name in manifest_names,
            )
            return _off(st, problem)
        # an `up` running now has claimed the agents it works on: their
        # 'creating' records are in progress, not interrupted, and their
        # directories may not exist yet
        holder = _creator(project.store.agent_holder(name)) if record.phase != PHASE_READY else None
        try:
            return _observe(project, state, record, name in manifest_names, base_commit, holder, drift)
        except (OSError, UserError) as e:  # a CommandError is a UserError
            # never exit 3 (nor 1, for every row) for what happens to one
            # environment while we look at it: a concurrent `down` removed it,
            # git cannot read it, Docker failed to answer about its container
            return _unobservable(record, name in manifest_names, e)

    # each agent is mostly a `git status` (a process that keeps a core busy):
    # as many at once as there are cores, and a second so one waits less
    # on the other's start (issue 15: eight on two cores only fought)
    workers = max(2, os.cpu_count() or 1)
    with git.one_admin_scan(), ThreadPoolExecutor(max_workers=workers) as pool:
        rows = list(pool.map(one, wanted))
    if with_disk:
        _measure_disk(project, rows)
    return rows


def _measure_disk(project: Project, rows: list[AgentStatus]) -> None:
    """Unique and shared bytes of every environment git can read, in one
    count with the repository's store: the very figures `report` gives
    (issue 16: a clone's hard-linked objects are shared, not its own)."""
    measured = [r for r in rows if r.dirty is not None or (r.creating and Path(r.path).is_dir())]
    if not measured:
        return
    disk = environments_disk(project.repo.common_dir, project.store.dir, {r.agent: Path(r.path) for r in measured})
    for r in measured:
        share = disk.envs[r.agent]
        r.disk_bytes, r.disk_shared_bytes = share.unique_bytes, share.shared_bytes
        if not Path(r.path).is_dir():  # removed while we looked (a concurrent `down`)
            _gone(r)


def _off(st: AgentStatus, problem: str) -> AgentStatus:
    """Mark ``st`` as not what the manifest asks for; the first reason
    found is the one `--check` names."""
    if problem not in st.problems:
        st.problems.append(problem)
    if st.off is None:
        st.off = problem
    return st


# what a container's exit code says about how it ended
_EXIT_MEANINGS = {
    0: "its command finished",
    1: "its command failed",
    126: "its command could not be run",
    127: "its command was not found in the image",
    137: "it was killed (SIGKILL: out of memory, `docker kill`, or a `docker stop` that timed out)",
    143: "it was stopped (SIGTERM: `docker stop`)",
}


def _process_problem(name: str, obs: Observation) -> str | None:
    """What is wrong with a container agent's container, from what Docker
    says of it; None when it runs as asked, or when the environment runs
    nothing (``process`` is None: a plain directory)."""
    if obs.process is None:
        return None
    if not obs.docker_reachable:
        return "Docker is not reachable, so whether its container runs is not known"
    info = obs.container
    if info is None:
        return "its container is gone: `hybridiso up` starts it again"
    if info.status == "exited" and info.exit_code is not None:
        code = info.exit_code
        meaning = _EXIT_MEANINGS.get(code, "its command failed" if code < 128 else f"it was killed by signal {code - 128}")
        return f"its container exited with code {code}: {meaning}; `docker logs` shows its output, `hybridiso up {name}` starts it again"
    if info.status == "running" and info.health == "unhealthy":
        return f"its container is unhealthy (its healthcheck fails): `docker inspect` shows the check's runs, `hybridiso up {name}` recreates it"
    if info.status == "running":
        return None
    return f"its container is {info.describe()}, not running: `hybridiso up {name}` starts it"


def _observe(
    project: Project,
    state: State,
    record: AgentRecord,
    in_manifest: bool,
    base_commit: str | None,
    holder: str | None,
    drift: dict[str, tuple[int, int]] | None = None,
) -> AgentStatus:
    name, base = record.name, project.manifest.base
    ctx = context(project, state, name)
    strategy = strategies.get(record.strategy)
    creating = record.phase != PHASE_READY
    if creating and holder is not None:
        # docs/faults.md row 10: being made right now by the run that holds the lock
        st = AgentStatus(
            name, record.strategy, f"creating (in progress: {holder})", record.branch, record.path, ports=dict(record.ports), in_manifest=in_manifest, creating=True
        )
        st.off = f"being created by {holder}"  # not a problem: said by its state
        return st
    obs = strategy.observe(ctx)
    st = AgentStatus(
        name,
        record.strategy,
        record.phase,
        record.branch,
        record.path,
        ports=dict(record.ports),
        process=obs.process,
        problems=list(obs.problems),
        in_manifest=in_manifest,
        boundary=dict(obs.boundary) if obs.boundary is not None else None,
        # what the strategy found wrong (a worktree git does not list, network
        # isolation not in force...) is each a way it is not as asked
        off=obs.problems[0] if obs.problems else None,
    )
    if creating:
        st.state, st.creating = "creating (interrupted or failed; `up` redoes it)", True
        _off(st, "its creation did not finish (interrupted, or it failed): `hybridiso up` makes it again")
        log = log_path(project, name, "setup")
        if log.exists():
            st.problems.append(f"setup log: {log}")
    if not obs.exists:
        if not creating:
            st.state = "missing"
            _off(st, "the directory was deleted; `up` recreates it, `gc` cleans up")
        return st
    if not in_manifest:
        _off(st, f"not in the manifest any more; `hybridiso down {name}` removes it")
    process_problem = _process_problem(name, obs)  # None where nothing runs (obs.process is None)
    if process_problem is not None:
        _off(st, process_problem)
    unreadable = git_link_problem(Path(record.path))
    if unreadable is not None:
        # docs/faults.md row 24: git would look upward for another repository; never ask it
        st.state = "unreadable" if not creating else st.state
        _off(st, f"git cannot read this environment: {unreadable}; its files are work and are left alone")
        return st
    if obs.registered:
        st.dirty = sum(1 for _, n in git.status_porcelain(ctx.path) if n != ENV_FILE)
        if obs.head and base_commit:
            cwd = project.root if strategy.SHARES_REFS else ctx.path
            known = drift.get(obs.head) if drift is not None and strategy.SHARES_REFS else None
            if known is not None:  # a branch of the repository is at its HEAD: its drift is HEAD's
                st.ahead, st.behind = known
            elif strategy.SHARES_REFS or git.resolve_commit(ctx.path, base_commit):
                # a clone (its own refs), a detached HEAD no branch is at
                st.ahead, st.behind = git.ahead_behind(cwd, base_commit, obs.head)
            if st.behind:  # drift from base (issue 5): a note, not a fault
                st.problems.append(f"{plural(st.behind, 'commit')} behind {base}: `hybridiso sync` rebases it")
        if obs.branch and obs.branch != record.branch:
            _off(st, f"checked out branch is {obs.branch!r}, expected {record.branch!r}")
        elif obs.head and not obs.branch and record.branch:
            # its drift above is HEAD's, not the branch's: say so
            _off(st, f"HEAD is detached at {obs.head[:12]}, expected branch {record.branch!r} (`git switch {record.branch}` in it)")
    if not Path(record.path).is_dir():  # removed while we looked (a concurrent `down`)
        return _gone(st)
    return st


def _creator(holder: LockHolder | None) -> str | None:
    """The running `up` that has claimed the agent ("hybridiso up, pid N"),
    if one has: only `up` creates environments; with no such holder a
    'creating' record was left by an earlier run."""
    return f"hybridiso up, pid {holder.pid}" if holder is not None and holder.command == "up" else None


def git_link_problem(path: Path) -> str | None:
    """Why git cannot be asked about the environment at ``path``: its .git is
    missing (git would search the directories above it) or a symlink, which
    hybridiso never makes and never follows."""
    try:
        st = os.lstat(path / ".git")
    except FileNotFoundError:
        return "its .git is missing"
    except OSError as e:
        return f"its .git cannot be read ({e.strerror})"
    if stat.S_ISLNK(st.st_mode):
        return "its .git is a symlink, which hybridiso does not follow"
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        return "its .git is neither a file nor a directory"
    return None


def _gone(st: AgentStatus) -> AgentStatus:
    st.state = "missing"
    st.dirty = st.ahead = st.behind = st.disk_bytes = st.disk_shared_bytes = None
    st.problems, st.off = [], None
    return _off(st, "the directory was removed while status looked at it (a `down` running now?)")


def _unobservable(record: AgentRecord, in_manifest: bool, error: Exception) -> AgentStatus:
    st = AgentStatus(record.name, record.strategy, "unreadable", record.branch, record.path, ports=dict(record.ports), in_manifest=in_manifest)
    if not Path(record.path).exists():
        return _gone(st)
    if isinstance(error, CommandError):  # before UserError, which it is
        why = error.last_words.removeprefix("fatal: ") or f"git exited {error.result.returncode}"
    elif isinstance(error, UserError):
        return _off(st, f"cannot be looked at: {error.message}")
    else:
        why = getattr(error, "strerror", None) or str(error)
    return _off(st, f"git cannot read this environment ({why}); its files are work and are left alone")


def _set_aside(aside: SetAside, in_manifest: bool) -> AgentStatus:
    raw = aside.raw
    strategy = raw.get("strategy") if isinstance(raw.get("strategy"), str) else "?"
    branch = raw.get("branch") if isinstance(raw.get("branch"), str) else "-"
    problem = (
        f"its record names strategy {strategy!r}, which this hybridiso does not know (a newer version made it?): "
        "it is kept in state.json and left alone; use that version, or check the directory and remove the record by hand"
    )
    st = AgentStatus(aside.name, str(strategy), "unknown strategy", str(branch), aside.path or "-", in_manifest=in_manifest)
    return _off(st, problem)


def run(args: argparse.Namespace) -> int:
    project = project_from_args(args)
    state = project.store.load()
    notes = [state.rebuilt_from] if state.rebuilt_from else []  # set-aside records: on their rows
    adopt_from_reality(project, state)
    names = check_names(project, args.agents, state)
    rows = collect(project, state, names, with_disk=not args.no_disk)
    for note in notes:
        output.warn(note)
    from hybridiso.land.store import LandStore  # not at import: building the parser must not load land/

    landed = LandStore(project.store).read_results()  # each agent's last `land` result (land/last.json)
    if args.json:
        for r in rows:
            r.land = landed.get(r.agent)
        output.print_json(rows)
        return _verdict(rows, args.check)
    if not rows:
        output.message("no agents in the manifest; add some under `agents:` in hybridiso.yaml")
        return 0
    # shared bytes only where some environment has them (a clone's objects
    # hard-linked to the repository's): what `report` calls SHARED
    shared = any(r.disk_shared_bytes for r in rows)
    table = []
    for r in rows:
        drift = "-" if r.ahead is None else f"+{r.ahead}/-{r.behind}"
        ports = ", ".join(f"{k}={v}" for k, v in r.ports.items()) or "-"
        state_text = r.state if r.process is None else f"{r.state}, {r.process}"
        disk = [output.human_bytes(r.disk_bytes)] + ([output.human_bytes(r.disk_shared_bytes)] if shared else [])
        land = str(landed.get(r.agent, {}).get("result", "-"))
        table.append([r.agent, r.strategy, state_text, r.branch, drift, "-" if r.dirty is None else r.dirty, ports, *disk, land, r.path])
    headers = ["AGENT", "STRATEGY", "STATE", "BRANCH", "AHEAD/BEHIND", "DIRTY", "PORTS", "DISK", *(["SHARED"] if shared else []), "LAND", "PATH"]
    output.print_table(table, headers)
    if shared:
        output.message("DISK: bytes only this environment uses; SHARED: hard-linked to the repository's objects (as `hybridiso report` counts)")
    for r in rows:
        if r.boundary is not None:
            from hybridiso.containers.build import describe_boundary

            output.message(f"  {r.agent} gets: {describe_boundary(r.boundary)}")
        for p in r.problems:
            output.message(f"  {r.agent}: {p}")
    for line in repo_problems(project, state, names):  # prunable worktrees, stale records and locks
        output.message(f"  {line}")
    return _verdict(rows, args.check)


def _verdict(rows: list[AgentStatus], check: bool) -> int:
    """``--check``: exit 1, naming each agent that is not in the state the
    manifest asks for and why (issue 16: never "all is well" when not)."""
    off = [r for r in rows if not r.ok]
    if not check or not off:
        return 0
    raise AgentsFailed(
        f"{'is' if len(off) == 1 else 'are'} not in the state the manifest asks for",
        [(r.agent, r.off or "") for r in off],
        len(rows),
        hint="`hybridiso up` converges them (an agent the manifest no longer names: `hybridiso down AGENT`)",
    )
