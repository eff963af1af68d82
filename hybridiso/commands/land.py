"""``hybridiso land [AGENT...]``: bring agents' work onto the target, one
checked step at a time (issue 14; docs/land.md).  The train is
hybridiso/land/; this is the verb."""
from __future__ import annotations

import argparse

from hybridiso import output
from hybridiso.commands.common import add_json_flag, check_names, project_from_args
from hybridiso.errors import EXIT_OK, EXIT_USER
from hybridiso.land import report
from hybridiso.land.queue import Options, Train
from hybridiso.land.store import LandStore

HELP = "land agents' work on base, each candidate checked on exactly what it lands on"


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "land",
        help=HELP,
        description=(
            HELP + ". Candidates go in the order given (default: manifest order, the agents with commits "
            "beyond the target); each is applied in a scratch worktree, checked with land.check, and the "
            "target moves only when green. Conflicts and red checks are reported and skipped. "
            "Exit 0 when every candidate landed or had nothing to land, 1 otherwise."
        ),
    )
    p.add_argument("agents", nargs="*", metavar="AGENT", help="only these agents, in this order (default: all, manifest order)")
    p.add_argument("--dry-run", action="store_true", help="say what each candidate would do; change nothing")
    p.add_argument("--stop-on-failure", action="store_true", help="stop at the first candidate that does not land")
    p.add_argument("--keep-failed", action="store_true", help="keep a failed candidate's scratch worktree and print its path")
    add_json_flag(p)


def run(args: argparse.Namespace) -> int:
    project = project_from_args(args)
    state = project.store.load()
    names = check_names(project, args.agents)
    train = Train(project, state, Options(args.dry_run, args.stop_on_failure, args.keep_failed))
    if args.dry_run:
        result = train.run(names)
    else:
        store = LandStore(project.store)
        store.ensure()
        with store.locked("land"):
            result = train.run(names)
            if result.outcomes or result.resumed:
                result.report = report.write_markdown(store, result)
            report.remember(store, result)
    if args.json:
        output.print_json(report.as_json(result))
    else:
        report.print_summary(result)
    return EXIT_OK if result.ok else EXIT_USER
