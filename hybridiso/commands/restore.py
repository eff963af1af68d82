"""``hybridiso restore [AGENT] [BACKUP]``: list backups, or bring one back.

``down --force`` saves an environment's work under
``refs/hybridiso/backup/<agent>/<id>/`` and prints the restore command.
Restoring creates new refs only -- ``restored/<agent>/<id>/files`` (the
files on top of the environment's HEAD), ``.../heads/<branch>``,
``.../stash/<n>``, ``.../detached/<n>``, ``.../submodules/<path>/...`` as
branches, tags as ``refs/tags/restored/<agent>/<id>/<tag>`` -- all or none,
never over an existing name.  The backup itself stays.
"""
from __future__ import annotations

import argparse

from hybridiso import output
from hybridiso.work import backups
from hybridiso.commands.common import add_json_flag, project_from_args
from hybridiso.errors import UserError

HELP = "list the backups `down --force` made, or bring one back as new branches"


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "restore",
        help=HELP,
        description=(
            HELP + ". Without BACKUP it lists the backups (of AGENT). With BACKUP (the id "
            "`down` printed, or its ref) it creates, for every piece saved, a new ref under "
            "restored/AGENT/BACKUP/: `files` (the environment's files, committed on top of "
            "its HEAD), `heads/<branch>`, `stash/<n>` (git stash apply works on it), "
            "`detached/<n>`, `submodules/<path>/...` as branches, tags as tags under "
            "refs/tags/restored/. It never overwrites a ref, and keeps the backup."
        ),
        epilog="example: hybridiso restore api 20261201T101500Z-3fa2c1 && git log --stat restored/api/20261201T101500Z-3fa2c1/files",
    )
    p.add_argument("agent", nargs="?", metavar="AGENT", help="whose backups (default: every agent's)")
    p.add_argument("backup", nargs="?", metavar="BACKUP", help="the backup to restore: its id, or its ref")
    p.add_argument("--dry-run", action="store_true", help="say which refs it would create; change nothing")
    add_json_flag(p)


def run(args: argparse.Namespace) -> int:
    project = project_from_args(args, manifest_optional=True)
    root = project.root
    if args.agent and args.backup is None and args.agent.startswith(backups.PREFIX + "/"):
        # the backup's ref alone, as `down` printed it
        args.agent, _, args.backup = args.agent.removeprefix(backups.PREFIX + "/").partition("/")
    if args.backup is None:
        return _list(backups.list_backups(root, args.agent), args)
    backup = backups.find(root, args.agent, args.backup)
    plan = backups.restore_plan(backup)
    if args.dry_run:
        taken = backups.conflicts(root, plan)
        for r in plan:
            output.message(f" - would create {_short(r.ref)} ({r.what})" + ("  [exists: would refuse]" if r.ref in taken else ""))
        if args.json:
            output.print_json(_json(backup, plan, dry_run=True))
        if taken:
            raise UserError(f"restoring {backup.namespace} would overwrite {', '.join(taken[:5])}; nothing was changed")
        return 0
    created = backups.restore(root, backup)
    for r in created:
        output.message(f" {output.mark(True)} created {_short(r.ref)} ({r.what})")
    output.message(_next_steps(backup, created))
    if args.json:
        output.print_json(_json(backup, created, dry_run=False))
    return 0


def _list(found: list[backups.Backup], args: argparse.Namespace) -> int:
    if args.json:
        output.print_json(
            [
                {
                    "agent": b.agent,
                    "backup": b.id,
                    "ref": b.namespace,
                    "created": b.created,
                    "pieces": [{"key": p.key, "object": p.oid, "what": backups.describe_piece(p.key)} for p in b.pieces],
                    "restore": b.restore_command(),
                }
                for b in found
            ]
        )
        return 0
    if not found:
        output.message(f"no backups{f' of agent {args.agent}' if args.agent else ''} (`hybridiso down --force` makes them)")
        return 0
    rows = [[b.agent, b.id, b.created, ", ".join(_piece_name(p.key) for p in b.pieces), b.restore_command()] for b in found]
    output.print_table(rows, ["AGENT", "BACKUP", "CREATED", "PIECES", "RESTORE WITH"])
    return 0


def _piece_name(key: str) -> str:
    return key.removeprefix("refs/heads/").removeprefix("refs/")


def _short(ref: str) -> str:
    return ref.removeprefix("refs/heads/").replace("refs/tags/", "tag ", 1)


def _next_steps(backup: backups.Backup, created: list[backups.Restored]) -> str:
    base = f"{backups.RESTORED}/{backup.agent}/{backup.id}"
    lines = []
    if any(r.ref == f"refs/heads/{base}/files" for r in created):
        lines.append(f"`git log --stat {base}/files` shows the files; `git checkout {base}/files -- PATH` takes one back")
    if any("/stash/" in r.ref for r in created):
        lines.append(f"`git stash apply {base}/stash/N` applies a stash entry")
    if any("/submodules/" in r.ref for r in created):
        lines.append(f"`git -C SUBMODULE fetch <this repository> {base}/submodules/...` brings a submodule's pieces into it")
    lines.append(f"`git branch --list '{base}/*'` lists them; the backup stays under {backup.namespace}")
    return "next: " + "\n      ".join(lines)


def _json(backup: backups.Backup, plan: list[backups.Restored], *, dry_run: bool) -> dict[str, object]:
    return {
        "agent": backup.agent,
        "backup": backup.id,
        "dry_run": dry_run,
        "created": [{"ref": r.ref, "object": r.oid, "what": r.what} for r in plan],
    }
