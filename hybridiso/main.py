"""The ``hybridiso`` command line."""
from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from hybridiso import __version__
from hybridiso.errors import EXIT_USAGE, UserError, error_handler
from hybridiso.process import no_git_env

# verb -> module under hybridiso.commands.  Every one is imported to build the
# parser, so they keep heavy imports (docker, jinja2, psycopg) inside the
# functions that use them: `hybridiso status` never pays for those.
COMMANDS = {
    "init": "init",
    "plan": "plan",
    "up": "up",
    "status": "status",
    "exec": "exec_",
    "down": "down",
    "restore": "restore",
    "render": "render",
    "report": "report",
    "gc": "gc",
    "sync": "sync",
    "land": "land",
    "doctor": "doctor",
    "demo": "demo",
}

DESCRIPTION = """\
Give every coding agent working on this repository its own isolated
environment -- a git worktree, a clone, or a container -- chosen per agent
from hybridiso.yaml, and manage them from creation to cleanup.

typical use:
  hybridiso init        write a starter hybridiso.yaml
  hybridiso plan        see which strategy each agent gets, and why
  hybridiso up          create the environments (again: changes nothing)
  hybridiso status      what each environment is doing
  hybridiso exec A -- CMD   run CMD in agent A's environment
  hybridiso down        remove environments (never loses work)
  hybridiso restore     list what `down --force` saved, bring a backup back
  hybridiso render      write container agents' compose files, start nothing
  hybridiso report      what each strategy costs here (--compare N measures)
  hybridiso sync        fetch once, rebase every clean environment onto base
  hybridiso land        land agents' work on base, each step checked first
  hybridiso gc          remove merged, deleted and orphaned environments
  hybridiso doctor      check git, Docker, disk and ports on this machine
  hybridiso demo        try it all on a sample repository in a temp dir

exit codes: 0 ok, 1 error (message says what to do), 2 usage, 3 internal
error (a log is written), 130 interrupted.
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        print(f"hybridiso: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="hybridiso",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"hybridiso {__version__}")
    parser.add_argument(
        "-C",
        dest="directory",
        default=".",
        metavar="PATH",
        help="run as if started in PATH: any directory of the repository, of one of its worktrees, or of an agent's environment",
    )
    parser.add_argument(
        "-f",
        "--file",
        metavar="MANIFEST",
        help="manifest to use (default: hybridiso.yaml at the root of the main worktree; "
        "in a bare repository, of the worktree you stand in)",
    )
    sub = parser.add_subparsers(dest="verb", metavar="COMMAND", parser_class=_Parser)
    for module in COMMANDS.values():
        importlib.import_module(f"hybridiso.commands.{module}").add_parser(sub)
    return parser


def _sigterm(signum: int, frame: FrameType | None) -> None:
    # treat `kill` like Ctrl-C: roll back what was half-made (docs/faults.md row 9)
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    # leaked GIT_DIR & co. (from a hook, say) would aim git at the wrong repository
    keep = no_git_env()
    for key in [k for k in os.environ if k not in keep]:
        del os.environ[key]
    return _main(argv)


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.verb:
        parser.print_help()
        return EXIT_USAGE
    signal.signal(signal.SIGTERM, _sigterm)
    module = importlib.import_module(f"hybridiso.commands.{COMMANDS[args.verb]}")
    with error_handler():
        _check_directory(args.directory)
        return int(module.run(args) or 0)


def _check_directory(directory: str) -> None:
    """``-C PATH`` must be a directory, for every verb (a file used to be an
    internal error deep in the first git call)."""
    try:
        path = Path(directory).resolve()
    except FileNotFoundError:  # the shell stands in a directory that was removed
        raise UserError(
            "the current directory does not exist any more (removed while you stood in it, e.g. by `hybridiso down`)",
            hint="cd to your repository, or pass -C PATH",
        ) from None
    if not path.exists():
        raise UserError(f"-C {directory}: no such directory", hint="pass -C a directory of your repository")
    if not path.is_dir():
        raise UserError(f"-C {directory} is not a directory", hint="pass -C the directory to run in (the repository or one of its subdirectories), not a file")
