"""Backups that ``down --force`` writes and ``hybridiso restore`` brings back.

One backup is one namespace of refs in the main repository,
``refs/hybridiso/backup/<agent>/<UTC stamp>-<random>/``, holding every piece
of work the environment had (hybridiso/work/inventory.py): ``files`` (a commit of its
files on top of its HEAD), ``refs/heads/<branch>``, ``refs/tags/<tag>``,
``stash/<n>``, ``detached/<n>``, ``submodules/<path>/...``.  Names are unique
(the random part) and written create-only in one transaction, so two forced
removals within a second keep both backups (docs/faults.md row 27).  Objects from other
stores (a clone, a submodule) are pushed in first under
``refs/hybridiso/incoming/``, create-only too, and those temporary refs are
deleted by the same transaction that names the backup.

Restoring never overwrites: every piece becomes a new ref under
``restored/<agent>/<id>/`` (branches; tags stay tags), all or none.
"""
from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from hybridiso import git
from hybridiso.errors import UserError
from hybridiso.work.inventory import Tip, submodule_path

PREFIX = "refs/hybridiso/backup"
INCOMING = "refs/hybridiso/incoming"
RESTORED = "restored"
ATTEMPTS = 5


def new_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)


def save(root: Path, common_dir: Path, agent: str, tips: list[Tip]) -> str:
    """Write ``tips`` as one new backup of ``agent``; return its namespace.
    The caller holds the repository lock, so temporary refs already there
    are a killed run's (its environment was never removed): they go too."""
    pieces = {t.key: t for t in reversed(tips)}  # one piece per name, the first one given wins
    stale = {r.name: r.oid for r in git.list_refs(root, INCOMING + "/")}
    incoming = {**stale, **_bring_objects_in(common_dir, list(pieces.values()))}
    oids = {key: t.oid for key, t in pieces.items()}
    problem = ""
    for _ in range(ATTEMPTS):
        namespace = f"{PREFIX}/{agent}/{new_id()}"
        problem = git.create_refs(root, {f"{namespace}/{k}": oid for k, oid in oids.items()}, deletes=incoming) or ""
        if not problem:
            return namespace
        if "exists" not in problem:
            break
    if incoming:
        git.create_refs(root, {}, deletes=incoming)  # the objects stay until git gc; the refs go
    raise UserError(f"agent {agent}: could not write its backup refs under {PREFIX}/{agent}/: {problem}", hint="nothing was removed; run the command again")


def _bring_objects_in(common_dir: Path, tips: list[Tip]) -> dict[str, str]:
    """Push the pieces other object stores hold into the main repository,
    under temporary create-only refs; returns them (ref -> id)."""
    token = f"{os.getpid()}-{secrets.token_hex(4)}"
    incoming: dict[str, str] = {}
    stores: dict[Path, list[Tip]] = {}
    for t in tips:
        if t.store is not None:
            stores.setdefault(t.store, []).append(t)
    for i, (store, group) in enumerate(stores.items()):
        refs = {f"{INCOMING}/{token}/{i}/{j}": t.oid for j, t in enumerate(group)}
        git.push_new_refs(store, common_dir, refs)
        incoming.update(refs)
    return incoming


# --- listing --------------------------------------------------------------------------


@dataclass(frozen=True)
class Piece:
    key: str  # e.g. files, refs/heads/side, stash/0
    oid: str
    commit: str | None  # what it peels to


@dataclass(frozen=True)
class Backup:
    agent: str
    id: str
    namespace: str
    pieces: tuple[Piece, ...]

    @property
    def created(self) -> str:
        """ISO 8601 UTC from the id (older backups' ids were local time)."""
        stamp = self.id.split("-", 1)[0]
        try:
            t = time.strptime(stamp, "%Y%m%dT%H%M%SZ")
        except ValueError:
            return self.id
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", t)

    def restore_command(self) -> str:
        return f"hybridiso restore {self.agent} {self.id}"


def list_backups(root: Path, agent: str | None = None) -> list[Backup]:
    """Every backup (of ``agent``), oldest first.  Before issue 11 a backup
    was one ref ``<prefix>/<agent>/<stamp>``: listed as a backup of files."""
    found: dict[tuple[str, str], list[Piece]] = {}
    for ref in git.list_refs(root, f"{PREFIX}/{agent}/" if agent else f"{PREFIX}/"):
        parts = ref.name.removeprefix(PREFIX + "/").split("/", 2)
        if len(parts) < 2:
            continue
        key = parts[2] if len(parts) == 3 else "files"
        found.setdefault((parts[0], parts[1]), []).append(Piece(key, ref.oid, ref.commit))
    backups = [Backup(a, i, f"{PREFIX}/{a}/{i}", tuple(sorted(p, key=_order))) for (a, i), p in found.items()]
    return sorted(backups, key=lambda b: (b.agent, b.created, b.id))


def _order(p: Piece) -> tuple[int, str]:
    return (0 if p.key == "files" else 1, p.key)


def find(root: Path, agent: str, backup: str) -> Backup:
    """The backup named by its id or its namespace ref (what down printed)."""
    wanted = backup.removeprefix(f"{PREFIX}/{agent}/").strip("/")
    mine = list_backups(root, agent)
    for b in mine:
        if b.id == wanted:
            return b
    listing = ", ".join(b.id for b in mine[-5:]) or "none"
    raise UserError(
        f"agent {agent} has no backup {backup!r} (its backups: {listing})",
        hint=f"`hybridiso restore {agent}` lists them",
    )


def describe_piece(key: str) -> str:
    if key == "files":
        return "its files (modified, untracked, precious) on top of its HEAD"
    if key.startswith("submodules/"):
        enc, _, rest = key.removeprefix("submodules/").partition("/")
        return f"submodule {submodule_path(enc)}: {describe_piece(rest)}"
    for prefix, label in (("refs/heads/", "branch"), ("refs/tags/", "tag"), ("refs/notes/", "notes"), ("stash/", "stash entry"), ("detached/", "commits its HEAD left on no branch, tip")):
        if key.startswith(prefix):
            return f"{label} {key.removeprefix(prefix)}"
    return key


# --- restoring ------------------------------------------------------------------------


@dataclass(frozen=True)
class Restored:
    ref: str  # what restore creates
    oid: str
    what: str


def restore_plan(backup: Backup) -> list[Restored]:
    """Where each piece goes: new refs under ``restored/<agent>/<id>/``."""
    base = f"{RESTORED}/{backup.agent}/{backup.id}"
    plan = []
    for piece in backup.pieces:
        target, keep_object = _target(piece.key, base)
        oid = piece.oid if keep_object else piece.commit
        if oid is None:
            continue  # not a commit (nothing hybridiso writes): left in the backup
        plan.append(Restored(target, oid, describe_piece(piece.key)))
    return plan


def _target(key: str, base: str) -> tuple[str, bool]:
    """(the ref a piece is restored as, whether it keeps its object as is:
    tags and notes do, branches need the commit)."""
    if key.startswith("refs/tags/"):
        return f"refs/tags/{base}/{key.removeprefix('refs/tags/')}", True
    if key.startswith("refs/notes/"):
        return f"refs/notes/{base}/{key.removeprefix('refs/notes/')}", True
    if key.startswith("submodules/"):
        enc, _, rest = key.removeprefix("submodules/").partition("/")
        return f"refs/heads/{base}/submodules/{enc}/{_branch_part(rest)}", False
    return f"refs/heads/{base}/{_branch_part(key)}", False


def _branch_part(key: str) -> str:
    for prefix, short in (("refs/heads/", "heads/"), ("refs/tags/", "tags/"), ("refs/remotes/", "remotes/")):
        if key.startswith(prefix):
            return short + key.removeprefix(prefix)
    return key


def restore(root: Path, backup: Backup) -> list[Restored]:
    """Create every ref of ``restore_plan`` or none: a name that exists is
    never overwritten (UserError naming it)."""
    plan = restore_plan(backup)
    taken = conflicts(root, plan)
    if taken:
        raise UserError(
            f"restoring {backup.namespace} would overwrite {', '.join(taken[:5])}{' ...' if len(taken) > 5 else ''}; nothing was changed",
            hint=f"it was restored before (`git branch --list '{RESTORED}/{backup.agent}/{backup.id}/*'`), or rename those refs first",
        )
    problem = git.create_refs(root, {r.ref: r.oid for r in plan})
    if problem:
        raise UserError(f"restoring {backup.namespace}: git refused ({problem}); nothing was changed", hint="a branch or tag whose name is a prefix of these is in the way: rename it")
    return plan


def conflicts(root: Path, plan: list[Restored]) -> list[str]:
    existing = {r.name for r in git.list_refs(root, *{r.ref.rsplit("/", 1)[0] + "/" for r in plan})}
    return [r.ref for r in plan if r.ref in existing]
