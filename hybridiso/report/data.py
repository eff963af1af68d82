"""The report as data: one stable JSON shape (docs/reports.md) that every
format (table, markdown, html) is made from."""
from __future__ import annotations

import datetime as _dt
import os
import platform
from typing import Any

from hybridiso import strategies
from hybridiso.report.compare import Comparison

SCHEMA_VERSION = 1
METRICS = ("disk_bytes_per_env", "fetch_seconds", "startup_seconds")
# one order of the strategies in every report, live or compare, every format
# (issue 16: the two ordered them differently): the registry's; a name it
# does not know goes after these, by name


def strategy_key(name: str) -> tuple[int, str]:
    order = list(strategies.STRATEGIES)
    return (order.index(name) if name in order else len(order), name)


def _ratios(rows: list[dict[str, Any]]) -> None:
    """Each metric as a multiple of the cheapest strategy's."""
    for metric in METRICS:
        values = [r[metric] for r in rows if r.get(metric)]
        floor = min(values) if values else None
        for r in rows:
            v = r.get(metric)
            r.setdefault("ratios", {})[metric] = round(v / floor, 2) if floor and v is not None else None


def from_comparison(c: Comparison, repo_path: str, base: str) -> dict[str, Any]:
    rows = []
    for name, r in c.results.items():
        rows.append(
            {
                "strategy": name,
                "envs": len(r.envs),
                "disk_bytes_per_env": r.unique_median,
                "disk_unique_bytes": r.unique_bytes,
                "disk_shared_bytes": r.shared_bytes,
                "fetches": r.fetches,
                "fetch_seconds": r.fetch_seconds,
                "fetch_bytes": r.fetch_bytes,
                "fetch_note": r.fetch_note,
                "startup_seconds": r.startup_median,
                "startup_seconds_each": r.startup_seconds,
            }
        )
    rows.sort(key=lambda r: strategy_key(str(r["strategy"])))
    _ratios(rows)
    return {
        "schema_version": SCHEMA_VERSION,
        "mode": "compare",
        "measured_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "repository": {"path": repo_path, "base": c.base or base, "files": c.files, "tree_bytes": c.tree_bytes, "object_store_bytes": c.store_bytes},
        "machine": {"cores": os.cpu_count(), "system": platform.system(), "python": platform.python_version()},
        "n": c.n,
        "strategies": rows,
        "skipped": c.skipped,
        "total_bytes": c.total_bytes,
        "seconds": c.seconds,
    }


def live(repo_path: str, base: str, store_bytes: int, envs: list[dict[str, Any]], total_bytes: int) -> dict[str, Any]:
    by_strategy: dict[str, list[dict[str, Any]]] = {}
    for e in envs:
        by_strategy.setdefault(e["strategy"], []).append(e)
    rows = []
    for name, items in sorted(by_strategy.items(), key=lambda kv: strategy_key(kv[0])):
        disks = sorted(e["disk_unique_bytes"] for e in items)
        startups = sorted(e["startup_seconds"] for e in items if e["startup_seconds"] is not None)
        rows.append(
            {
                "strategy": name,
                "envs": len(items),
                "disk_bytes_per_env": disks[len(disks) // 2] if disks else None,
                "fetches": None,
                "fetch_seconds": None,
                "fetch_bytes": None,
                "fetch_note": "not measured for live envs: run `hybridiso report --compare N`",
                "startup_seconds": startups[len(startups) // 2] if startups else None,
            }
        )
    _ratios(rows)
    return {
        "schema_version": SCHEMA_VERSION,
        "mode": "live",
        "measured_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "repository": {"path": repo_path, "base": base, "object_store_bytes": store_bytes},
        "machine": {"cores": os.cpu_count(), "system": platform.system(), "python": platform.python_version()},
        "strategies": rows,
        "envs": sorted(envs, key=lambda e: (strategy_key(e["strategy"]), e["agent"])),
        "skipped": {},
        "total_bytes": total_bytes,
    }
