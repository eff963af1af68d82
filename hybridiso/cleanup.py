"""Delete a directory tree that fights back (docs/faults.md row 8).

Agents and their tools leave directories without write or search permission
(``chmod 000``, read-only caches like Go's module cache) and containers leave
files owned by another uid.  We give ourselves back what we own (``u+rwx`` on
our directories), delete, and when something still cannot go, say exactly what
is left and why instead of stopping half-way with a traceback.
"""
from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

from hybridiso.errors import UserError

SHOW = 10


def make_deletable(path: Path) -> None:
    """``u+rwx`` on every directory under ``path`` that we own: deleting an
    entry needs write and search permission on its directory, never on itself."""
    uid = os.geteuid()
    stack = [os.fspath(path)]
    while stack:
        d = stack.pop()
        try:
            st = os.lstat(d)
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode):
            continue
        if st.st_uid == uid and (st.st_mode & stat.S_IRWXU) != stat.S_IRWXU:
            try:
                os.chmod(d, st.st_mode | stat.S_IRWXU)
            except OSError:
                pass
        try:
            with os.scandir(d) as it:
                stack.extend(e.path for e in it if e.is_dir(follow_symlinks=False))
        except OSError:
            continue


def remove_tree(path: Path) -> list[str]:
    """Remove ``path``; return what is left (empty when all of it went)."""
    if not os.path.lexists(path):
        return []
    make_deletable(path)
    shutil.rmtree(path, ignore_errors=True)
    if not os.path.lexists(path):
        return []
    make_deletable(path)  # a second pass: a tool may have been writing into it
    shutil.rmtree(path, ignore_errors=True)
    return what_is_left(path)


def remove_tree_or_explain(path: Path, owner: str) -> None:
    """``remove_tree``, raising one clear UserError naming what is left (and
    keeping it): the caller keeps its record, so the next run retries."""
    left = remove_tree(path)
    if left:
        if any("owned by uid" in item for item in left):
            fix = f"give the files back to yourself (e.g. `sudo chown -R {os.geteuid()}:{os.getegid()} '{path}'`)"
        else:
            # ours and still there: a flag or a mount holds them, not ownership
            fix = f"something other than ownership holds them: an immutable flag (`lsattr -R '{path}'`, then `sudo chattr -i FILE`) or a mount (`findmnt -R '{path}'`)"
        raise UserError(f"{owner}: could not remove all of {path}; left: {shorten(left)}", hint=f"{fix}, then run the command again")


def what_is_left(path: Path) -> list[str]:
    """The deepest entries still under ``path`` with their owner and mode:
    what the user must deal with (``sudo chown``, ``chattr -i``, a busy mount)."""
    if not os.path.lexists(path):
        return []
    left: list[str] = []
    for root, dirs, files in os.walk(path, onerror=lambda e: left.append(f"{e.filename} (cannot read: {e.strerror})")):
        for name in files:
            left.append(_describe(os.path.join(root, name)))
        if not dirs and not files and root != os.fspath(path):
            left.append(_describe(root))
    return left or [_describe(os.fspath(path))]


def _describe(p: str) -> str:
    try:
        st = os.lstat(p)
    except OSError as e:
        return f"{p} ({e.strerror})"
    owner = "yours" if st.st_uid == os.geteuid() else f"owned by uid {st.st_uid}"
    return f"{p} ({owner}, mode {stat.filemode(st.st_mode)})"


def shorten(left: list[str]) -> str:
    more = f" (+{len(left) - SHOW} more)" if len(left) > SHOW else ""
    return ", ".join(left[:SHOW]) + more
