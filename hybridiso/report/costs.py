"""Projected costs of each strategy, for ``plan`` (and ``disk_budget``).

Measured figures win: the latest ``report --compare`` (both disk and
startup), then the startup ``up`` timed for the agents it made here.  Until
a measurement exists a figure is *estimated*, and says so (issue 16):

- disk: the base tree as this file system allocates it -- every non-empty
  file takes whole blocks (a 20-byte file takes 4 KiB), every directory at
  least one -- plus what each strategy adds (a worktree's ``.git`` file, a
  clone's index and git files; a clone's objects only when the workspace is
  on another file system than the repository and they cannot be linked);
- startup: the base tree's files times a per-file rate measured on this
  machine (by ``up`` or ``report --compare``), or "unknown" when nothing was
  measured yet.  A container's start is never guessed.
"""
from __future__ import annotations

import datetime as _dt
import os
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from hybridiso import git, json_data, output, safe_files
from hybridiso.output import plural
from hybridiso.project import Project
from hybridiso.state import PHASE_READY, AgentRecord

MAX_AGE_DAYS = 14
# git's own files in a local clone's .git besides the index and the objects
# (the .git dir, HEAD, config, refs, logs, hooks samples, info; hybridiso's
# markers): 44 blocks with git 2.47's templates, measured with du on a
# `clone --local`
CLONE_GIT_BLOCKS = 44
INDEX_HEADER = 12 + 20  # signature/version/count, and the trailing checksum
INDEX_ENTRY = 62  # fixed part of a version-2 index entry, before its path


@dataclass(frozen=True)
class Estimate:
    disk_bytes: int | None
    startup_seconds: float | None
    disk_measured: bool = False
    startup_measured: bool = False


@dataclass(frozen=True)
class Tree:
    """The base tree as a file system would hold it."""

    files: int
    allocated_bytes: int  # files, symlinks and directories, in whole blocks
    index_bytes: int  # the git index a checkout of it writes
    block: int


def _blocks(size: int, block: int) -> int:
    return -(-size // block) * block


def _dir_bytes(names: Iterable[str], block: int) -> int:
    """ext4-like directory: 8 bytes + the name (to 4) per entry, "." and
    ".." included; one block at least, and past one block an index block
    and leaves about three quarters full."""
    used = 24 + sum(8 + _blocks(len(os.fsencode(n)), 4) for n in names)
    if used <= block:
        return block
    return _blocks(int(used / 0.75), block) + block


def allocation_unit(path: Path) -> int:
    """The file system's block size where ``path`` is (or would be made)."""
    at = path
    while not os.path.lexists(at) and at.parent != at:
        at = at.parent
    try:
        st = os.statvfs(at)
    except OSError:
        return 4096
    return st.f_frsize or st.f_bsize or 4096


def tree_of(project: Project, ref: str, block: int) -> Tree | None:
    """``git ls-tree -r -t -l`` of ``ref``, as allocated with ``block``-byte blocks."""
    r = git.run(project.root, "ls-tree", "-r", "-t", "-l", "-z", "--", ref, check=False)
    if r.returncode != 0:
        return None
    files = allocated = 0
    index = INDEX_HEADER
    entries: dict[str, list[str]] = {"": []}
    for item in r.stdout.split("\0"):
        meta, _, path = item.partition("\t")
        parts = meta.split()
        if len(parts) != 4:
            continue
        mode, kind, size = parts[0], parts[1], parts[3]
        parent, _, name = path.rpartition("/")
        entries.setdefault(parent, []).append(name)
        if kind == "tree":
            entries.setdefault(path, [])
            continue
        files += 1
        index += _blocks(INDEX_ENTRY + len(os.fsencode(path)) + 1, 8)
        if kind == "commit":  # a submodule: an empty directory until it is checked out
            allocated += block
        elif mode == "120000":  # a symlink: short targets live in the inode
            allocated += 0 if size.isdigit() and int(size) < 60 else block
        elif size.isdigit() and int(size) > 0:
            allocated += _blocks(int(size), block)
    allocated += sum(_dir_bytes(names, block) for names in entries.values())
    return Tree(files, allocated, index, block)


@dataclass(frozen=True)
class Rates:
    """Startup measured on this machine: per strategy, the median total
    ``up`` timed, and seconds per file of the tree it laid down."""

    totals: dict[str, list[float]] = field(default_factory=dict)
    per_file: dict[str, list[float]] = field(default_factory=dict)

    def rate(self, strategy: str) -> float | None:
        own = self.per_file.get(strategy) or []
        if own:
            return statistics.median(own)
        # a worktree and a local clone lay files at about the same rate
        # (the design's measured table: 0.92 s and 0.88 s for 11.9k files); a container's
        # create is its worktree's
        laid = [r for s in ("worktree", "clone", "container") for r in self.per_file.get(s, [])]
        return statistics.median(laid) if laid else None


def measured_rates(project: Project, records: Mapping[str, AgentRecord], files_of: dict[str, int]) -> Rates:
    """What ``up`` timed for the agents it made here (``timings``)."""
    totals: dict[str, list[float]] = {}
    per_file: dict[str, list[float]] = {}
    for record in records.values():
        if record.phase != PHASE_READY or not isinstance(record.timings, dict):
            continue
        total, create = record.timings.get("total"), record.timings.get("create")
        if isinstance(total, (int, float)) and total > 0:
            totals.setdefault(record.strategy, []).append(float(total))
        commit = record.base_commit or project.manifest.base
        if commit not in files_of:
            r = git.run(project.root, "ls-tree", "-r", "-z", "--name-only", "--", commit, check=False)
            files_of[commit] = sum(1 for p in r.stdout.split("\0") if p) if r.returncode == 0 else 0
        files = files_of[commit]
        if isinstance(create, (int, float)) and create > 0 and files:
            per_file.setdefault(record.strategy, []).append(float(create) / files)
    return Rates(totals, per_file)


@dataclass(frozen=True)
class Projection:
    tree: Tree | None
    rates: Rates
    objects_bytes: int  # what a clone's object store adds to it (its directories; all of it when copied)
    measured: Measured | None = None
    setup: bool = False  # the manifest has setup commands (not in a per-file estimate)

    def for_strategy(self, strategy: str) -> Estimate:
        if self.measured is not None:
            got = self.measured.for_strategy(strategy)
            if got.disk_bytes is not None or got.startup_seconds is not None:
                return got
        disk = self._disk(strategy)
        totals = self.rates.totals.get(strategy)
        if totals:
            return Estimate(disk, round(statistics.median(totals), 2), startup_measured=True)
        rate = self.rates.rate(strategy)
        if rate is None or self.tree is None or strategy == "container":
            return Estimate(disk, None)  # a container's start is never guessed
        return Estimate(disk, round(max(0.01, rate * self.tree.files), 2))

    def _disk(self, strategy: str) -> int | None:
        t = self.tree
        if t is None:
            return None
        env_files = 2 * t.block  # the .git link and the env file hybridiso writes
        if strategy == "clone":
            git_dir = _blocks(t.index_bytes, t.block) + CLONE_GIT_BLOCKS * t.block
            return t.allocated_bytes + t.block + git_dir + self.objects_bytes
        return t.allocated_bytes + env_files

    def describe(self, strategies: Iterable[str] = ("worktree", "clone", "container")) -> str:
        """The footnote for figures of ``strategies``: where each kind came from."""
        estimates = [self.for_strategy(s) for s in strategies]
        parts = [self.measured.describe()] if self.measured is not None else []
        if self.tree is None:
            return "; ".join(parts or ["unknown: the base names no tree to measure"])
        if any(not e.disk_measured for e in estimates):
            parts.append(
                f"~ = estimated: disk from the base tree ({plural(self.tree.files, 'file')}) as this file system allocates it "
                f"({self.tree.block // 1024} KiB blocks), not counting what setup writes"
            )
        if any(e.startup_measured and not e.disk_measured for e in estimates):
            parts.append("startup without ~ as `up` timed it here for agents of that strategy")
        if any(e.startup_seconds is not None and not e.startup_measured for e in estimates):
            parts.append("startup ~ from the seconds per file `up` took here" + (", before setup commands" if self.setup else ""))
        if any(e.startup_seconds is None for e in estimates):
            parts.append("startup unknown until measured (`hybridiso up` times it; `hybridiso report --compare 1` measures every strategy)")
        return "; ".join(parts)


@dataclass(frozen=True)
class Measured:
    """Figures from the latest ``report --compare``, per strategy."""

    by_strategy: dict[str, Estimate]
    source: str

    def for_strategy(self, strategy: str) -> Estimate:
        return self.by_strategy.get(strategy, Estimate(None, None))

    def describe(self) -> str:
        return self.source


def latest_measurement(project: Project) -> Measured | None:
    path = project.store.dir / "reports" / "latest.json"
    try:
        # a FIFO there would hang `plan`, a symlink would make it believe
        # someone else's figures (docs/faults.md row 31)
        text = safe_files.read_text(project.store.anchor, path.relative_to(project.store.anchor))
    except safe_files.UnsafePath as e:
        output.warn(f"the last measurement is not read: {e}")
        return None
    except OSError:
        return None
    if text is None:
        return None
    try:
        data = json_data.loads(text)
        when = _dt.datetime.fromisoformat(data["measured_at"])
        rows = data["strategies"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    age = _dt.datetime.now(_dt.timezone.utc) - when
    if age.days > MAX_AGE_DAYS:
        return None
    by = {
        r["strategy"]: Estimate(r.get("disk_bytes_per_env"), r.get("startup_seconds"), r.get("disk_bytes_per_env") is not None, r.get("startup_seconds") is not None)
        for r in rows
        if "strategy" in r
    }
    return Measured(by, f"measured {when:%Y-%m-%d %H:%M} UTC by `report --compare {data.get('n', '?')}`")


def _clone_objects_bytes(project: Project) -> int:
    """What a clone's object store adds to it: its own directories (the
    files in them are hard links into the repository's store, 256 fan-out
    directories where objects are loose), or everything when the workspace
    is on another file system and the objects are copied (docs/faults.md row 36)."""
    from hybridiso.report.measure import inodes

    objects = project.repo.common_dir / "objects"
    at = project.workspace
    while not os.path.lexists(at) and at.parent != at:
        at = at.parent
    try:
        if os.stat(at).st_dev != os.stat(objects).st_dev:
            return sum(inodes(objects).values())
        total = os.lstat(objects).st_blocks * 512
        with os.scandir(objects) as it:
            for entry in it:
                if entry.is_dir(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_blocks * 512
    except OSError:
        return 0
    return total


def project_costs(project: Project, records: Mapping[str, AgentRecord] | None = None) -> Projection:
    block = allocation_unit(project.workspace)
    tree = tree_of(project, project.manifest.base, block)
    files_of = {project.manifest.base: tree.files} if tree is not None else {}
    rates = measured_rates(project, records or {}, files_of)
    setup = bool(project.manifest.defaults.setup) or any(a.setup for a in project.manifest.agents)
    return Projection(tree, rates, _clone_objects_bytes(project), latest_measurement(project), setup)
