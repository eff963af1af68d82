"""``hybridiso down [AGENT...]``: remove environments without losing work."""
from __future__ import annotations

import argparse

from hybridiso import lifecycle, output, ports
from hybridiso.commands.common import add_json_flag, check_names, check_records, context, project_from_args
from hybridiso.errors import UserError
from hybridiso.reconcile import adopt_from_reality

HELP = "remove agents' environments (refuses when work would be lost)"


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "down",
        help=HELP,
        description=(
            HELP + ". Uncommitted, untracked or precious ignored files (like .env), "
            "commits not in base, and database branches whose data changed make it "
            "refuse, naming them; --force first saves the files and commits to a ref "
            "under refs/hybridiso/backup/, dumps each changed database with pg_dump "
            "into the state dir, and says where."
        ),
    )
    p.add_argument("agents", nargs="*", metavar="AGENT", help="only these agents (default: all)")
    p.add_argument("--force", action="store_true", help="save the work to a backup ref (and changed databases to dumps), then remove")
    p.add_argument("--keep-branch", action="store_true", help="remove the environment but keep its branch")
    p.add_argument("--dry-run", action="store_true", help="say what would be removed; change nothing")
    add_json_flag(p)


def run(args: argparse.Namespace) -> int:
    project = project_from_args(args)
    results: list[dict[str, object]] = []
    with project.store.locked("down"):
        state = project.store.load()
        if state.rebuilt_from:
            output.warn(state.rebuilt_from)
        adopt_from_reality(project, state)
        names = check_names(project, args.agents, state) or sorted(state.agents)
        check_records(project, state, names)  # FAULTS #30: refused before anything is touched
        refused: list[str] = []
        for name in names:
            if name not in state.agents:
                output.message(f" - {name}: no environment")
                continue
            ctx = context(project, state, name)
            if args.dry_run:
                # the same decision the real run makes, without acting on it
                losing = lifecycle.work_at_risk(ctx, keep_branch=args.keep_branch)
                if losing.empty or args.force:
                    saved = f", after saving {losing.describe()} (files and commits to a backup ref, databases to dumps)" if not losing.empty else ""
                    results.append({"agent": name, "action": "would remove", "work": losing.describe() or None})
                    output.message(f" - {name}: would remove {ctx.path}{saved}")
                else:
                    e = lifecycle.refusal(ctx, losing)
                    refused.append(str(e))
                    results.append({"agent": name, "action": "would refuse", "work": losing.describe(), "reason": e.message})
                    output.message(f" - {name}: would refuse: it has {losing.describe()}")
                continue
            try:
                backup, _, released = lifecycle.remove(ctx, force=args.force, keep_branch=args.keep_branch)
            except UserError as e:
                refused.append(str(e))
                results.append({"agent": name, "action": "refused", "reason": e.message})
                continue
            del state.agents[name]
            project.store.save(state)
            ports.release(project.repo.common_dir, [name])  # the machine-wide lease too (FAULTS #37)
            dumps = {r.name: str(r.dump) for r in released if r.dump}
            results.append({"agent": name, "action": "removed", "backup_ref": backup, "database_dumps": dumps})
            line = f" {output.mark(True)} {name}: removed {ctx.path}"
            if backup:
                line += f"; work saved to {backup} (git log {backup})"
            output.message(line)
            for r in released:
                if r.dump:
                    # FAULTS #26: say where the data went, and how it comes back
                    output.message(f"   database {r.name} changed ({r.change}); dumped to {r.dump} "
                                   f"(restore: createdb NAME && psql -d NAME -f {r.dump})")
                elif r.left:
                    later = "" if r.left.startswith("not the branch") else "; `hybridiso gc` drops it once the server is back, unless its data changed"
                    output.warn(f"{name}: database {r.name} was not dropped: {r.left}{later}")
    if args.json:
        output.print_json(results)
    if refused:
        raise UserError("\n".join(refused))
    return 0
