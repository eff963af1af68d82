"""gc finders for what outlives an agent outside git: Docker containers,
networks and volumes labelled for it, and its database branches.

An agent's own resources go with it when gc (or ``down``) removes the agent.
These finders catch the rest: resources whose agent has no record any more
(state lost, environment deleted by hand, a crash between steps).  Both
select strictly by what identifies *this* repository (the
``dev.hybridiso.project`` label; the ``hi_<repo>_<hash>_`` database prefix)
and keep whatever a record still owns.  The Docker and PostgreSQL libraries
stay behind ``docker_client`` and ``databases``.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from hybridiso import output
from hybridiso.errors import UserError
from hybridiso.gc_rules import Finder, Finding
from hybridiso.project import Project
from hybridiso.state import State

DOCKER = "docker"
DATABASE = "database"


def docker_findings(project: Project, state: State, dry_run: bool) -> list[Finding]:
    from hybridiso import docker_client
    from hybridiso.strategies.container import project_label

    uses_docker = any(a.image for a in project.manifest.agents) or any(r.strategy == "container" for r in state.agents.values())
    ok, why = docker_client.reachable()
    if not ok:
        if uses_docker:
            output.warn(f"gc: Docker resources were not checked: {why}")
        return []
    repo = {docker_client.LABEL_PROJECT: project_label(project)}
    found = docker_client.labelled_resources(repo)
    by_agent: dict[str, list[str]] = {}
    for kind, items in found.items():
        for item in items:
            agent = item["labels"].get(docker_client.LABEL_AGENT)
            if agent and agent not in state.agents:
                by_agent.setdefault(agent, []).append(f"{kind[:-1]} {item['name']}")
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
        from hybridiso import docker_client

        docker_client.remove_labelled(labels)
        left = docker_client.labelled_resources(labels)
        return [f"{kind[:-1]} {item['name']}" for kind, items in left.items() for item in items]

    return apply


def database_findings(project: Project, state: State, dry_run: bool) -> list[Finding]:
    servers = {svc.url for svc in project.manifest.services.values() if svc.kind == "postgres" and svc.url}
    servers |= {db["server"] for r in state.agents.values() for db in r.extra.get("databases", {}).values()}
    if not servers:
        return []
    from hybridiso import databases, service_branches

    owned = {db["name"] for r in state.agents.values() for db in r.extra.get("databases", {}).values()}
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
            findings.append(
                Finding(
                    DATABASE,
                    f"database {name}",
                    True,
                    "branch of an agent that no longer exists",
                    [f"database {name} on {databases.where(server)}"],
                    apply=_database_dropper(server, name),
                )
            )
    return findings


def _database_dropper(server: str, name: str) -> Callable[[], list[str]]:
    def apply() -> list[str]:
        from hybridiso import databases

        databases.drop_branch(server, name)
        return [f"database {name}"] if name in databases.list_branches(server, name) else []

    return apply


def compare_findings(project: Project, state: State, dry_run: bool) -> list[Finding]:
    """Workdirs (and their Docker resources) of a ``report --compare`` that
    was killed before it could clean up; a run still going holds its lock."""
    from hybridiso import compare

    findings = []
    for workdir in compare.workdirs(project.root):
        if not compare.run_is_over(workdir):
            continue
        owns = [f"directory {workdir}"]
        from hybridiso import docker_client

        if docker_client.reachable()[0]:
            found = docker_client.labelled_resources({compare.COMPARE_LABEL: workdir.name})
            owns += [f"{kind[:-1]} {item['name']}" for kind, items in found.items() for item in items]
        findings.append(
            Finding(DOCKER, f"report --compare leftovers {workdir.name}", True, "a comparison that was killed before it cleaned up", owns, apply=_compare_remover(workdir))
        )
    return findings


def _compare_remover(workdir: Path) -> Callable[[], list[str]]:
    def apply() -> list[str]:
        from hybridiso import cleanup, compare, docker_client

        left: list[str] = []
        if docker_client.reachable()[0]:
            left += _docker_remover({compare.COMPARE_LABEL: workdir.name})()
        return left + cleanup.remove_tree(workdir)

    return apply


from hybridiso.gc_firewall import firewall_findings  # noqa: E402 - network-isolation rules (issue 12)

FINDERS: tuple[Finder, ...] = (docker_findings, database_findings, compare_findings, firewall_findings)
