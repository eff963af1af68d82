"""Database branches: each agent that lists a postgres service with a ``url``
gets its own database, ``CREATE DATABASE <name> TEMPLATE <template>``, and its
URL in the agent's environment; ``down`` drops it.

The SQL lives in ``hybridiso.databases`` (the only psycopg user); this module
decides names and variables and keeps the record of what an agent owns.
"""
from __future__ import annotations

import re

from hybridiso.manifest import Agent
from hybridiso.project import Project
from hybridiso.strategies.base import EnvContext


def project_key(project: Project) -> str:
    """The repository's part of every branch name: its name plus the start
    of its id (``Project.id``, from its common git dir), so two checkouts
    named alike never share (or gc) each other's databases, and every
    worktree of one repository names the same ones."""
    return f"{project.name[:20]}_{project.id[:6]}"


def branch_prefix(project: Project) -> str:
    from hybridiso import databases

    return databases.branch_prefix(project_key(project))


def env_var(service: str) -> str:
    return re.sub(r"[^A-Z0-9]", "_", service.upper()) + "_URL"


def planned_branches(project: Project, agent: Agent) -> dict[str, dict[str, str]]:
    """service -> {name, server, template} of the branches ``agent`` gets.
    Names are deterministic, so a record rebuilt without the state file
    (reconcile) knows its databases again."""
    from hybridiso import databases

    planned = {}
    for service in agent.services:
        svc = project.manifest.services.get(service)
        if svc is not None and svc.kind == "postgres" and svc.url and svc.template:
            name = databases.branch_name(project_key(project), agent.name, service)
            planned[service] = {"name": name, "server": svc.url, "template": svc.template}
    return planned


def provision(ctx: EnvContext) -> dict[str, str]:
    """Create the agent's database branches; return the variables they add."""
    if ctx.agent is None:
        return {}
    planned = planned_branches(ctx.project, ctx.agent)
    if not planned:
        return {}
    from hybridiso import databases

    owned: dict[str, dict[str, str]] = ctx.record.extra.setdefault("databases", {})
    env: dict[str, str] = {}
    for service, branch in planned.items():
        url = databases.create_branch(branch["server"], branch["template"], branch["name"])
        owned[service] = {"name": branch["name"], "server": branch["server"]}
        env[env_var(service)] = url
        env.setdefault("DATABASE_URL", url)
    return env


def release(ctx: EnvContext) -> list[str]:
    """Drop the agent's database branches; return their names."""
    owned: dict[str, dict[str, str]] = ctx.record.extra.get("databases", {})
    if not owned:
        return []
    from hybridiso import databases

    dropped = []
    for info in owned.values():
        if databases.drop_branch(info["server"], info["name"]):
            dropped.append(info["name"])
    ctx.record.extra["databases"] = {}
    return dropped
