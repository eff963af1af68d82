"""Copy gitignored files (``.env`` and friends) from the checkout into an env.

Patterns come from the manifest's ``include:`` and from a ``.worktreeinclude``
file at the repository root, both in gitignore syntax.  Only files that git
ignores are copied: tracked files already arrive with the checkout.  Copies
are copy-on-write (``FICLONE``) where the filesystem allows.

The new environment is the agent's branch, which may track anything: a
symlink ``.env -> ~/.ssh/config``, a symlinked parent directory, a FIFO.  So
nothing is ever written through a symlink (docs/faults.md row 31): every destination is
reached with ``safe_files.open_dir`` (openat, ``O_NOFOLLOW``) and created
with ``O_EXCL``.  A symlink, FIFO or device where an include would go is
refused, naming it; a regular file (or directory) that the branch already
has there is kept as the branch has it, and said so.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import stat
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from hybridiso import git, safe_files

WORKTREEINCLUDE = ".worktreeinclude"
_FICLONE = 0x40049409


@dataclass(frozen=True)
class Copied:
    copied: list[str] = field(default_factory=list)  # relative paths now in the env
    kept: list[str] = field(default_factory=list)  # the branch had its own file there: not overwritten


def patterns_for(root: Path, manifest_patterns: Sequence[str]) -> list[str]:
    """The manifest's patterns plus ``.worktreeinclude``'s, read from the
    user's own checkout ``root`` (never from an environment)."""
    patterns = list(manifest_patterns)
    f = root / WORKTREEINCLUDE
    if f.is_file():
        for line in f.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                patterns.append(line)
    return patterns


def ignored_files_matching(root: Path, patterns: Sequence[str]) -> list[str]:
    if not patterns:
        return []
    with tempfile.NamedTemporaryFile("w", suffix=".include", delete=False) as f:
        f.write("\n".join(patterns) + "\n")
        pattern_file = f.name
    try:
        matched = git.run(root, "ls-files", "-z", "--others", "--ignored", f"--exclude-from={pattern_file}").stdout
    finally:
        os.unlink(pattern_file)
    candidates = [p for p in matched.split("\0") if p]
    if not candidates:
        return []
    ignored = git.check_ignored(root, candidates)
    return sorted(p for p in candidates if p in ignored)


def copy_file(src_root: Path, rel: str, dst_root: Path) -> bool:
    """Copy ``src_root/rel`` to ``dst_root/rel``.  Returns False, writing
    nothing, when the destination already holds a regular file or a
    directory, or a regular file stands where a parent directory would go
    (the branch tracks them).  A symlink, FIFO or device on the way or at
    the destination is an ``UnsafePath`` error: nothing is written through
    it.  A symlink in the source is copied as a symlink."""
    parts = PurePosixPath(rel).parts
    parent, name = "/".join(parts[:-1]), parts[-1]
    src = src_root / rel
    src_st = os.lstat(src)
    try:
        with safe_files.open_dir(dst_root, parent, create=True, mode=0o777) as dfd:
            return _copy_into(dfd, name, src, src_st, dst_root / rel)
    except safe_files.UnsafePath:
        if _file_on_the_way(dst_root, parts[:-1]):
            return False
        raise


def _copy_into(dfd: int, name: str, src: Path, src_st: os.stat_result, shown: Path) -> bool:
    if stat.S_ISLNK(src_st.st_mode):
        try:
            os.symlink(os.readlink(src), name, dir_fd=dfd)
        except FileExistsError:
            return _existing(dfd, name, shown)
        return True
    fin = _open_source(src, src_st)
    try:
        try:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dfd)
        except FileExistsError:
            return _existing(dfd, name, shown)
        try:
            _copy_data(fin, fd)
            os.fchmod(fd, stat.S_IMODE(src_st.st_mode))
            os.utime(fd, ns=(src_st.st_atime_ns, src_st.st_mtime_ns))
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=dfd)
            raise
        os.close(fd)
    finally:
        os.close(fin)
    return True


def _file_on_the_way(root: Path, parents: tuple[str, ...]) -> bool:
    """A regular file (the branch's) where a parent directory would go."""
    here = root
    for part in parents:
        here = here / part
        try:
            mode = os.lstat(here).st_mode
        except OSError:
            return False
        if stat.S_ISREG(mode):
            return True
        if not stat.S_ISDIR(mode):
            return False
    return False


def _open_source(src: Path, st: os.stat_result) -> int:
    """The checkout's file, opened only if it is a regular file (a FIFO there
    would block the copy forever)."""
    if not stat.S_ISREG(st.st_mode):
        raise safe_files.UnsafePath(
            f"{src} is not a regular file, so include: does not copy it",
            hint="remove it from the include: patterns (or from the checkout), then run the command again",
        )
    fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # swapped since the lstat
        os.close(fd)
        raise safe_files.UnsafePath(f"{src} changed into something other than a regular file while being copied")
    os.set_blocking(fd, True)
    return fd


def _existing(dfd: int, name: str, shown: Path) -> bool:
    """Something is already at the destination: a regular file or directory
    is the branch's own and stays; anything else is refused."""
    mode = os.lstat(name, dir_fd=dfd).st_mode
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return False
    kind = "a symlink" if stat.S_ISLNK(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a device or socket"
    raise safe_files.UnsafePath(
        f"{shown} is {kind} (the branch has it there), where include: would copy a file; hybridiso never writes through one",
        hint="remove it from the branch (or the pattern from include:), then run `hybridiso up` again",
    )


def _copy_data(fin: int, fout: int) -> None:
    try:
        fcntl.ioctl(fout, _FICLONE, fin)
        return
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise
    with open(fin, "rb", closefd=False) as r, open(fout, "wb", closefd=False) as w:
        shutil.copyfileobj(r, w, 1 << 20)


def copy_includes(root: Path, env_path: Path, manifest_patterns: Sequence[str]) -> Copied:
    """Copy matching ignored files from the checkout ``root``; say what was
    copied and what the branch already had (kept as it is)."""
    result = Copied()
    for rel in ignored_files_matching(root, patterns_for(root, manifest_patterns)):
        (result.copied if copy_file(root, rel, env_path) else result.kept).append(rel)
    return result
