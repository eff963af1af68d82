"""Measurements behind ``hybridiso report`` and ``status``: disk (inodes counted once, like
``du``), fetch (time and bytes) and tree sizes.  ``status`` and ``report`` count disk
through :func:`environments_disk` alone, so they always agree (issue 16)."""
from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from stat import S_ISDIR

from hybridiso import git, process


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
    that are not the store (e.g. the state dir).

    Counted as :func:`exact_disk_report` counts, with fewer objects (issue
    15: 100 worktrees of 2,000 files were 200,000 dict entries): a file with
    one link can be named by nothing else, so it is unique to the tree it
    is in and only its bytes are added up; directories and files with more
    links are kept by inode.  That holds when no tree is reached twice: a
    directory seen in two walks (an env inside another, or a bind mount of
    one), a tree that is not a plain directory (a symlink), or a mount point
    inside one (a bind-mounted file) makes it fall back to the exact count."""
    roots = [store, *exclude, *envs.values()]
    walks = _walk_all(roots)
    if walks is None or _mounts_inside(roots):
        return exact_disk_report(store, envs, exclude)
    store_walk, rest = walks[0], walks[1:]
    excluded, env_walks = rest[: len(exclude)], dict(zip(envs, rest[len(exclude) :], strict=True))
    store_dirs = set(store_walk.dirs)
    store_keyed = dict(store_walk.keyed)
    store_single = store_walk.single
    for ex in excluded:
        inside = [d in store_dirs for d in ex.dirs]
        if any(inside) and not all(inside):
            return exact_disk_report(store, envs, exclude)
        if all(inside) and inside:  # its files were counted in the store's walk: out again
            store_single -= ex.single
        for key in ex.keyed:
            store_keyed.pop(key, None)
    seen_dirs = set(store_dirs)
    for walk in env_walks.values():
        if any(d in seen_dirs for d in walk.dirs):
            return exact_disk_report(store, envs, exclude)
        seen_dirs.update(walk.dirs)
    owners: dict[tuple[int, int], int] = {}
    for walk in env_walks.values():
        for key in walk.keyed:
            owners[key] = owners.get(key, 0) + 1
    store_bytes = sum(store_keyed.values()) + store_single
    total = store_bytes
    seen: set[tuple[int, int]] = set(store_keyed)
    shares = {}
    for name, walk in env_walks.items():
        unique = walk.single + sum(b for k, b in walk.keyed.items() if k not in store_keyed and owners[k] == 1)
        shared = sum(b for k, b in walk.keyed.items() if k in store_keyed or owners[k] > 1)
        shares[name] = DiskShare(unique, shared, unique + shared)
        total += walk.single
        for k, b in walk.keyed.items():
            if k not in seen:
                seen.add(k)
                total += b
    return DiskReport(store_bytes, shares, total)


def exact_disk_report(store: Path, envs: Mapping[str, Path], exclude: Sequence[Path] = ()) -> DiskReport:
    """:func:`disk_report` with every inode kept: the definition it is
    checked against, and what it does when trees overlap."""
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


@dataclass(frozen=True)
class _Walk:
    single: int  # bytes of the non-directories with one link
    keyed: dict[tuple[int, int], int]  # (dev, inode) -> bytes of directories and multi-link files
    dirs: tuple[tuple[int, int], ...]  # every directory reached, the top first


def _walk(top: str) -> _Walk | None:
    """One tree, as ``inodes`` walks it; None when the top is not a plain
    directory or a directory is reached twice (``disk_report`` then counts
    exactly).  A missing top is an empty walk, as ``inodes`` has it."""
    try:
        st = os.lstat(top)
    except OSError:
        return _Walk(0, {}, ())
    if not S_ISDIR(st.st_mode):
        return None
    key = (st.st_dev, st.st_ino)
    keyed = {key: st.st_blocks * 512}
    dirs = [key]
    single = 0
    stack = [top]
    while stack:
        try:
            it = os.scandir(stack.pop())
        except OSError:
            continue
        with it:
            for entry in it:
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if S_ISDIR(st.st_mode):
                    key = (st.st_dev, st.st_ino)
                    keyed[key] = st.st_blocks * 512
                    dirs.append(key)
                    stack.append(entry.path)
                elif st.st_nlink == 1:
                    single += st.st_blocks
                else:
                    keyed[(st.st_dev, st.st_ino)] = st.st_blocks * 512
    if len(set(dirs)) != len(dirs):
        return None
    return _Walk(single * 512, keyed, tuple(dirs))


def _walk_all(roots: Sequence[Path]) -> list[_Walk] | None:
    """Every tree walked, by GNU find (C: a stat per entry costs it a tenth
    of what it costs Python), on a process per core; by ``_walk`` where
    there is no GNU find.  None when one cannot be counted the quick way."""
    tops = [os.path.abspath(r) for r in roots]
    walks: dict[str, _Walk | None] = {}
    present = []
    for top in tops:
        try:
            mode = os.lstat(top).st_mode
        except OSError:
            walks[top] = _Walk(0, {}, ())  # as ``inodes`` has it: nothing
            continue
        if not S_ISDIR(mode):
            return None
        present.append(top)
    present = list(dict.fromkeys(present))  # the same tree twice: the dirs check below says so
    found = _find_walks(present)
    for top in present:
        walks[top] = found[top] if found is not None else _walk(top)
    if len(set(tops)) != len(tops):
        return None
    result = [walks[t] for t in tops]
    return None if any(w is None for w in result) else [w for w in result if w is not None]


# one token per entry, NUL-terminated: a directory or a file with more links
# "K<type> <dev> <inode> <blocks> <starting point>", any other file "<blocks>"
_FIND_EXPR = ("(", "-type", "d", "-o", "-links", "+1", ")", "-printf", "K%y %D %i %b %H\\0", "-o", "-printf", "%b\\0")


def _find_walks(tops: Sequence[str]) -> dict[str, _Walk] | None:
    """``tops`` (absolute, plain directories) walked by ``find -P``, split
    over up to one process per core; None when GNU find is not there or
    said something this does not read (``_walk`` then)."""
    if not tops:
        return {}
    if any(not t.isprintable() for t in tops) or any(_undecodable(t) for t in tops):
        return None
    from concurrent.futures import ThreadPoolExecutor

    workers = min(len(tops), max(2, os.cpu_count() or 1))
    chunks = [list(tops[i::workers]) for i in range(workers)]
    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hybridiso-disk") as pool:
            parts = list(pool.map(_find_chunk, chunks))
    except OSError:  # no find on this machine
        return None
    found: dict[str, _Walk] = {}
    for part in parts:
        if part is None:
            return None
        found.update(part)
    return found


def _undecodable(path: str) -> bool:
    """A name that is not UTF-8 (``os.fsdecode`` escapes its bytes): find's
    output is read as UTF-8, so it would not be recognised there."""
    return any(0xDC80 <= ord(c) <= 0xDCFF for c in path)


def _find_chunk(tops: list[str]) -> dict[str, _Walk] | None:
    r = process.run(["find", "-P", *tops, *_FIND_EXPR], check=False, env={"LC_ALL": "C", "PATH": os.environ.get("PATH", "/usr/bin:/bin")})
    if r.returncode not in (0, 1):  # 1: some entry could not be read (as ``_walk`` skips it)
        return None
    singles = dict.fromkeys(tops, 0)
    keyed: dict[str, dict[tuple[int, int], int]] = {t: {} for t in tops}
    dirs: dict[str, list[tuple[int, int]]] = {t: [] for t in tops}
    current: str | None = None
    total = 0
    try:
        for token in r.stdout.split("\0"):
            if not token:
                continue
            if token[0] == "K":
                kind, dev, ino, blocks, top = token[1:].split(" ", 4)
                if current is not None:
                    singles[current] += total
                current, total = top, 0
                key = (int(dev), int(ino))
                keyed[top][key] = int(blocks) * 512
                if kind == "d":
                    dirs[top].append(key)
            elif current is None:
                return None
            else:
                total += int(token)
    except (ValueError, KeyError):
        return None
    if current is not None:
        singles[current] += total
    walks = {}
    for t in tops:
        if len(set(dirs[t])) != len(dirs[t]):
            return None
        walks[t] = _Walk(singles[t] * 512, keyed[t], tuple(dirs[t]))
    return walks


def _mounts_inside(roots: Sequence[Path]) -> bool:
    """True when a mount point lies inside one of ``roots`` (a bind-mounted
    file or tree is reached by two names with one link), or when the
    mount table cannot be read: count exactly then."""
    points = _mount_points()
    if points is None:
        return True
    prefixes = {os.path.join(os.path.realpath(r), "") for r in roots}
    return any(p.startswith(prefix) for p in points for prefix in prefixes)


def _mount_points() -> list[str] | None:
    """Every mount point of this process's view (None: unreadable)."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            return [_unescape(line.split(" ", 5)[4]) for line in f if line.count(" ") >= 5]
    except OSError:
        return None


def _unescape(field: str) -> str:
    """A mountinfo path: space, tab, newline and backslash are octal escapes."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field) if "\\" in field else field


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
