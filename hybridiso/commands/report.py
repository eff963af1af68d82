"""``hybridiso report``: what each strategy really costs on this repository."""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from hybridiso import output, strategies
from hybridiso.report import measure
from hybridiso.commands.common import check_records, int_in, project_from_args
from hybridiso.errors import UserError
from hybridiso.project import Project
from hybridiso.envs.reconcile import adopt_from_reality

HELP = "measure disk, fetch and startup cost of each strategy (live envs, or --compare N throwaway ones)"
MAX_COMPARE = 50


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "report",
        help=HELP,
        description=(
            "Measure what each isolation strategy costs on this repository. Without --compare: "
            "the live environments (disk now, startup as recorded by up). With --compare N: build N "
            "throwaway environments of each strategy beside the repository, measure disk, fetch after "
            "the upstream moves, and startup in one run, then remove them (also when interrupted)."
        ),
    )
    p.add_argument("--compare", type=int_in(1, MAX_COMPARE), metavar="N", help=f"build N (1-{MAX_COMPARE}) throwaway envs per strategy and measure them")
    p.add_argument(
        "--strategies",
        type=_strategy_list,
        default=list(strategies.STRATEGIES),
        help="comma-separated (default: all three; container needs Docker and an image)",
    )
    p.add_argument("--image", help="image for container envs in --compare (default: the manifest's first container agent's)")
    p.add_argument("--format", choices=("table", "markdown", "json", "html"), default="table")
    p.add_argument("--output", "-o", metavar="FILE", help="write the report to FILE instead of stdout")


def run(args: argparse.Namespace) -> int:
    from hybridiso.report import format as report_format

    # --compare measures any repository; it needs no hybridiso.yaml
    project = project_from_args(args, manifest_optional=args.compare is not None)
    if args.output:
        _check_writable(Path(args.output))  # before minutes of measuring, not after
    if args.compare is not None:
        wanted = args.strategies
        if not project.repo.has_commits:
            raise UserError("the repository has no commits yet: nothing to compare")
        data = _compare(project, args.compare, wanted, args.image)
        _save(project, data)
    else:
        data = _live(project)
    text = report_format.FORMATS[args.format](data)
    if args.output:
        try:
            Path(args.output).write_text(text, encoding="utf-8")
        except OSError as e:
            raise UserError(f"cannot write {args.output}: {e.strerror}") from None
        output.message(f"wrote {args.output}")
    else:
        sys.stdout.write(text)
    return 0


def _strategy_list(text: str) -> list[str]:
    wanted = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in strategies.STRATEGIES]
    if unknown or not wanted:
        raise argparse.ArgumentTypeError(f"unknown strategies: {', '.join(unknown) or '(none given)'} (known: {', '.join(strategies.STRATEGIES)})")
    return wanted


def _check_writable(path: Path) -> None:
    if path.is_dir():
        raise UserError(f"-o {path} is a directory", hint=f"name the file, e.g. -o {path / 'report.html'}")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(f"-o {path}: the directory {parent} does not exist", hint=f"mkdir -p {parent}")
    if not os.access(parent, os.W_OK):
        raise UserError(f"-o {path}: the directory {parent} is not writable")


def _compare(project: Project, n: int, wanted: list[str], image: str | None) -> dict[str, Any]:
    from hybridiso.report import data as report_data
    from hybridiso.report.compare import compare

    if image is None:
        image = next((a.image for a in project.manifest.agents if a.image), None)
    # SIGTERM must unwind through compare()'s cleanup like Ctrl-C does
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    output.message(f"[+] measuring {', '.join(wanted)}: {n} throwaway env(s) each, beside {project.root}")
    result = compare(project, n, wanted, image=image, progress=lambda s: output.message(f"    {s}"))
    return report_data.from_comparison(result, str(project.root), project.manifest.base)


def _live(project: Project) -> dict[str, Any]:
    from hybridiso.report import data as report_data
    from hybridiso.env_context import EnvContext

    state = project.store.load()
    adopt_from_reality(project, state)
    check_records(project, state)  # docs/faults.md row 30: measure only the agents' own places
    paths = {}
    for name, record in state.agents.items():
        ctx = EnvContext(project, None, record)
        if strategies.get(record.strategy).observe(ctx).exists:
            paths[name] = Path(record.path)
    if not paths:
        raise UserError(
            "no live environments to measure",
            hint="`hybridiso up` first, or `hybridiso report --compare 3` to measure throwaway ones",
        )
    disk = measure.environments_disk(project.repo.common_dir, project.store.dir, paths)  # what status says too
    envs = [
        {
            "agent": name,
            "strategy": state.agents[name].strategy,
            "disk_unique_bytes": disk.envs[name].unique_bytes,
            "disk_shared_bytes": disk.envs[name].shared_bytes,
            "startup_seconds": state.agents[name].timings.get("total"),
            # what `up` timed, step by step (create, includes, setup, start...)
            "startup_parts": {k: v for k, v in state.agents[name].timings.items() if k != "total"},
        }
        for name in sorted(paths)
    ]
    return report_data.live(str(project.root), project.manifest.base, disk.store_bytes, envs, disk.total_bytes)


def _save(project: Project, data: dict[str, Any]) -> None:
    from hybridiso.state import atomic_write_text

    atomic_write_text(project.store.dir / "reports" / "latest.json", json.dumps(data, indent=2) + "\n", anchor=project.store.anchor)
