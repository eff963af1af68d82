"""``hybridiso land [AGENT...]``: bring agents' work onto the target, one
checked step at a time (issue 14; docs/land.md).  The train is
hybridiso/land/; this is the verb."""
from __future__ import annotations

import argparse

from hybridiso import output
from hybridiso.commands.common import add_json_flag, check_names, project_from_args
from hybridiso.errors import EXIT_OK, EXIT_USER
# only what --help needs: the train itself is imported when `land` runs
from hybridiso.land.machine import machine_parallel

HELP = "land agents' work on base, each candidate checked on exactly what it lands on"


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    here, why = machine_parallel()
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
    p.add_argument(
        "--parallel",
        nargs="?",
        const=0,
        default=1,
        type=_parallel,
        metavar="K",
        help=(
            "check up to K candidates at once, each on top of those before it (speculative: one that fails makes "
            "those behind it be checked again without it; what lands is what a sequential run lands). "
            "Bare --parallel: one per usable core, fewer when memory gives under 1 GiB each, at most 8; "
            f"on this machine {here} ({why}). Put it after the AGENTs, or write --parallel=K"
        ),
    )
    add_json_flag(p)


MAX_PARALLEL = 64  # scratch worktrees and checks at once; more is a typo


def _parallel(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= MAX_PARALLEL:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of checks at once (1 <= K <= {MAX_PARALLEL}; bare --parallel goes after the AGENTs)"
        )
    return int(text)


def run(args: argparse.Namespace) -> int:
    project = project_from_args(args)
    state = project.store.load()
    names = check_names(project, args.agents)
    from hybridiso.land import report
    from hybridiso.land.parallel import speculate
    from hybridiso.land.queue import Options, Train
    from hybridiso.land.store import LandStore

    parallel = args.parallel
    if parallel == 0:
        parallel, why = machine_parallel()
        output.message(f"hybridiso: --parallel {parallel} ({why})")
    train = Train(project, state, Options(args.dry_run, args.stop_on_failure, args.keep_failed, parallel))
    loop = speculate if parallel > 1 else None
    if args.dry_run:
        result = train.run(names)
    else:
        store = LandStore(project.store)
        store.ensure()
        with store.locked("land"):
            result = train.run(names, loop)
            if result.outcomes or result.resumed:
                result.report = report.write_markdown(store, result)
            report.remember(store, result)
    if args.json:
        output.print_json(report.as_json(result))
    else:
        report.print_summary(result)
    return EXIT_OK if result.ok else EXIT_USER
