"""Database branches: each agent that lists a postgres service with a ``url``
gets its own database, ``CREATE DATABASE <name> TEMPLATE <template>``, and its
URL in the agent's environment; ``down`` drops it.

Data the agent wrote there is work (docs/faults.md row 26): ``changed`` says what
changed (``down``, ``gc`` and rollback count it with the files and commits),
``release`` drops only a branch whose data did not change, or, with
``dump``, saves a changed one with ``pg_dump`` under
``<state dir>/dumps/<agent>/`` first and says where.

The SQL lives in ``services/databases.py`` (the only psycopg user); this module
decides names and variables and keeps the record of what an agent owns
(``AgentRecord.databases``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from hybridiso.errors import UserError
from hybridiso.manifest import Agent
from hybridiso.project import Project
from hybridiso.state import DatabaseBranch
from hybridiso.env_context import EnvContext

if TYPE_CHECKING:
    from hybridiso.services.databases import DumpTarget


def project_key(project: Project) -> str:
    """The repository's part of every branch name: its name plus the start
    of its id (``Project.id``, from its common git dir), so two checkouts
    named alike never share (or gc) each other's databases, and every
    worktree of one repository names the same ones."""
    return f"{project.name[:20]}_{project.id[:6]}"


def branch_prefix(project: Project) -> str:
    from hybridiso.services import databases

    return databases.branch_prefix(project_key(project))


def land_check_name(project: Project, service: str) -> str:
    """A new name for a database one ``land`` check gets (land/databases.py):
    ``hi_<project>_land_<random>_<service>``, never an agent's branch."""
    import secrets

    name = f"{branch_prefix(project)}land_{secrets.token_hex(4)}_{service.lower()}"
    return re.sub(r"[^a-z0-9_]+", "_", name.lower())[:63]  # PostgreSQL's identifier limit


def is_land_check_name(project: Project, name: str) -> bool:
    """``name`` has the shape ``land_check_name`` gives: land and gc drop
    only those from a journal, never a name a tampered journal chose
    (docs/faults.md row 42)."""
    return re.fullmatch(re.escape(branch_prefix(project)) + r"land_[0-9a-f]{8}_[a-z0-9_]*", name) is not None


def env_var(service: str) -> str:
    return re.sub(r"[^A-Z0-9]", "_", service.upper()) + "_URL"


def planned_branches(project: Project, agent: Agent) -> dict[str, dict[str, str]]:
    """service -> {name, server, template} of the branches ``agent`` gets.
    Names are deterministic, so a record rebuilt without the state file
    (reconcile) knows its databases again."""
    from hybridiso.services import databases

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
    from hybridiso.services import databases

    owned = ctx.record.databases
    env: dict[str, str] = {}
    for service, branch in planned.items():
        # in the record, on disk, before it exists: a rollback after a kill finds it
        owned[service] = DatabaseBranch(branch["name"], branch["server"])
        ctx.persist()
        url = databases.create_branch(branch["server"], branch["template"], branch["name"])
        baseline = databases.baseline_of(branch["server"], branch["name"])
        owned[service] = DatabaseBranch(branch["name"], branch["server"], baseline.to_json() if baseline else None)
        env[env_var(service)] = url
        env.setdefault("DATABASE_URL", url)
    ctx.persist()
    return env


@dataclass(frozen=True)
class BranchCheck:
    service: str
    name: str
    server: str
    change: str | None = None  # what changed, or why it cannot be told (None: nothing)
    certain: bool = True  # False: nothing proves it unchanged (counted as changed all the same)
    unreachable: str | None = None  # the server could not be asked

    def describe(self) -> str:
        if self.unreachable:
            return f"database {self.name} could not be checked: {self.unreachable}"
        return f"database {self.name} changed: {self.change}" if self.certain else f"database {self.name}: {self.change}"


def ours(ctx: EnvContext, service: str, db: DatabaseBranch) -> bool:
    """A record may only name the branch its agent and service get (names
    are deterministic): a tampered state file naming ``postgres``, the
    template or another agent's branch gets nothing done to it (docs/faults.md row 30)."""
    from hybridiso.services import databases

    return db.name == databases.branch_name(project_key(ctx.project), ctx.name, service)


def check(ctx: EnvContext) -> list[BranchCheck]:
    """Each of the agent's branches whose data changed since it was created
    or cannot be checked (read only)."""
    if not ctx.record.databases:
        return []
    from hybridiso.services import databases

    found = []
    for service, db in sorted(ctx.record.databases.items()):
        if not ours(ctx, service, db):
            continue  # never ours to drop, so nothing of it can be lost by us
        try:
            change = databases.changes(db.server, db.name, databases.Baseline.from_json(db.baseline))
        except UserError as e:
            found.append(BranchCheck(service, db.name, db.server, unreachable=e.message))
            continue
        if change is not None:
            found.append(BranchCheck(service, db.name, db.server, change=change.what, certain=change.certain))
    return found


def changed(ctx: EnvContext) -> list[str]:
    """What of the agent's databases would be lost by dropping them now, one
    line per database ("database X changed: ..."); empty when nothing."""
    return [c.describe() for c in check(ctx)]


def settled(ctx: EnvContext) -> list[str]:
    """The services whose branch nobody changed since its baseline: setup
    may write into those, and what it writes becomes their baseline
    (``rebaseline``).  A branch with changes keeps its baseline, so setup
    never hides the agent's data (and a server that cannot be asked now
    keeps it too)."""
    if not ctx.record.databases:
        return []
    from hybridiso.services import databases

    quiet = []
    for service, db in sorted(ctx.record.databases.items()):
        if not ours(ctx, service, db):
            continue
        try:
            if databases.changes(db.server, db.name, databases.Baseline.from_json(db.baseline)) is None:
                quiet.append(service)
        except UserError:
            continue
    return quiet


def rebaseline(ctx: EnvContext, services: list[str]) -> None:
    """After setup: the branches of ``services`` as they are now are what
    hybridiso made (migrations and seeds are not the agent's work)."""
    from hybridiso.services import databases

    for service in services:
        db = ctx.record.databases.get(service)
        if db is None:
            continue
        try:
            baseline = databases.rebaseline(db.server, db.name)
        except UserError:
            continue  # the old baseline stays: setup's writes then count as changes, never the other way round
        if baseline is not None:
            db.baseline = baseline.to_json()
    if services:
        ctx.persist()


def dump_dir(ctx: EnvContext) -> Path:
    return ctx.project.store.dir / "dumps" / ctx.name


def _dump_target(ctx: EnvContext) -> DumpTarget:
    from hybridiso.services import databases

    store = ctx.project.store
    return databases.DumpTarget(store.anchor, PurePosixPath(*dump_dir(ctx).relative_to(store.anchor).parts))


def ensure_dumpable(ctx: EnvContext, checks: list[BranchCheck]) -> None:
    """Before anything is removed: a pg_dump fit for each changed branch's
    server is installed, and the dumps directory can be written without
    following a symlink (``down --force`` must be able to keep its promise)."""
    from hybridiso import safe_files
    from hybridiso.services import databases

    dumpable = [c for c in checks if c.unreachable is None]
    if dumpable:
        target = _dump_target(ctx)
        safe_files.ensure_dir(target.anchor, target.rel)
    for c in dumpable:
        databases.pg_dump_for(databases.server_major(c.server))


@dataclass(frozen=True)
class Released:
    name: str
    dump: Path | None = None  # a changed branch's data, saved before it was dropped
    change: str = ""
    left: str = ""  # why it is still on its server (not reachable)


def release(ctx: EnvContext, *, dump: bool = False) -> list[Released]:
    """Drop the agent's database branches.  A branch whose data changed is
    dumped first with ``dump``, else kept: ``databases.DataChanged`` is
    raised and the record keeps it (and those not dropped yet).  With
    ``dump``, a server that cannot be reached keeps its branch (``left``):
    gc drops it later, unless its data changed."""
    from hybridiso.services import databases

    owned = ctx.record.databases
    target = _dump_target(ctx) if dump else None
    released = []
    for service in sorted(owned):
        db = owned[service]
        if not ours(ctx, service, db):
            released.append(Released(db.name, left=f"not the branch agent {ctx.name} gets for service {service}: never touched"))
            del owned[service]
            continue
        try:
            dropped = databases.drop_branch(db.server, db.name, databases.Baseline.from_json(db.baseline), dump_to=target)
        except databases.Unreachable as e:
            if not dump:
                raise
            released.append(Released(db.name, left=e.message))
        else:
            if dropped.existed:
                released.append(Released(db.name, dropped.dump, dropped.change))
        del owned[service]
    return released
