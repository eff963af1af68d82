"""``hybridiso doctor``: can this machine run this project's agents?

Each check is ok, warn or fail, with what to fix; exit 1 when any fails.
Docker is asked through its CLI (``docker version``, ``docker compose
version``), so doctor works, and says so, where the docker package or engine
is missing.  Repository checks run only inside a project.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Literal

from hybridiso import git, output, planner, ports, strategies
from hybridiso.report import costs
from hybridiso.envs import health
from hybridiso.envs import programs
from hybridiso.commands.common import add_json_flag, make_plan, project_from_args
from hybridiso.errors import UserError
from hybridiso.manifest import ManifestError
from hybridiso.planner import AgentPlan
from hybridiso.process import run as run_process
from hybridiso.project import Project
from hybridiso.state import State

HELP = "check git, Docker, disk, ports and leftover state; say what to fix"

MIN_GIT = (2, 17)  # `git worktree remove` and `list --porcelain` with prunable
MERGE_TREE_GIT = (2, 38)  # `merge-tree --write-tree`: gc's squash check
RELATIVE_WORKTREES_GIT = (2, 48)  # worktree.useRelativePaths
LOW_DISK = 2 << 30


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("doctor", help=HELP, description=HELP + ". Exit 1 when a check fails.")
    add_json_flag(p)


CheckStatus = Literal["ok", "warn", "fail"]


@dataclass(frozen=True)
class Check:
    name: str
    status: CheckStatus
    detail: str
    fix: str = ""


def run(args: argparse.Namespace) -> int:
    project: Project | None
    manifest_checks: list[Check] = []
    try:
        project = project_from_args(args)
    except ManifestError as e:
        # a broken manifest is this project's first problem, not a reason to stop
        project = None
        manifest_checks.append(Check("manifest", "fail", _problems(e), _MANIFEST_FIX.format(e.path.name)))
    except UserError as e:
        project = None
        output.warn(f"repository checks skipped: {e.message}")
    state = project.store.load() if project is not None else None  # once: a corrupt file is moved aside on load
    containers: list[AgentPlan] = []
    if project is not None and state is not None:
        try:
            # container agents, whether the manifest says so or the planner decides it
            containers = [p for p in make_plan(project, state).agents if strategies.uses_docker(p.strategy)]
            manifest_checks.append(Check("manifest", "ok", f"{output.plural(len(project.manifest.agents), 'agent')} in {project.manifest_path.name}"))
        except ManifestError as e:  # a branch git could not create beside the repository's
            manifest_checks.append(Check("manifest", "fail", _problems(e), _MANIFEST_FIX.format(e.path.name)))
        manifest_checks.append(check_setup_programs(project))
        if containers:
            manifest_checks.append(check_images([p.agent.image for p in containers if p.agent.image]))
    # Compose starts only the agents with containerised services
    needs_compose = project is not None and any(project.manifest.runs_services_in_containers(p.agent) for p in containers)
    checks = [*check_git(), *check_docker(bool(containers), needs_compose), *manifest_checks]
    if project is not None and state is not None:
        checks += [check_disk(project), check_ports(project, state), *check_databases(project, state), *check_state(project, state)]
        checks += [*check_isolation(containers), *check_leased_ports(project, state)]
    if args.json:
        output.print_json(checks)
    else:
        rows = [[c.status, c.name, c.detail, c.fix or "-"] for c in checks]
        output.print_table(rows, ["STATUS", "CHECK", "FOUND", "FIX"])
    failed = [c for c in checks if c.status == "fail"]
    if failed:
        raise UserError(f"{len(failed)} check{'s' if len(failed) > 1 else ''} failed: " + ", ".join(c.name for c in failed), hint=failed[0].fix)
    return 0


_MANIFEST_FIX = "fix these lines in {}; `hybridiso plan` shows them one per line"


def _problems(e: ManifestError) -> str:
    return "; ".join(f"line {p.line}: {p.field + ': ' if p.field else ''}{p.message}" for p in e.problems)


def check_setup_programs(project: Project) -> Check:
    """docs/faults.md row 40: a setup command whose program is missing fails every `up`."""
    missing = programs.setup_missing(project.manifest)
    if not missing:
        return Check("setup programs", "ok", "every setup command's program is installed (or comes with the checkout)")
    by_problem: dict[str, list[str]] = {}
    for m in missing:
        by_problem.setdefault(m.problem(), []).append(m.agent)
    detail = "; ".join(f"{', '.join(agents)}: {problem}" for problem, agents in by_problem.items())
    return Check("setup programs", "warn", detail, "install the missing programs, or change setup: in hybridiso.yaml")


def check_images(images: list[str]) -> Check:
    """docs/faults.md rows 40, 13: an image that is not here must be pulled by `up`."""
    missing, unchecked = programs.missing_images(images)
    if unchecked and not missing:
        return Check("images", "warn", f"not checked: {unchecked}", "start Docker, then run doctor again")
    if missing:
        detail = f"not on this machine: {', '.join(missing)}" + (f" ({unchecked})" if unchecked else "")
        return Check("images", "warn", detail, "`up` pulls them; docker pull / docker build them first where there is no registry")
    return Check("images", "ok", f"{len(set(images))} on this machine")


def _v(version: tuple[int, ...]) -> str:
    return ".".join(str(x) for x in version)


def check_git() -> list[Check]:
    version = git.version()
    if version < MIN_GIT:
        return [Check("git", "fail", f"git {_v(version)}" if version != (0,) else "git not found", f"install git >= {_v(MIN_GIT)}")]
    checks = [Check("git", "ok", f"git {_v(version)}")]
    if version >= RELATIVE_WORKTREES_GIT:
        checks.append(Check("git relative worktree paths", "ok", "available (worktree.useRelativePaths)"))
    else:
        checks.append(
            Check(
                "git relative worktree paths",
                "ok",
                f"not available (needs git >= {_v(RELATIVE_WORKTREES_GIT)}): worktrees record absolute paths, "
                "fine unless the repository is moved",
                f"after moving the repository: git worktree repair (or git >= {_v(RELATIVE_WORKTREES_GIT)})",
            )
        )
    if version < MERGE_TREE_GIT:
        checks.append(
            Check("git merge-tree", "warn", f"git {_v(version)} has no merge-tree --write-tree", f"git >= {_v(MERGE_TREE_GIT)} lets gc see squash merges of branches base changed since")
        )
    return checks


def check_docker(needed: bool, compose_needed: bool = False) -> list[Check]:
    bad: CheckStatus = "fail" if needed else "warn"
    why = "container agents need it" if needed else "only container agents need it"
    compose_bad: CheckStatus = "fail" if compose_needed else "warn"
    compose_why = "agents with services need it" if compose_needed else "only agents with containerised services need it"
    if not shutil.which("docker"):
        return [Check("docker", bad, f"the docker CLI is not installed ({why})", "install Docker Engine and the compose plugin")]
    r = _quiet(["docker", "version", "--format", "{{.Server.Version}}"])
    if r is None or r[0] != 0 or not r[1].strip():
        reason = (r[2].strip().splitlines() or ["no answer"])[-1][:200] if r else "timed out"
        host = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
        return [Check("docker", bad, f"Docker is not reachable at {host}: {reason} ({why})", "start the Docker engine, or set DOCKER_HOST")]
    checks = [Check("docker", "ok", f"engine {r[1].strip()} reachable")]
    c = _quiet(["docker", "compose", "version", "--short"])
    version = c[1].strip().lstrip("v") if c and c[0] == 0 else ""
    m = re.match(r"(\d+)\.", version)
    if m and int(m.group(1)) >= 2:
        checks.append(Check("docker compose", "ok", f"v{version}"))
    else:
        checks.append(Check("docker compose", compose_bad, f"Compose v2 not found ({version or 'no `docker compose`'}; {compose_why})", "install the docker-compose-plugin package"))
    return checks


def _quiet(argv: list[str]) -> tuple[int, str, str] | None:
    try:
        r = run_process(argv, check=False, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.returncode, r.stdout, r.stderr


def check_disk(project: Project) -> Check:
    where = project.workspace
    while not where.exists():
        where = where.parent
    free = shutil.disk_usage(where).free
    tree = costs.project_costs(project).for_strategy(planner.CHEAPEST).disk_bytes or 0  # as allocated (issue 16)
    need = tree * len(project.manifest.agents)
    detail = f"{output.human_bytes(free)} free at {where}; the agents' checkouts need about {output.human_bytes(need)}"
    if free < need:
        return Check("disk", "fail", detail, "free disk space, or use sparse/fewer agents")
    if free < max(LOW_DISK, 2 * need):
        return Check("disk", "warn", detail, "free some disk space: builds and setups need more than the checkout")
    return Check("disk", "ok", detail)


def check_ports(project: Project, state: State) -> Check:
    lo, hi = project.manifest.ports.bounds()
    leased = state.leased_ports()
    # other repositories' live leases on this machine are not free either (docs/faults.md row 37)
    try:
        elsewhere = {p for p in ports.leased_elsewhere(project.repo.common_dir) if lo <= p <= hi and p not in leased}
    except UserError as e:
        return Check("ports", "fail", f"the machine's port registry cannot be read: {e.message}", e.hint or "")
    free = sum(1 for p in range(lo, hi + 1) if p not in leased and p not in elsewhere and ports.port_is_free(p))
    wanted = sum(len(a.ports) for a in project.manifest.agents if a.name not in state.agents)
    others = hi - lo + 1 - free - len([p for p in leased if lo <= p <= hi]) - len(elsewhere)
    busy = f", {others} in use by other programs" if others else ""
    repos = f", {len(elsewhere)} leased to other repositories on this machine" if elsewhere else ""
    detail = f"{free} of {hi - lo + 1} ports free in {lo}-{hi} ({len(leased)} leased to agents{repos}{busy}); {wanted} more needed"
    if free < wanted:
        return Check("ports", "fail", detail, "widen ports.range in hybridiso.yaml or `hybridiso down` unused agents")
    if free < max(1, (hi - lo + 1) // 10):
        return Check("ports", "warn", detail, "widen ports.range in hybridiso.yaml")
    return Check("ports", "ok", detail)


def check_databases(project: Project, state: State) -> list[Check]:
    """Each PostgreSQL server the agents branch databases on, and a pg_dump
    for its version: ``down --force`` dumps changed branches with it (docs/faults.md row 26)."""
    servers = {svc.url for svc in project.manifest.services.values() if svc.kind == "postgres" and svc.url}
    servers |= {db.server for r in state.agents.values() for db in r.databases.values()}
    if not servers:
        return []
    from hybridiso.services import databases

    checks = []
    for server in sorted(servers):
        where = databases.where(server)
        try:
            major = databases.server_major(server)
        except UserError as e:
            checks.append(Check(f"postgres {where}", "fail", e.message, e.hint or "start the server"))
            continue
        try:
            pg_dump = databases.pg_dump_for(major)
        except UserError as e:
            checks.append(Check(f"postgres {where}", "warn", f"PostgreSQL {major}; {e.message}: `down --force` cannot save changed database branches", e.hint or ""))
            continue
        checks.append(Check(f"postgres {where}", "ok", f"PostgreSQL {major}; pg_dump {pg_dump}"))
    return checks
def check_isolation(containers: list[AgentPlan]) -> list[Check]:
    """Network-isolated agents need the host's firewall (issue 12)."""
    from hybridiso.containers import netguard

    isolated = [p.agent for p in containers if p.agent.network_isolated]
    if not isolated:
        return []
    why = netguard.unavailable()
    names = ", ".join(a.name for a in isolated)
    if why is None:
        return [Check("network isolation", "ok", f"iptables rules can be written for {names}")]
    refused = [a.name for a in isolated if a.network_fallback == "refuse"]
    if refused:
        return [Check("network isolation", "fail", f"{why}: `up` refuses {', '.join(refused)}", netguard._HINT)]
    return [Check("network isolation", "warn", f"{why}: {names} get their network_fallback instead", "run `hybridiso up` as root on the Docker host for real isolation")]


def check_leased_ports(project: Project, state: State) -> list[Check]:
    """A container agent's leased port that another program took (issue 11)."""
    leases = {n: r.ports for n, r in state.agents.items() if strategies.uses_docker(r.strategy) and r.ports}
    if not leases:
        return []
    taken = strategies.ports_taken_by_others(project, leases, {n: r.strategy for n, r in state.agents.items()})
    if not taken:
        return [Check("leased ports", "ok", "no container agent's port is held by another program")]
    detail = "; ".join(f"{a}.{n}={leases[a][n]} is held by {holder}" for a, held in sorted(taken.items()) for n, holder in sorted(held.items()))
    return [Check("leased ports", "warn", detail, f"`hybridiso up {' '.join(sorted(taken))}` leases other ports (or stop those programs)")]


def check_state(project: Project, state: State) -> list[Check]:
    checks = []
    if state.rebuilt_from:
        checks.append(Check("state file", "warn", state.rebuilt_from, "nothing: it was rebuilt from git; check `hybridiso status`"))
    elif state.set_aside:
        checks.append(
            Check(
                "state file",
                "warn",
                "; ".join(a.reason for a in state.set_aside.values()),
                "use the hybridiso that made those records, or check their directories and remove the records by hand",
            )
        )
    else:
        checks.append(Check("state file", "ok", f"{output.plural(len(state.agents), 'agent')} recorded"))
    creating = health.stale_creating(project, state)
    checks.append(
        Check("interrupted creations", "warn", ", ".join(creating), "`hybridiso up` finishes them; `hybridiso gc` lists those it would remove (one that holds work is kept)")
        if creating
        else Check("interrupted creations", "ok", "none")
    )
    prunable = health.prunable_worktrees(project, state)  # hybridiso's only (docs/faults.md row 28)
    checks.append(
        Check("prunable worktrees", "warn", ", ".join(str(p) for p in prunable), "`hybridiso gc --yes` removes these (and only these)")
        if prunable
        else Check("prunable worktrees", "ok", "none")
    )
    locks = health.stale_git_locks(project)
    checks.append(
        Check("stale git locks", "warn", ", ".join(f"{p} ({a} s old)" for p, a in locks), "if no git command is running, delete them")
        if locks
        else Check("stale git locks", "ok", "none")
    )
    return checks
