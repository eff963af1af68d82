"""Measurements behind ``hybridiso report`` and ``status``: disk (inodes counted once, like
``du``), fetch (time and bytes) and tree sizes.  ``status`` and ``report`` count disk
through :func:`environments_disk` alone, so they always agree (issue 16)."""
from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from hybridiso import git


def inodes(path: Path, skip: frozenset[str] = frozenset()) -> dict[tuple[int, int], int]:
    """Every inode under ``path`` with its allocated bytes (st_blocks * 512),
    leaving out entries named in ``skip``."""
    found: dict[tuple[int, int], int] = {}
    stack = [os.fspath(path)]
    try:
        st = os.lstat(path)
        found[(st.st_dev, st.st_ino)] = st.st_blocks * 512
    except OSError:
        return found
    while stack:
        top = stack.pop()
        try:
            it = os.scandir(top)
        except OSError:
            continue
        with it:
            for entry in it:
                if entry.name in skip:
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                found[(st.st_dev, st.st_ino)] = st.st_blocks * 512
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
    return found


@dataclass(frozen=True)
class DiskShare:
    unique_bytes: int  # only this env has these inodes
    shared_bytes: int  # inodes also in the object store or another env (counted once, in the store/first owner)
    total_bytes: int  # everything the env references


@dataclass(frozen=True)
class DiskReport:
    store_bytes: int
    envs: dict[str, DiskShare]
    total_bytes: int  # store + all envs, each inode once (what `du -s store envs...` says)


def disk_report(store: Path, envs: Mapping[str, Path], exclude: Sequence[Path] = ()) -> DiskReport:
    """Split each env's bytes into unique and shared.  ``store`` is the
    repository's object store (its .git dir); ``exclude`` are paths inside it
    that are not the store (e.g. the state dir)."""
    store_inodes = inodes(store)
    for p in exclude:
        for key in inodes(p):
            store_inodes.pop(key, None)
    per_env = {name: inodes(path) for name, path in envs.items()}
    owners: dict[tuple[int, int], int] = {}
    for found in per_env.values():
        for key in found:
            owners[key] = owners.get(key, 0) + 1
    shares = {}
    seen: set[tuple[int, int]] = set(store_inodes)
    total = sum(store_inodes.values())
    for name, found in per_env.items():
        unique = sum(b for k, b in found.items() if k not in store_inodes and owners[k] == 1)
        shared = sum(b for k, b in found.items() if k in store_inodes or owners[k] > 1)
        shares[name] = DiskShare(unique, shared, unique + shared)
        for k, b in found.items():
            if k not in seen:
                seen.add(k)
                total += b
    return DiskReport(sum(store_inodes.values()), shares, total)


def environments_disk(common_dir: Path, state_dir: Path, envs: Mapping[str, Path]) -> DiskReport:
    """The disk of the environments at ``envs`` as ``status`` and ``report``
    both say it (issue 16: one count, so the two never disagree): the
    repository's git dir is the store, less hybridiso's own state dir; a
    clone's objects hard-linked to it are shared, not the clone's."""
    return disk_report(common_dir, envs, exclude=[state_dir])


def tree_stats(repo: Path, ref: str) -> tuple[int, int]:
    """(files, bytes) of the tree at ``ref``."""
    r = git.run(repo, "ls-tree", "-r", "-l", "-z", "--", ref, check=False)
    files = size = 0
    for entry in r.stdout.split("\0"):
        meta = entry.split("\t", 1)[0].split()
        if len(meta) == 4 and meta[3].isdigit():
            files += 1
            size += int(meta[3])
    return files, size


@dataclass(frozen=True)
class Fetch:
    seconds: float
    bytes: int  # growth of the repository's .git after the fetch


def timed_fetch(repo: Path, remote: str) -> Fetch:
    """Fetch ``remote`` in ``repo``; measure wall time and the bytes it added."""
    common = Path(git.out(repo, "rev-parse", "--git-common-dir"))
    common = common if common.is_absolute() else (repo / common).resolve()
    before = sum(inodes(common / "objects").values())
    t = time.perf_counter()
    git.run(repo, "fetch", "-q", "--no-tags", remote)
    seconds = time.perf_counter() - t
    after = sum(inodes(common / "objects").values())
    return Fetch(round(seconds, 4), max(0, after - before))
