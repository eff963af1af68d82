"""``hybridiso gc [--yes] [--dry-run] [--json]``: remove what is finished or broken.

Finds merged agents (also squash and rebase merges), zombie worktrees,
environments whose branch was deleted upstream, interrupted creations, orphan
directories in the workspace and what they own (branch, port leases, database
branches, containers), and Docker resources and database branches whose agent
is gone; shows it; removes it only with ``--yes``.  Work that is
not committed or not merged is never removed (gc.rules.decide).
"""
from __future__ import annotations

import argparse

from hybridiso import cleanup, output
from hybridiso.commands.common import add_json_flag, check_records, project_from_args
from hybridiso.errors import UserError
from hybridiso.gc.finders import BUILTIN_FINDERS
from hybridiso.gc.leftovers import EARLY_FINDERS
from hybridiso.gc.leftovers import FINDERS as LEFTOVER_FINDERS
from hybridiso.gc.rules import Finding, summary
from hybridiso.envs.reconcile import adopt_from_reality

HELP = "remove merged, deleted and orphaned environments (shows what it would do without --yes)"


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "gc",
        help=HELP,
        description=(
            HELP + ". Finds agents whose branch is merged into base (merge, squash or rebase, "
            "judged by content), worktrees whose directory was deleted, environments whose "
            "upstream branch was deleted, interrupted creations, directories in the "
            "workspace that nothing knows, Docker containers, networks, volumes and "
            "database branches left by agents that no longer exist, and setup commands "
            "a killed run left running. Uncommitted or unmerged work (also changed "
            "database data) is always kept."
        ),
    )
    p.add_argument("--yes", "-y", action="store_true", help="remove what was found (default: only show it)")
    p.add_argument("--dry-run", action="store_true", help="only show what would be removed, even with --yes")
    add_json_flag(p)


def run(args: argparse.Namespace) -> int:
    project = project_from_args(args)
    act = args.yes and not args.dry_run
    with project.store.locked("gc"):
        state = project.store.load()
        if state.rebuilt_from:
            output.warn(state.rebuilt_from)
        adopt_from_reality(project, state)  # a lost state file must not make envs look orphaned
        check_records(project, state)  # docs/faults.md row 30: a record pointing elsewhere stops gc before it touches anything
        findings: list[Finding] = []
        for finder in (*EARLY_FINDERS, *BUILTIN_FINDERS, *LEFTOVER_FINDERS):
            findings += finder(project, state, not act)
        if act:
            apply(findings)
    if args.json:
        output.print_json({"applied": act, "findings": [f.to_json() for f in findings], "summary": summary(findings, act)})
    else:
        show(findings, act)
    output.message(summary(findings, act))
    if not act and any(f.remove for f in findings):
        output.message("nothing was changed; run `hybridiso gc --yes` to remove these")
    failed = [f for f in findings if f.result == "failed"]
    if failed:
        details = "\n".join(f"  {f.target}: {cleanup.shorten(f.left)}" for f in failed)
        raise UserError(
            f"{len(failed)} removal{'s' if len(failed) > 1 else ''} could not finish; left on disk:\n{details}",
            hint="files owned by another user (a container's root): sudo chown -R $(id -u) PATH; "
            "immutable files: chattr -i; then run `hybridiso gc --yes` again",
        )
    return 0


def apply(findings: list[Finding]) -> None:
    for f in findings:
        if not f.remove:
            f.result = "kept"
            continue
        assert f.apply is not None
        try:
            f.left = f.apply()
        except UserError as e:
            f.left = [e.message]
        f.result = "failed" if f.left else "removed"
        output.message(f" {output.mark(not f.left)} {f.target}: {'removed' if not f.left else 'could not finish'} ({f.kind})")


def show(findings: list[Finding], applied: bool) -> None:
    rows = []
    for f in findings:
        action = (f.result or "kept") if applied else ("remove" if f.remove else "keep")
        rows.append([action, f.kind, f.target, f.reason, "; ".join(f.owns) or "-"])
    if rows:
        output.print_table(rows, ["ACTION", "KIND", "TARGET", "WHY", "OWNS"])
