"""``hybridiso status``: every agent, from git (and Docker), not just the state file."""
from __future__ import annotations

import argparse
import os
import re
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hybridiso import git, output, strategies
from hybridiso.commands.common import add_json_flag, check_names, project_from_args
from hybridiso.land.store import LandStore
from hybridiso.env_context import context
from hybridiso.report.measure import du_bytes
from hybridiso.envfile import ENV_FILE
from hybridiso.envs.health import repo_problems
from hybridiso.envs.lifecycle import log_path
from hybridiso.project import Project
from hybridiso.envs.reconcile import adopt_from_reality
from hybridiso.errors import UserError
from hybridiso.process import CommandError
from hybridiso.state import PHASE_READY, AgentRecord, SetAside, State, lock_holder

HELP = "show each agent's environment: strategy, branch, drift, dirty files, ports, disk"


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("status", help=HELP, description=HELP + ".")
    p.add_argument("agents", nargs="*", metavar="AGENT")
    p.add_argument("--no-disk", action="store_true", help="skip measuring disk use (faster on huge trees)")
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
    disk_bytes: int | None = None
    problems: list[str] = field(default_factory=list)
    in_manifest: bool = True
    boundary: dict[str, Any] | None = None  # a container agent's: what Docker says it got (issue 12)


def collect(project: Project, state: State, names: list[str], with_disk: bool = True) -> list[AgentStatus]:
    base = project.manifest.base
    base_commit = git.resolve_commit(project.root, base)
    manifest_names = [a.name for a in project.manifest.agents]
    recorded = sorted(n for n in {*state.agents, *state.set_aside} if n not in manifest_names)
    wanted = [n for n in manifest_names + recorded if not names or n in names]
    # an `up` running now holds the lock: its 'creating' records are in
    # progress, not interrupted, and their directories may not exist yet
    holder = _creator(lock_holder(project.store.lock_path))

    def one(name: str) -> AgentStatus:
        aside = state.set_aside.get(name)
        if aside is not None:
            return _set_aside(aside, name in manifest_names)
        record = state.agents.get(name)
        if record is None:
            return AgentStatus(name, "-", "not created", "-", str(project.env_path(name)))
        unsafe = project.record_problem(name, record)
        if unsafe:  # FAULTS #30: shown, never looked into
            return AgentStatus(
                name, str(record.strategy), "refused", str(record.branch), str(record.path),
                problems=[f"hybridiso will not act on this record: {unsafe}"], in_manifest=name in manifest_names,
            )
        try:
            return _observe(project, state, record, name in manifest_names, base_commit, holder, with_disk)
        except (CommandError, OSError, UserError) as e:
            # never exit 3 (nor 1, for every row) for what happens to one
            # environment while we look at it: a concurrent `down` removed it,
            # git cannot read it, Docker failed to answer about its container
            return _unobservable(record, name in manifest_names, e)

    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(one, wanted))


def _observe(
    project: Project, state: State, record: AgentRecord, in_manifest: bool, base_commit: str | None, holder: str | None, with_disk: bool
) -> AgentStatus:
    name, base = record.name, project.manifest.base
    ctx = context(project, state, name)
    strategy = strategies.get(record.strategy)
    creating = record.phase != PHASE_READY
    if creating and holder is not None:
        # FAULTS #10: being made right now by the run that holds the lock
        return AgentStatus(name, record.strategy, f"creating (in progress: {holder})", record.branch, record.path, ports=dict(record.ports), in_manifest=in_manifest)
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
    )
    if creating:
        st.state = "creating (interrupted or failed; `up` redoes it)"
        log = log_path(project, name, "setup")
        if log.exists():
            st.problems.append(f"setup log: {log}")
    if not obs.exists:
        if not creating:
            st.state = "missing"
            st.problems.append("the directory was deleted; `up` recreates it, `gc` cleans up")
        return st
    if not in_manifest:
        st.problems.append("not in the manifest any more; `hybridiso down` removes it")
    unreadable = git_link_problem(Path(record.path))
    if unreadable is not None:
        # FAULTS #24: git would look upward for another repository; never ask it
        st.state = "unreadable" if not creating else st.state
        st.problems.append(f"git cannot read this environment: {unreadable}; its files are work and are left alone")
        return st
    if obs.registered:
        st.dirty = sum(1 for _, n in git.status_porcelain(ctx.path) if n != ENV_FILE)
        if obs.head and base_commit:
            cwd = project.root if strategy.SHARES_REFS else ctx.path
            if strategy.SHARES_REFS or git.resolve_commit(ctx.path, base_commit):
                st.ahead, st.behind = git.ahead_behind(cwd, base_commit, obs.head)
                if st.behind:  # drift from base (issue 5)
                    st.problems.append(f"{st.behind} commits behind {base}: `hybridiso sync` rebases it")
        if obs.branch and obs.branch != record.branch:
            st.problems.append(f"checked out branch is {obs.branch!r}, expected {record.branch!r}")
    if with_disk:
        # a worktree's .git is a one-line file; a clone's .git is its own
        st.disk_bytes = du_bytes(Path(record.path), exclude=".git" if strategy.SHARES_REFS else None)
    if not Path(record.path).is_dir():  # removed while we looked (a concurrent `down`)
        return _gone(st)
    return st


def _creator(holder: str | None) -> str | None:
    """The running `up` that holds the lock ("hybridiso up, pid N"), if one
    does: only `up` creates environments; under any other holder a
    'creating' record was left by an earlier run."""
    m = re.fullmatch(r"pid (\d+) \(hybridiso up\)", holder or "")
    return f"hybridiso up, pid {m.group(1)}" if m else None


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
    st.dirty = st.ahead = st.behind = st.disk_bytes = None
    st.problems = ["the directory was removed while status looked at it (a `down` running now?)"]
    return st


def _unobservable(record: AgentRecord, in_manifest: bool, error: Exception) -> AgentStatus:
    st = AgentStatus(record.name, record.strategy, "unreadable", record.branch, record.path, ports=dict(record.ports), in_manifest=in_manifest)
    if not Path(record.path).exists():
        return _gone(st)
    if isinstance(error, UserError):
        st.problems.append(f"cannot be looked at: {error.message}")
        return st
    if isinstance(error, CommandError):
        lines = [line for line in error.result.stderr.strip().splitlines() if line.strip()]
        why = lines[-1].removeprefix("fatal: ") if lines else f"git exited {error.result.returncode}"
    else:
        why = getattr(error, "strerror", None) or str(error)
    st.problems.append(f"git cannot read this environment ({why}); its files are work and are left alone")
    return st


def _set_aside(aside: SetAside, in_manifest: bool) -> AgentStatus:
    raw = aside.raw
    strategy = raw.get("strategy") if isinstance(raw.get("strategy"), str) else "?"
    branch = raw.get("branch") if isinstance(raw.get("branch"), str) else "-"
    problem = (
        f"its record names strategy {strategy!r}, which this hybridiso does not know (a newer version made it?): "
        "it is kept in state.json and left alone; use that version, or check the directory and remove the record by hand"
    )
    return AgentStatus(aside.name, str(strategy), "unknown strategy", str(branch), aside.path or "-", problems=[problem], in_manifest=in_manifest)


def run(args: argparse.Namespace) -> int:
    project = project_from_args(args)
    state = project.store.load()
    notes = [state.rebuilt_from] if state.rebuilt_from else []  # set-aside records: on their rows
    adopt_from_reality(project, state)
    names = check_names(project, args.agents, state)
    rows = collect(project, state, names, with_disk=not args.no_disk)
    for note in notes:
        output.warn(note)
    landed = LandStore(project.store).read_results()  # each agent's last `land` result (land/last.json)
    if args.json:
        output.print_json([{**asdict(r), "land": landed.get(r.agent)} for r in rows])
        return 0
    if not rows:
        output.message("no agents in the manifest; add some under `agents:` in hybridiso.yaml")
        return 0
    table = []
    for r in rows:
        drift = "-" if r.ahead is None else f"+{r.ahead}/-{r.behind}"
        ports = ", ".join(f"{k}={v}" for k, v in r.ports.items()) or "-"
        state_text = r.state if r.process is None else f"{r.state}, {r.process}"
        table.append(
            [r.agent, r.strategy, state_text, r.branch, drift, "-" if r.dirty is None else r.dirty, ports, output.human_bytes(r.disk_bytes),
             str(landed.get(r.agent, {}).get("result", "-")), r.path]
        )
    output.print_table(table, ["AGENT", "STRATEGY", "STATE", "BRANCH", "AHEAD/BEHIND", "DIRTY", "PORTS", "DISK", "LAND", "PATH"])
    for r in rows:
        if r.boundary is not None:
            from hybridiso.containers.build import describe_boundary

            output.message(f"  {r.agent} gets: {describe_boundary(r.boundary)}")
        for p in r.problems:
            output.message(f"  {r.agent}: {p}")
    for line in repo_problems(project, state, names):  # prunable worktrees, stale records and locks
        output.message(f"  {line}")
    return 0
