"""gc's finder for what a killed ``hybridiso land`` left (issue 14 item 4):
its scratch worktrees under the state dir, the checks it was running and
their scratch databases.

gc may not import the land package (they are siblings: pyproject's layers),
so it reads land's files by their documented places (docs/land.md; the
test pins them to hybridiso/land/store.py).  Only while no ``land`` holds
the land lock: then nothing in ``scratch/`` is in use.  ``kept/`` is the
user's (``--keep-failed``) and is left alone.
"""
from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hybridiso import git, json_data, process_groups, safe_files
from hybridiso.gc.rules import Finding, Kind
from hybridiso.process import CommandError
from hybridiso.project import Project
from hybridiso.state import ProcessGroup, State, lock_holder

LAND_SCRATCH: Kind = "land-scratch"
LAND_CHECK: Kind = "land-check"
LAND_DATABASE: Kind = "land-database"


def land_dir(project: Project) -> Path:
    return project.repo.common_dir / "hybridiso" / "land"


def _journal(project: Project) -> dict[str, Any]:
    try:
        raw = safe_files.read_text(project.repo.common_dir, "hybridiso/land/journal.json")
        data = json_data.loads(raw) if raw else None
    except (safe_files.UnsafePath, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _journal_groups(project: Project) -> list[ProcessGroup]:
    groups = _journal(project).get("groups")
    return [g for g in (ProcessGroup.from_json(x) for x in groups or []) if g is not None]


def journal_databases(project: Project) -> list[tuple[str, str]]:
    """(server, name) of the scratch databases of a land run's checks:
    dropped whatever they hold (never an agent's branch), so the general
    database finder leaves them to this one."""
    dbs = _journal(project).get("databases")
    return [(str(d["server"]), str(d["name"])) for d in dbs or [] if isinstance(d, dict) and "server" in d and "name" in d]


def land_findings(project: Project, state: State, dry_run: bool) -> list[Finding]:
    base = land_dir(project)
    if not safe_files.is_plain_dir(base):
        return []
    holder = lock_holder(base / "lock")
    scratch = base / "scratch"
    entries = sorted(e for e in scratch.iterdir() if safe_files.is_plain_dir(e)) if safe_files.is_plain_dir(scratch) else []
    findings = []
    if holder is not None:
        return [Finding(LAND_SCRATCH, str(e), False, f"in use by the land run of {holder}") for e in entries]
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
    for server, name in journal_databases(project):
        findings.append(Finding(LAND_DATABASE, f"database {name}", True, "scratch database of a check of a land run that was killed", [f"database {name}"], apply=_dropper(server, name)))
    for entry in entries:
        findings.append(Finding(LAND_SCRATCH, str(entry), True, "scratch worktree of a land run that was killed", [f"worktree {entry}"], apply=_remover(project, entry)))
    return findings


def _dropper(server: str, name: str) -> Callable[[], list[str]]:
    def apply() -> list[str]:
        from hybridiso.services import databases

        databases.drop_scratch(server, name)
        return [f"database {name}"] if name in databases.list_branches(server, name) else []

    return apply


def _remover(project: Project, path: Path) -> Callable[[], list[str]]:
    def apply() -> list[str]:
        with contextlib.suppress(CommandError):
            git.worktree_remove(project.root, path, force=True)
        if path.exists():
            shutil.rmtree(path, ignore_errors=True)
        with contextlib.suppress(CommandError):
            git.run(project.root, "worktree", "prune")
        return [str(path)] if path.exists() else []

    return apply
