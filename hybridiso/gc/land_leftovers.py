"""gc's finder for what a killed ``hybridiso land`` left (issue 14 item 4):
its scratch worktrees (and clones) under the state dir, the checks it was running and
their scratch databases.

gc may not import the land package (they are siblings: pyproject's layers),
so it reads land's files by their documented places (docs/land.md; the
test pins them to hybridiso/land/store.py).  Only while no ``land`` holds
the land lock: then nothing in ``scratch/`` is in use.  ``kept/`` is the
user's (``--keep-failed``) and is left alone.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hybridiso import git, json_data, process_groups, safe_files
from hybridiso.gc.rules import Finding, Kind
from hybridiso.project import Project
from hybridiso.state import ProcessGroup, State, lock_holder

LAND_SCRATCH: Kind = "land-scratch"
LAND_CHECK: Kind = "land-check"
LAND_DATABASE: Kind = "land-database"
LAND_CONTAINER: Kind = "land-container"
CHECK_ROLE = "land-check"  # the dev.hybridiso.role of a container agent's check (land/container_check.py)


def land_dir(project: Project) -> Path:
    return project.repo.common_dir / "hybridiso" / "land"


def land_running(project: Project) -> bool:
    """A ``land`` holds the land lock: a check of an agent that has no
    environment may be using a network (and firewall rules) labelled for it
    (land/container_check.py), which the Docker and firewall finders then leave."""
    return safe_files.is_plain_dir(land_dir(project)) and lock_holder(land_dir(project) / "lock") is not None


def _journal(project: Project) -> dict[str, Any]:
    try:
        raw = safe_files.read_text(project.repo.common_dir, "hybridiso/land/journal.json")
        data = json_data.loads(raw) if raw else None
    except (safe_files.UnsafePath, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _journal_groups(project: Project) -> list[ProcessGroup]:
    """The journal's process groups that carry a token land issued: never
    one a tampered journal names (an agent's ``exec``: docs/faults.md row 41)."""
    groups = _journal(project).get("groups")
    found = [g for g in (ProcessGroup.from_json(x) for x in groups if isinstance(x, dict)) if g is not None] if isinstance(groups, list) else []
    return [g for g in found if process_groups.is_land_token(g.token, project.id)]


def journal_databases(project: Project) -> list[tuple[str, str]]:
    """(server, name) of the scratch databases of a land run's checks:
    dropped whatever they hold, so the general database finder leaves them
    to this one.  Only names of land's shape on a server the manifest names
    count, never an agent's branch a tampered journal names (docs/faults.md row 42)."""
    from hybridiso.services import branches

    dbs = _journal(project).get("databases")
    servers = {svc.url for svc in project.manifest.services.values() if svc.kind == "postgres" and svc.url}
    found = [(d.get("server"), d.get("name")) for d in dbs if isinstance(d, dict)] if isinstance(dbs, list) else []
    return [(s, n) for s, n in found if isinstance(s, str) and isinstance(n, str) and s in servers and branches.is_land_check_name(project, n)]


def land_findings(project: Project, state: State, dry_run: bool) -> list[Finding]:
    base = land_dir(project)
    if not safe_files.is_plain_dir(base):
        return []
    holder = lock_holder(base / "lock")
    scratch = base / "scratch"
    entries = git.scratch_entries(project.root, scratch)
    findings = []
    if holder is not None:
        return [Finding(LAND_SCRATCH, str(e), False, f"in use by the land run of {holder}") for e in entries + _clones(base)]
    groups = _journal_groups(project)
    alive = process_groups.survivors(groups)
    if alive:
        procs = [p for procs in alive.values() for p in procs]
        findings.append(
            Finding(
                LAND_CHECK,
                "land check",
                True,
                "still running from a land run that was killed: " + "; ".join(process_groups.describe_group(groups[i]) for i in sorted(alive)),
                [process_groups.describe(p) for p in procs],
                apply=lambda: process_groups.stop(groups),
            )
        )
    findings += _check_containers(project)  # after its supervisor's group: stopping that removes them too
    for server, name in journal_databases(project):
        findings.append(Finding(LAND_DATABASE, f"database {name}", True, "scratch database of a check of a land run that was killed", [f"database {name}"], apply=_dropper(server, name)))
    for entry in entries:
        # only what land made, never what was planted there (docs/faults.md row 41)
        why = git.not_scratch_worktree(project.repo.common_dir, scratch, entry) if os.path.lexists(entry) else ""
        if why:
            findings.append(Finding(LAND_SCRATCH, str(entry), False, why))
            continue
        findings.append(Finding(LAND_SCRATCH, str(entry), True, "scratch worktree of a land run that was killed", [f"worktree {entry}"], apply=_remover(project, entry)))
    for entry in _clones(base):  # a clone agent's check's scratch clone: only one land marked (git.not_scratch_clone)
        why = git.not_scratch_clone(entry.parent, entry, project.id)
        if why:
            findings.append(Finding(LAND_SCRATCH, str(entry), False, why))
        else:
            findings.append(Finding(LAND_SCRATCH, str(entry), True, "scratch clone of a land run that was killed", [f"clone {entry}"], apply=_clone_remover(project, entry)))
    return findings


def _clone_remover(project: Project, path: Path) -> Callable[[], list[str]]:
    def apply() -> list[str]:
        left = git.remove_scratch_clone(path.parent, path, project.id)
        return [left] if left else []

    return apply


def _clones(base: Path) -> list[Path]:
    clones = base / "clones"
    return sorted(clones / n for n in os.listdir(clones)) if safe_files.is_plain_dir(clones) else []


def _check_containers(project: Project) -> list[Finding]:
    """A container agent's check containers whose supervisor is gone."""
    if not any(a.image for a in project.manifest.agents):
        return []
    from hybridiso.containers import docker_client

    if not docker_client.reachable()[0]:
        return []  # the docker finder says so
    found = docker_client.containers({docker_client.LABEL_PROJECT: project.id, docker_client.LABEL_ROLE: CHECK_ROLE})
    return [
        Finding(LAND_CONTAINER, f"container {c.name}", True, f"check container of agent {c.agent} from a land run that was killed", [f"container {c.name}"], apply=_container_remover(project.id, c.id, c.name))
        for c in found
    ]


def _container_remover(project_id: str, cid: str, name: str) -> Callable[[], list[str]]:
    def apply() -> list[str]:
        from hybridiso.containers import docker_client

        docker_client.remove_container(cid)
        left = docker_client.containers({docker_client.LABEL_PROJECT: project_id, docker_client.LABEL_ROLE: CHECK_ROLE})
        return [f"container {name}"] if any(c.id == cid for c in left) else []

    return apply


def _dropper(server: str, name: str) -> Callable[[], list[str]]:
    def apply() -> list[str]:
        from hybridiso.services import databases

        databases.drop_scratch(server, name)
        return [f"database {name}"] if name in databases.list_branches(server, name) else []

    return apply


def _remover(project: Project, path: Path) -> Callable[[], list[str]]:
    def apply() -> list[str]:
        # only a worktree land made, and its own metadata: never a
        # repository-wide prune (docs/faults.md rows 28 and 41)
        left = git.remove_scratch_worktree(project.root, project.repo.common_dir, path.parent, path)
        return [left] if left else []

    return apply
