"""Reading and writing files without following anything hybridiso did not make.

Every file hybridiso writes or reads in an environment or in its state dir can
be replaced by whoever else writes there (an agent, a container, a branch that
tracks a symlink): a symlink to ``/etc/passwd`` or ``/dev/zero``, a FIFO that
blocks the reader forever, a symlinked parent directory.  So paths are walked
one component at a time from an anchor the caller trusts (an environment's
root, the repository's git dir) with ``O_NOFOLLOW``, directories are opened
with ``O_DIRECTORY`` and files must turn out to be regular files; anything
else is one clear ``UnsafePath`` error and nothing is read or written.

``os.open(..., dir_fd=...)`` is openat(2): a component checked here cannot be
swapped for a symlink between the check and the use.
"""
from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from hybridiso.errors import UserError

READ_LIMIT = 4 << 20  # nothing hybridiso reads back (state, env files, logs' tails) is bigger
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafePath(UserError):
    """A symlink, FIFO, device or other non-regular file where hybridiso reads or writes."""


def kind(mode: int) -> str:
    """What a file of ``mode`` is, for a message ("a symlink", "a FIFO", ...)."""
    return _kind(mode)


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISLNK, "a symlink"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISDIR, "a directory"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def _unsafe(path: Path | str, what: str) -> UnsafePath:
    return UnsafePath(
        f"{path} is {what}; hybridiso never reads or writes through one",
        hint="remove it (hybridiso writes a regular file there again), then run the command again",
    )


def _parts(rel: str | os.PathLike[str]) -> list[str]:
    parts = [p for p in PurePosixPath(os.fspath(rel)).parts if p not in ("", ".")]
    if any(p == ".." or p == "/" for p in parts):
        raise UserError(f"{os.fspath(rel)!r} leaves the directory it must stay in")
    return parts


@contextlib.contextmanager
def open_dir(anchor: Path, rel: str | os.PathLike[str] = "", *, create: bool = False, mode: int = 0o700) -> Iterator[int]:
    """A file descriptor of ``anchor/rel``, reached without following a
    symlink below ``anchor`` (with ``create``, missing directories are made
    with ``mode``).  The anchor itself is trusted as the caller gives it."""
    fd = os.open(anchor, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        here = Path(anchor)
        for part in _parts(rel):
            here = here / part
            try:
                nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, mode, dir_fd=fd)
                nxt = _open_existing_dir(fd, part, here)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise _unsafe(here, _kind(os.lstat(part, dir_fd=fd).st_mode)) from None
                raise
            os.close(fd)
            fd = nxt
        yield fd
    finally:
        os.close(fd)


def _open_existing_dir(parent: int, name: str, shown: Path) -> int:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise _unsafe(shown, _kind(os.lstat(name, dir_fd=parent).st_mode)) from None
        raise


def ensure_dir(anchor: Path, rel: str | os.PathLike[str], mode: int = 0o700) -> Path:
    """``mkdir -p anchor/rel`` that refuses a symlink on the way; returns the path."""
    with open_dir(anchor, rel, create=True, mode=mode):
        pass
    return Path(anchor, *_parts(rel))


def _split(anchor: Path, rel: str | os.PathLike[str]) -> tuple[str, str]:
    parts = _parts(rel)
    if not parts:
        raise UserError(f"no file name given under {anchor}")
    return "/".join(parts[:-1]), parts[-1]


def read_bytes(anchor: Path, rel: str | os.PathLike[str], *, limit: int = READ_LIMIT) -> bytes | None:
    """The content of the regular file ``anchor/rel``; None when it (or a
    parent) does not exist.  A symlink, FIFO or device there, or a file over
    ``limit`` bytes, is an ``UnsafePath`` error: never followed, never read."""
    parent, name = _split(anchor, rel)
    shown = Path(anchor, *_parts(rel))
    try:
        with open_dir(anchor, parent) as dfd:
            try:
                # O_NONBLOCK: opening a FIFO must not wait for a writer
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd)
            except OSError as e:
                if e.errno == errno.ELOOP:
                    raise _unsafe(shown, "a symlink") from None
                raise
    except FileNotFoundError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _unsafe(shown, _kind(st.st_mode))
        if st.st_size > limit:
            raise UnsafePath(f"{shown} is {st.st_size} bytes, more than hybridiso ever writes there ({limit})",
                             hint="move it away, then run the command again")
        chunks = []
        left = limit + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
        if len(data) > limit:
            raise UnsafePath(f"{shown} grew past {limit} bytes while being read", hint="move it away, then run the command again")
        return data
    finally:
        os.close(fd)


def read_text(anchor: Path, rel: str | os.PathLike[str], *, limit: int = READ_LIMIT) -> str | None:
    data = read_bytes(anchor, rel, limit=limit)
    return None if data is None else data.decode("utf-8", errors="replace")


def write_atomic(anchor: Path, rel: str | os.PathLike[str], data: bytes | str, *, mode: int = 0o600, dir_mode: int = 0o700) -> None:
    """Write ``anchor/rel`` whole or not at all: a new file made with
    ``O_EXCL|O_NOFOLLOW`` beside it, fsynced, then renamed over it (a rename
    replaces a symlink there instead of following it).  Missing parents are
    made with ``dir_mode``; a symlinked parent is refused."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    parent, name = _split(anchor, rel)
    with open_dir(anchor, parent, create=True, mode=dir_mode) as dfd:
        with contextlib.suppress(FileNotFoundError):
            st = os.lstat(name, dir_fd=dfd)
            if stat.S_ISDIR(st.st_mode):
                raise _unsafe(Path(anchor, *_parts(rel)), "a directory")
        tmp = f".{name}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dfd)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=dfd)
            raise
        with contextlib.suppress(OSError):
            os.fsync(dfd)


def open_regular(anchor: Path, rel: str | os.PathLike[str], flags: int, *, mode: int = 0o600, dir_mode: int = 0o700) -> int:
    """``os.open`` of ``anchor/rel`` (e.g. ``O_WRONLY|O_APPEND|O_CREAT`` for a
    log, ``O_RDWR|O_CREAT`` for a lock) that never follows a symlink and
    refuses anything but a regular file; the caller closes the descriptor."""
    parent, name = _split(anchor, rel)
    shown = Path(anchor, *_parts(rel))
    with open_dir(anchor, parent, create=bool(flags & os.O_CREAT), mode=dir_mode) as dfd:
        try:
            fd = os.open(name, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode, dir_fd=dfd)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise _unsafe(shown, "a symlink") from None
            if e.errno == errno.ENXIO:  # a FIFO opened for writing with no reader
                raise _unsafe(shown, "a FIFO") from None
            raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise _unsafe(shown, _kind(st.st_mode))
    os.set_blocking(fd, True)
    return fd


def is_plain_dir(path: Path) -> bool:
    """``path`` is a directory itself, not a symlink to one."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False
