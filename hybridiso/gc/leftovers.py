"""gc finders for what outlives an agent outside git: Docker containers,
networks and volumes labelled for it, its database branches, and the setup
processes of a run that was killed.

An agent's own resources go with it when gc (or ``down``) removes the agent.
These finders catch the rest: resources whose agent has no record any more
(state lost, environment deleted by hand, a crash between steps).  Both
select strictly by what identifies *this* repository (the
``dev.hybridiso.project`` label; the ``hi_<repo>_<hash>_`` database prefix)
and keep whatever a record still owns.  The Docker and PostgreSQL libraries
stay behind ``docker_client`` and ``databases``.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from hybridiso import output
from hybridiso.errors import UserError
from hybridiso.gc.rules import Finder, Finding, Kind
from hybridiso.project import Project
from hybridiso.state import State

if TYPE_CHECKING:
    from hybridiso.services.databases import DumpTarget

DOCKER: Kind = "docker"
DATABASE: Kind = "database"
PROCESS: Kind = "process"


def process_findings(project: Project, state: State, dry_run: bool) -> list[Finding]:
    """Setup commands of a run that was killed (docs/faults.md row 38): gc holds the
    repository lock, and no running `up` has claimed the agent (a run does
    its setups without the lock), so no run of ours is waiting for them.
    Only processes proven to be those commands are listed (``process_groups``)."""
    from hybridiso import process_groups

    recorded = [(r, g) for r in state.agents.values() if project.store.agent_holder(r.name) is None for g in r.setup_processes]
    alive = process_groups.survivors([g for _, g in recorded])
    findings = []
    for name in sorted({r.name for r, _ in recorded}):
        record = state.agents[name]
        mine = [(i, recorded[i][1]) for i in sorted(alive) if recorded[i][0] is record]
        if not mine:
            continue
        procs = [p for i, _ in mine for p in alive[i]]
        commands = "; ".join(process_groups.describe_group(g) for _, g in mine)
        findings.append(
            Finding(
                PROCESS,
                f"setup of agent {name}",
                True,
                f"still running from a run that was killed: {commands}",
                [process_groups.describe(p) for p in procs],
                apply=_process_stopper(project, state, name),
            )
        )
    return findings


def _process_stopper(project: Project, state: State, name: str) -> Callable[[], list[str]]:
    def apply() -> list[str]:
        from hybridiso import process_groups

        record = state.agents.get(name)
        if record is None:
            return []
        left = process_groups.stop(record.setup_processes)
        if not left:
            record.setup_processes = []
            project.store.save(state)
        return left

    return apply


def docker_findings(project: Project, state: State, dry_run: bool) -> list[Finding]:
    from hybridiso.containers import docker_client

    from hybridiso import strategies

    uses_docker = any(a.image for a in project.manifest.agents) or any(strategies.uses_docker(r.strategy) for r in state.agents.values())
    ok, why = docker_client.reachable()
    if not ok:
        if uses_docker:
            output.warn(f"gc: Docker resources were not checked: {why}")
        return []
    from hybridiso.gc.land_leftovers import CHECK_ROLE, land_running

    # while a land runs, an agent with no environment may have a check's network
    spared = {a.name for a in project.manifest.agents} if land_running(project) else set()
    repo = {docker_client.LABEL_PROJECT: project.id}
    found = docker_client.labelled_resources(repo)
    by_agent: dict[str, list[str]] = {}
    for resource in found:
        agent = resource.labels.get(docker_client.LABEL_AGENT)
        if resource.labels.get(docker_client.LABEL_ROLE) == CHECK_ROLE:
            continue  # land's, while no land runs (land_leftovers.py)
        if agent and agent not in state.agents and agent not in spared:
            by_agent.setdefault(agent, []).append(resource.describe())
    findings = []
    for agent, things in sorted(by_agent.items()):
        labels = {**repo, docker_client.LABEL_AGENT: agent}
        findings.append(
            Finding(
                DOCKER,
                f"Docker resources of agent {agent}",
                True,
                "labelled for an agent that no longer exists",
                sorted(things),
                apply=_docker_remover(labels),
            )
        )
    return findings


def _docker_remover(labels: dict[str, str]) -> Callable[[], list[str]]:
    def apply() -> list[str]:
        from hybridiso.containers import docker_client

        docker_client.remove_labelled(labels)
        left = docker_client.labelled_resources(labels)
        return [r.describe() for r in left]

    return apply


def database_findings(project: Project, state: State, dry_run: bool) -> list[Finding]:
    servers = {svc.url for svc in project.manifest.services.values() if svc.kind == "postgres" and svc.url}
    servers |= {db.server for r in state.agents.values() for db in r.databases.values()}
    if not servers:
        return []
    from hybridiso.services import databases
    from hybridiso.services import branches as service_branches

    from hybridiso.gc.land_leftovers import journal_databases

    owned = {db.name for r in state.agents.values() for db in r.databases.values()}
    owned |= {name for _, name in journal_databases(project)}  # a killed land's check databases: its finder's
    prefix = service_branches.branch_prefix(project)
    findings = []
    for server in sorted(servers):
        try:
            names = databases.list_branches(server, prefix)
        except UserError as e:
            output.warn(f"gc: database branches on {databases.where(server)} were not checked: {e.message}")
            continue
        for name in names:
            if name in owned:
                continue
            findings.append(_leftover_database(server, name))
    return findings


def _leftover_database(server: str, name: str) -> Finding:
    """A branch no record owns is dropped only if its data did not change
    since it was created (its baseline survives as its comment): an agent's
    data outlives a lost state file (docs/faults.md row 26)."""
    from hybridiso.services import databases

    shown = f"database {name} on {databases.where(server)}"
    try:
        change = databases.changes(server, name)
    except UserError as e:
        return Finding(DATABASE, f"database {name}", False, f"branch of an agent that no longer exists; could not be checked: {e.message}")
    if change is not None:
        return Finding(
            DATABASE,
            f"database {name}",
            False,
            f"uncommitted work: branch of an agent that no longer exists, and its data changed: {change.what}; "
            f"save it (pg_dump -d {name}) and drop it yourself (dropdb {name})",
        )
    return Finding(DATABASE, f"database {name}", True, "branch of an agent that no longer exists", [shown], apply=_database_dropper(server, name))


def _database_dropper(server: str, name: str) -> Callable[[], list[str]]:
    def apply() -> list[str]:
        from hybridiso.services import databases

        databases.drop_branch(server, name)  # checks again, with everybody locked out: DataChanged keeps it
        return [f"database {name}"] if name in databases.list_branches(server, name) else []

    return apply


def dump_findings(project: Project, state: State, dry_run: bool) -> list[Finding]:
    """What a ``down --force`` killed while it dumped a database left in
    ``dumps/<agent>/``: the partial dump and the libpq service file that
    holds the server's password (docs/faults.md row 34).  Finished dumps are the
    user's: never touched."""
    from hybridiso import safe_files
    from hybridiso.services import databases

    store = project.store
    rel = store.dir.relative_to(store.anchor) / "dumps"
    findings = []
    try:
        with safe_files.open_dir(store.anchor, rel) as dfd:
            agents = sorted(e for e in os.listdir(dfd) if safe_files.is_plain_dir(store.anchor / rel / e))
    except (FileNotFoundError, UserError):
        return []
    for agent in agents:
        target = databases.DumpTarget(store.anchor, PurePosixPath(*rel.parts, agent))
        left = databases.dump_leftovers(target)
        if left:
            findings.append(
                Finding(DATABASE, f"unfinished dumps of agent {agent}", True, "a database dump that was interrupted (its service file holds the password)",
                        [f"file {store.dir / 'dumps' / agent / name}" for name in left], apply=_dump_cleaner(target))
            )
    return findings


def _dump_cleaner(target: DumpTarget) -> Callable[[], list[str]]:
    def apply() -> list[str]:
        from hybridiso.services import databases

        databases.clear_dump_leftovers(target)
        return databases.dump_leftovers(target)

    return apply


def compare_findings(project: Project, state: State, dry_run: bool) -> list[Finding]:
    """Workdirs (and their Docker resources) of a ``report --compare`` that
    was killed before it could clean up; a run still going holds its lock."""
    from hybridiso.report import compare

    findings = []
    for workdir in compare.workdirs(project.root):
        if not compare.run_is_over(workdir):
            continue
        owns = [f"directory {workdir}"]
        from hybridiso.containers import docker_client

        if docker_client.reachable()[0]:
            found = docker_client.labelled_resources({compare.COMPARE_LABEL: workdir.name})
            owns += [r.describe() for r in found]
        findings.append(
            Finding(DOCKER, f"report --compare leftovers {workdir.name}", True, "a comparison that was killed before it cleaned up", owns, apply=_compare_remover(workdir))
        )
    return findings


def _compare_remover(workdir: Path) -> Callable[[], list[str]]:
    def apply() -> list[str]:
        from hybridiso import cleanup
        from hybridiso.report import compare
        from hybridiso.containers import docker_client

        left: list[str] = []
        if docker_client.reachable()[0]:
            left += _docker_remover({compare.COMPARE_LABEL: workdir.name})()
        return left + cleanup.remove_tree(workdir)

    return apply


from hybridiso.gc.firewall import firewall_findings  # noqa: E402 - network-isolation rules (issue 12)

# before every other finder: a setup still running writes into what they remove
def _land_findings(project: Project, state: State, dry_run: bool) -> list[Finding]:
    from hybridiso.gc.land_leftovers import land_findings

    return land_findings(project, state, dry_run)


EARLY_FINDERS: tuple[Finder, ...] = (process_findings, _land_findings)
FINDERS: tuple[Finder, ...] = (docker_findings, database_findings, dump_findings, compare_findings, firewall_findings)
