"""Turn report data into a terminal table, markdown, JSON or self-contained HTML."""
from __future__ import annotations

import json
from typing import Any

from hybridiso import strategies
from hybridiso.output import human_bytes, plural, table

HEADERS = ["STRATEGY", "ENVS", "DISK/ENV", "x", "FETCHES", "FETCH BYTES", "FETCH TIME", "x", "STARTUP", "x"]
# one colour per strategy in every chart (issue 16: colours went by position
# in the report, so worktree was blue in one report and green in the next):
# by the strategy's place in the registry, which never changes between reports
PALETTE = ("#2f6fb0", "#c0692b", "#3b8f5a", "#8a4fb3", "#b38f2f", "#2fa3a3")
STRATEGY_COLOURS = dict(zip(strategies.STRATEGIES, PALETTE, strict=False))
OTHER_COLOUR = "#6b7480"  # a strategy this version has no colour for


def _ratio(r: dict[str, Any], metric: str) -> str:
    v = r.get("ratios", {}).get(metric)
    return "-" if v is None else f"{v:.2f}x"


def _rows(data: dict[str, Any]) -> list[list[str]]:
    rows = []
    for r in data["strategies"]:
        rows.append(
            [
                r["strategy"],
                str(r["envs"]),
                human_bytes(r["disk_bytes_per_env"]),
                _ratio(r, "disk_bytes_per_env"),
                "-" if r["fetches"] is None else str(r["fetches"]),
                human_bytes(r["fetch_bytes"]),
                "-" if r["fetch_seconds"] is None else f"{r['fetch_seconds']:.3f}s",
                _ratio(r, "fetch_seconds"),
                "-" if r["startup_seconds"] is None else f"{r['startup_seconds']:.2f}s",
                _ratio(r, "startup_seconds"),
            ]
        )
    return rows


# up's steps, in the order they run; "start" is start-to-healthy for containers
STEPS = ("create", "submodules", "services", "includes", "setup", "start")
ENV_HEADERS = ["AGENT", "STRATEGY", "UNIQUE", "SHARED", "STARTUP", *(s.upper() for s in STEPS)]
# columns of words, left-aligned in the HTML; the rest are figures, right-aligned
TEXT_COLUMNS = (0,)
ENV_TEXT_COLUMNS = (0, 1)


def _env_rows(data: dict[str, Any]) -> list[list[str]]:
    """Live reports: one row per environment, startup split into up's steps."""
    rows = []
    for e in data.get("envs", []):
        parts = e.get("startup_parts") or {}
        rows.append(
            [
                e["agent"],
                e["strategy"],
                human_bytes(e["disk_unique_bytes"]),
                human_bytes(e["disk_shared_bytes"]),
                "-" if e["startup_seconds"] is None else f"{e['startup_seconds']:.2f}s",
                *("-" if parts.get(step) is None else f"{parts[step]:.2f}s" for step in STEPS),
            ]
        )
    return rows


def _summary(data: dict[str, Any]) -> list[str]:
    repo = data["repository"]
    lines = [f"repository: {repo['path']} (base {repo['base']})"]
    if repo.get("files") is not None:
        lines.append(f"tree: {plural(repo['files'], 'file')}, {human_bytes(repo['tree_bytes'])}; object store {human_bytes(repo['object_store_bytes'])}")
    else:
        lines.append(f"object store {human_bytes(repo['object_store_bytes'])} (shared by worktrees and containers)")
    lines.append(f"machine: {data['machine']['cores']} cores; measured {data['measured_at']}" + (f"; {plural(data['n'], 'env')} per strategy" if data.get("n") else ""))
    lines.append(f"all of it on disk, each inode once: {human_bytes(data['total_bytes'])}")
    for name, why in data.get("skipped", {}).items():
        lines.append(f"skipped {name}: {why}")
    lines.append("x = multiple of the cheapest strategy; DISK/ENV = bytes unique to one env (median)")
    return lines


def _per_env(data: dict[str, Any], fmt: str) -> str:
    envs = _env_rows(data)
    return "\n\nper environment (startup as `up` timed it, step by step):\n\n" + table(envs, ENV_HEADERS, fmt=fmt) if envs else ""


def as_table(data: dict[str, Any]) -> str:
    return "\n".join(_summary(data)) + "\n\n" + table(_rows(data), HEADERS) + _per_env(data, "simple") + "\n"


def as_markdown(data: dict[str, Any]) -> str:
    lines = "\n".join(f"- {line}" for line in _summary(data))
    return lines + "\n\n" + table(_rows(data), HEADERS, fmt="github") + _per_env(data, "github") + "\n"


def as_json(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2) + "\n"


def _bars(data: dict[str, Any], metric: str, fmt: Any) -> list[dict[str, Any]]:
    rows = [r for r in data["strategies"] if r.get(metric) is not None]
    peak = max((r[metric] for r in rows), default=0) or 1
    return [
        {
            "label": r["strategy"],
            "value": r[metric],
            "text": fmt(r[metric]),
            "width": round(360 * r[metric] / peak, 1),
            "ratio": _ratio(r, metric),
            "colour": STRATEGY_COLOURS.get(r["strategy"], OTHER_COLOUR),
        }
        for r in rows
    ]


def as_html(data: dict[str, Any]) -> str:
    from hybridiso.render import render_template

    charts = [
        {"title": "Disk unique to one environment", "bars": _bars(data, "disk_bytes_per_env", human_bytes)},
        {"title": "Fetch after upstream moves (all envs)", "bars": _bars(data, "fetch_seconds", lambda v: f"{v:.3f} s")},
        {"title": "Startup, request to ready (median)", "bars": _bars(data, "startup_seconds", lambda v: f"{v:.2f} s")},
    ]
    return render_template(
        "report.html.j2",
        data=data,
        summary=_summary(data),
        headers=HEADERS,
        rows=_rows(data),
        text_columns=TEXT_COLUMNS,
        env_headers=ENV_HEADERS,
        env_rows=_env_rows(data),
        env_text_columns=ENV_TEXT_COLUMNS,
        colours=STRATEGY_COLOURS,
        charts=[c for c in charts if c["bars"]],
    )


FORMATS = {"table": as_table, "markdown": as_markdown, "json": as_json, "html": as_html}
