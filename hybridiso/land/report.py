"""What ``land`` shows: the summary table, ``--json``, and the markdown
landing report each real run leaves under the state dir."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import PurePosixPath
from typing import Any

from hybridiso import output
from hybridiso.land.queue import Run
from hybridiso.land.store import LandStore
from hybridiso.state import atomic_write_text

JSON_VERSION = 1


def summary_rows(run: Run) -> list[list[str]]:
    rows = []
    for o in run.outcomes:
        check = f"{o.check_seconds:.2f}s" if o.check_seconds else "-"
        why = o.why if len(o.why) <= 120 else o.why[:117] + "..."
        rows.append([o.agent, o.result, str(o.commits), check, why])
    return rows


def print_summary(run: Run) -> None:
    if not run.outcomes:
        output.message(f"hybridiso: nothing to land: no agent has commits beyond {run.target}")
        return
    print(output.table(summary_rows(run), ["agent", "result", "commits", "check", "why"]))
    if run.report:
        output.message(f"landing report: {run.report}")


def as_json(run: Run) -> dict[str, Any]:
    return {
        "version": JSON_VERSION,
        "run": run.id,
        "target": run.target,
        "dry_run": run.dry_run,
        "parallel": run.parallel,
        "before": run.before,
        "after": run.after,
        "ok": run.ok,
        "resumed": run.resumed or None,
        "report": run.report or None,
        "candidates": [asdict(o) for o in run.outcomes],
    }


def write_markdown(store: LandStore, run: Run) -> str:
    """runs/<run>/report.md; returns its path."""
    lines = [
        f"# hybridiso land {run.id}",
        "",
        f"Target `{run.target}`: `{run.before[:12]}` -> `{run.after[:12]}`.",
        "",
    ]
    if run.resumed:
        lines += [f"Before it: {run.resumed}.", ""]
    if run.outcomes:
        lines += [output.table(summary_rows(run), ["agent", "result", "commits", "check", "why"], fmt="github"), ""]
    for o in run.outcomes:
        lines += [f"## {o.agent}: {o.result}", ""]
        lines += [
            f"- branch `{o.branch}`, method {o.method}, {o.commits} commit{'s' if o.commits != 1 else ''}, tip `{o.tip[:12]}`",
            f"- took {o.seconds:.2f}s, check {o.check_seconds:.2f}s, {o.attempts} attempt{'s' if o.attempts != 1 else ''}",
        ]
        if o.landed:
            lines.append(f"- landed as `{o.landed[:12]}`" + (f" ({o.diffstat})" if o.diffstat else ""))
        if o.pushed is not None:
            lines.append(f"- pushed: {'yes' if o.pushed else 'no'}")
        if o.paths:
            lines.append("- paths: " + ", ".join(f"`{p}`" for p in o.paths))
        if o.why:
            lines.append(f"- {o.why}")
        if o.log:
            lines.append(f"- log: `{o.log}`")
        if o.tail:
            lines += ["", "```", o.tail, "```"]
        lines.append("")
    rel = PurePosixPath(*store.run_dir(run.id).parts, "report.md")
    path = store.anchor.joinpath(*rel.parts)
    atomic_write_text(path, "\n".join(lines), anchor=store.anchor)
    return str(path)


def remember(store: LandStore, run: Run) -> None:
    """Each agent's last result, for ``status``."""
    store.write_results({o.agent: {"result": o.result, "run": run.id, "landed": o.landed, "why": o.why} for o in run.outcomes})
