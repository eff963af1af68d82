"""Projected costs of each strategy, for ``plan``.

Without a measurement the projection is an estimate from the size of the
checked-out tree (``git ls-tree -r -l``): a worktree or a local clone lays down
about that many bytes.  ``hybridiso report`` replaces estimates with measured
figures (issue: measured cost reports).
"""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass

from hybridiso import git, json_data
from hybridiso.project import Project

# seconds per MiB of checkout, measured on the design card's 2-core machine
# (ruff: 106 MB laid down by `git worktree add` in 0.92 s)
_SECONDS_PER_MIB = 0.92 / 106


@dataclass(frozen=True)
class Estimate:
    disk_bytes: int | None
    startup_seconds: float | None


@dataclass(frozen=True)
class Projection:
    tree_bytes: int | None
    object_store_bytes: int | None
    source: str

    def for_strategy(self, strategy: str) -> Estimate:
        if self.tree_bytes is None:
            return Estimate(None, None)
        seconds = max(0.05, self.tree_bytes / (1 << 20) * _SECONDS_PER_MIB)
        if strategy == "clone":
            # a local clone hard-links objects: new disk is the checkout plus
            # the clone's index and refs, not a second object store
            return Estimate(self.tree_bytes, seconds * 1.1)
        if strategy == "container":
            return Estimate(self.tree_bytes, seconds + 1.0)
        return Estimate(self.tree_bytes, seconds)

    def describe(self) -> str:
        return self.source


def checkout_bytes(project: Project, ref: str) -> int | None:
    r = git.run(project.root, "ls-tree", "-r", "-l", "-z", "--", ref, check=False)
    if r.returncode != 0:
        return None
    total = 0
    for entry in r.stdout.split("\0"):
        meta = entry.split("\t", 1)[0].split()
        if len(meta) == 4 and meta[3].isdigit():
            total += int(meta[3])
    return total


@dataclass(frozen=True)
class Measured:
    """Figures from the latest ``report --compare``, per strategy."""

    by_strategy: dict[str, Estimate]
    source: str

    def for_strategy(self, strategy: str) -> Estimate:
        return self.by_strategy.get(strategy, Estimate(None, None))

    def describe(self) -> str:
        return self.source


MAX_AGE_DAYS = 14


def latest_measurement(project: Project) -> Measured | None:
    path = project.store.dir / "reports" / "latest.json"
    try:
        data = json_data.loads(path.read_text(encoding="utf-8"))
        when = _dt.datetime.fromisoformat(data["measured_at"])
        rows = data["strategies"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    age = _dt.datetime.now(_dt.timezone.utc) - when
    if age.days > MAX_AGE_DAYS:
        return None
    by = {r["strategy"]: Estimate(r.get("disk_bytes_per_env"), r.get("startup_seconds")) for r in rows if "strategy" in r}
    return Measured(by, f"measured {when:%Y-%m-%d %H:%M} UTC by `report --compare {data.get('n', '?')}`")


def project_costs(project: Project) -> Projection | Measured:
    measured = latest_measurement(project)
    if measured is not None:
        return measured
    tree = checkout_bytes(project, project.manifest.base)
    return Projection(tree, None, "estimated from the size of the base tree (no measurement yet: `hybridiso report --compare 3`)")
