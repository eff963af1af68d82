"""A fresh database branch for each check (issue 14 item 2): an agent that
lists a postgres service with a ``template`` gets, for each check run, a
database made from that template, never its own branch nor another agent's
(the check's migrations run there), its URL in ``<SERVICE>_URL`` and
``DATABASE_URL`` as ``up`` gives them.

They are scratch: dropped when the check ends, whatever it wrote.  Their
names carry the repository's branch prefix (``hi_<project>_land_...``) and
are in the journal before they exist, so after a ``kill -9`` the next
``land`` drops them, and ``gc`` does while no ``land`` runs (gc reads the
journal: gc/land_leftovers.py).
"""
from __future__ import annotations

from dataclasses import dataclass

from hybridiso.manifest import Agent
from hybridiso.project import Project
from hybridiso.services import branches


@dataclass(frozen=True)
class CheckDatabase:
    service: str
    server: str
    template: str
    name: str

    @property
    def record(self) -> dict[str, str]:
        return {"server": self.server, "name": self.name}


def plan(project: Project, agent: Agent) -> list[CheckDatabase]:
    """The databases one check of ``agent`` gets, with new names."""
    planned = []
    for service, b in sorted(branches.planned_branches(project, agent).items()):
        planned.append(CheckDatabase(service, b["server"], b["template"], branches.land_check_name(project, service)))
    return planned


def servers(project: Project) -> set[str]:
    """The servers a check database may be on: the manifest's postgres services'."""
    return {svc.url for svc in project.manifest.services.values() if svc.kind == "postgres" and svc.url}


def is_ours(project: Project, server: str, name: str) -> bool:
    """A journal's database entry is one a check of this repository got:
    its name has land's shape and its server is one the manifest names."""
    return server in servers(project) and branches.is_land_check_name(project, name)


def create(db: CheckDatabase) -> dict[str, str]:
    """Make it; the variables the check gets for it."""
    from hybridiso.services import databases

    url = databases.create_branch(db.server, db.template, db.name)
    return {branches.env_var(db.service): url}


def drop(server: str, name: str) -> None:
    """Drop it whatever the check wrote (it is scratch)."""
    from hybridiso.services import databases

    databases.drop_scratch(server, name)
