"""Which uid a container agent runs as, and how that uid gets to write its work.

Never root (issue 12, part 3):

- hybridiso run by a normal user: the container runs as that user's
  ``uid:gid`` -- its files stay the user's, as before;
- hybridiso run by root: the repository owner's uid when that is not root,
  else a fixed unprivileged uid of the agent's own (``UID_BASE`` + a hash of
  the project and the agent; recorded, so it never changes, and distinct
  from the other agents of the repository) and the gid all the repository's
  agents share (``project_gid``).

When the container's uid is not the uid that made the files (the root
case), ``hand_over`` lets it write its worktree, and nothing else: the
worktree's contents become the agent's (``lchown``), with a default ACL
giving it ``rwx`` on every directory, so what the host writes there later
(includes, the env file's read entry) stays writable for it; the
worktree's top directory and its ``.git`` file stay root's, and the top
directory gets the sticky bit: git on the host checks that both are its own
("dubious ownership").  Inside the container ``.git`` is a read-only mount
naming the agent's own git dir (containers/git_dir.py), which becomes the uid's
whole; the common git dir is not mounted at all, so nothing of it is
granted.

``take_back`` removes the ACL entries an older hybridiso made in the common
git dir (objects, its branch's directory and reflog) at ``down`` or the
first ``up`` after upgrading (``fix_ownership`` gives the files back).  ACLs
are set through the ``system.posix_acl_*`` extended attributes (no
``setfacl`` needed); a file system without POSIX ACLs is a clear error.
"""
from __future__ import annotations

import errno
import hashlib
import os
import stat
import struct
import threading
from collections.abc import Iterable
from pathlib import Path

from hybridiso import safe_files
from hybridiso.envfile import ENV_FILE
from hybridiso.errors import UserError
from hybridiso.env_context import EnvContext

UID_BASE = 1_600_000_000  # inside systemd's range for container uids (524288-1879048191)
UID_SPAN = 10_000_000

ACL_ACCESS = "system.posix_acl_access"
ACL_DEFAULT = "system.posix_acl_default"
_USER_OBJ, _USER, _GROUP_OBJ, _GROUP, _MASK, _OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
_UNDEFINED = 0xFFFFFFFF
_RWX, _RW = 7, 6

# ACL read-modify-write of the shared common dir: one thread at a time (the
# repository lock keeps other hybridiso processes out)
_acl_lock = threading.Lock()


def parse_user(text: str) -> tuple[int, int] | None:
    try:
        uid, gid = (int(x) for x in text.split(":"))
    except ValueError:
        return None
    return (uid, gid) if uid > 0 and gid > 0 else None


def _hashed_uid(project_id: str, agent: str, taken: set[int]) -> int:
    digest = int(hashlib.sha256(f"{project_id}\0{agent}".encode()).hexdigest()[:12], 16)
    uid = UID_BASE + digest % UID_SPAN
    while uid in taken:  # another agent of this repository has it
        uid = UID_BASE + (uid - UID_BASE + 1) % UID_SPAN
    return uid


def project_gid(project_id: str) -> int:
    """The group all of a repository's agents share: what they all write in
    the common git dir (objects, their branches' directory) is granted to it
    once, in one ACL entry, however many agents there are (an entry per uid
    would outgrow the inode and cost an ext4 xattr block per directory)."""
    return UID_BASE + int(hashlib.sha256(f"{project_id}\0group".encode()).hexdigest()[:12], 16) % UID_SPAN


def choose(ctx: EnvContext, project_id: str) -> tuple[int, int]:
    """The agent's ``uid:gid``, recorded the first time it is chosen."""
    recorded = parse_user(ctx.record.container_user)
    if recorded is not None:
        return recorded
    if os.geteuid() != 0:
        uid, gid = os.getuid(), os.getgid()
    else:
        owner = os.stat(ctx.project.repo.common_dir)
        if owner.st_uid != 0:
            uid, gid = owner.st_uid, owner.st_gid
        else:
            # distinct from the uids the repository's other agents were given
            # (agents created in the same run race only at 1 in 10 million)
            records = ctx.project.store.load().agents.values()
            taken = {u[0] for r in records if r.name != ctx.name and (u := parse_user(r.container_user))}
            uid = _hashed_uid(project_id, ctx.name, taken)
            gid = project_gid(project_id)
    ctx.record.container_user = f"{uid}:{gid}"
    return uid, gid


def needs_grants(uid: int) -> bool:
    """The files are made by root and the container is not root: the uid
    needs to be given what it works on."""
    return os.geteuid() == 0 and uid != 0


# --- POSIX ACLs through extended attributes ----------------------------------------------

Entry = tuple[int, int, int]  # tag, perm, id


def _encode(entries: Iterable[Entry]) -> bytes:
    body = b"".join(struct.pack("<HHI", t, p, i) for t, p, i in sorted(entries, key=lambda e: (e[0], e[2])))
    return struct.pack("<I", 2) + body


def _decode(blob: bytes) -> list[Entry]:
    return [struct.unpack_from("<HHI", blob, 4 + 8 * n) for n in range((len(blob) - 4) // 8)]


def _from_mode(mode: int) -> list[Entry]:
    return [(_USER_OBJ, (mode >> 6) & 7, _UNDEFINED), (_GROUP_OBJ, (mode >> 3) & 7, _UNDEFINED), (_OTHER, mode & 7, _UNDEFINED)]


def _read(fd: int, name: str, mode: int) -> list[Entry]:
    try:
        return _decode(os.getxattr(fd, name))
    except OSError as e:
        if e.errno != errno.ENODATA:
            raise
    return _from_mode(mode)


def _effective(entries: list[Entry]) -> list[Entry]:
    """The entries with the mask applied to the group class, so that a new
    mask computed from them gives nobody more than they had (a 0600 file
    made in a directory with a default ACL keeps its group out)."""
    mask = next((p for t, p, _ in entries if t == _MASK), None)
    if mask is None:
        return list(entries)
    return [(t, p & mask, i) if t in (_USER, _GROUP, _GROUP_OBJ) else (t, p, i) for t, p, i in entries if t != _MASK]


def _with_mask(entries: list[Entry]) -> list[Entry]:
    entries = [e for e in entries if e[0] != _MASK]
    if any(e[0] in (_USER, _GROUP) for e in entries):
        mask = 0
        for tag, perm, _ in entries:
            if tag in (_USER, _GROUP, _GROUP_OBJ):
                mask |= perm
        entries.append((_MASK, mask, _UNDEFINED))
    return entries


def _no_acls(path: Path | str, e: OSError) -> UserError:
    return UserError(
        f"cannot give the container's uid access to {path}: the file system has no POSIX ACLs ({e.strerror})",
        hint="put the workspace and the repository on a file system with ACLs (ext4, xfs, btrfs, tmpfs), "
        "or run hybridiso as the user who owns them (the container then runs as that user)",
    )


# Every change below is made through a file descriptor reached without
# following a symlink (safe_files' walk, openat with O_NOFOLLOW): the agent
# owns its worktree and may swap any directory in it for a symlink while
# hybridiso works there (the upgrade path hands over a live environment),
# and a path walked twice could then lead anywhere on the host.
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
MAX_DEPTH = 256  # deeper than any checkout; a tree made to exhaust us is refused, not followed


def _open_at(parent: int, name: str, *, directory: bool) -> int | None:
    """``name`` in the directory ``parent`` as a directory (or a regular
    file), or None when it is anything else now (a symlink, a FIFO, gone)."""
    try:
        fd = os.open(name, _DIR if directory else _FILE, dir_fd=parent)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENOENT, errno.ENXIO, errno.EACCES):
            return None
        raise
    if not directory and not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return fd


def grant_fd(fd: int, uid: int, perm: int, *, default: bool = False, shown: Path | str = "", group: bool = False) -> None:
    """Add ``u:uid:perm`` (``g:uid:perm`` with ``group``) to the access ACL
    of the open file ``fd``, and to its default ACL when ``default`` and it
    is a directory.  Nothing is written when it is there already."""
    st = os.fstat(fd)
    tag = _GROUP if group else _USER
    names = [ACL_ACCESS, ACL_DEFAULT] if default and stat.S_ISDIR(st.st_mode) else [ACL_ACCESS]
    for name in names:
        current = _read(fd, name, st.st_mode)
        if (tag, perm, uid) in current and any(t == _MASK and p & perm == perm for t, p, _ in current):
            continue
        entries = _effective(current)
        entries = [e for e in entries if not (e[0] == tag and e[2] == uid)]
        if name == ACL_DEFAULT and not any(e[0] == _USER_OBJ for e in entries):
            entries = _from_mode(st.st_mode)
        entries.append((tag, perm, uid))
        try:
            os.setxattr(fd, name, _encode(_with_mask(entries)))
        except OSError as e:
            if e.errno in (errno.EOPNOTSUPP, errno.ENOTSUP):
                raise _no_acls(shown, e) from None
            raise


def revoke_fd(fd: int, uid: int, *, group: bool = False) -> None:
    """Remove the ACL entries of the user (or group) ``uid``; what is left
    of an ACL that only mirrored the mode is removed with it."""
    st = os.fstat(fd)
    tag = _GROUP if group else _USER
    for name in (ACL_ACCESS, ACL_DEFAULT) if stat.S_ISDIR(st.st_mode) else (ACL_ACCESS,):
        try:
            entries = _decode(os.getxattr(fd, name))
        except OSError:
            continue
        kept = [e for e in entries if not (e[0] == tag and e[2] == uid)]
        if kept == entries:
            continue
        if not any(e[0] in (_USER, _GROUP) for e in kept):
            os.removexattr(fd, name)
            if name == ACL_ACCESS:  # the mode's group bits showed the mask: show the group's again
                group_bits = next((p for t, p, _ in kept if t == _GROUP_OBJ), (st.st_mode >> 3) & 7)
                os.chmod(fd, (stat.S_IMODE(st.st_mode) & ~0o070) | (group_bits << 3))
        else:
            os.setxattr(fd, name, _encode(_with_mask(kept)))


def _has_named_user(fd: int) -> bool:
    try:
        return any(t in (_USER, _GROUP) for t, _, _ in _decode(os.getxattr(fd, ACL_ACCESS)))
    except OSError:
        return False


def _sticky(fd: int, on: bool = True) -> None:
    mode = stat.S_IMODE(os.fstat(fd).st_mode)
    if bool(mode & stat.S_ISVTX) != on:
        os.chmod(fd, mode | stat.S_ISVTX if on else mode & ~stat.S_ISVTX)


def _at(anchor: Path, rel: str | Path, *, directory: bool = True) -> int | None:
    """``anchor/rel`` opened without following a symlink on the way, or None."""
    parts = Path(rel).parts
    if not parts:
        return os.open(anchor, _DIR)
    try:
        with safe_files.open_dir(anchor, Path(*parts[:-1]) if len(parts) > 1 else "") as parent:
            return _open_at(parent, parts[-1], directory=directory)
    except (FileNotFoundError, NotADirectoryError, safe_files.UnsafePath):
        return None


# --- handing a new environment over ---------------------------------------------------------

# what ``container_grants`` records once the worktree and the agent's own git
# dir are its uid's (older records list the ACL entries an older hybridiso
# made in the common dir: ``take_back`` removes those)
HANDED_OVER = "worktree"


def _hand_over_tree(top: int, uid: int, gid: int, keep: set[str], shown: Path) -> None:
    """The contents of the directory ``top`` become ``uid``'s except the
    names in ``keep``; every directory gets a default ACL for it; ``top``
    itself stays its owner's, with an ACL entry and the sticky bit."""
    grant_fd(top, uid, _RWX, default=True, shown=shown)
    _sticky(top)
    _give(top, uid, gid, keep, 0, shown)


def _give(dfd: int, uid: int, gid: int, keep: set[str], depth: int, shown: Path) -> None:
    if depth > MAX_DEPTH:
        raise UserError(f"{shown} nests directories more than {MAX_DEPTH} deep; hybridiso does not follow it further")
    for name in os.listdir(dfd):
        if name in keep:
            continue
        try:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            os.chown(name, uid, gid, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            continue  # removed meanwhile
        if not stat.S_ISDIR(st.st_mode):
            continue
        sub = _open_at(dfd, name, directory=True)
        if sub is None:
            continue  # swapped for something else since: not followed
        try:
            grant_fd(sub, uid, _RWX, default=True, shown=shown / name)
            _give(sub, uid, gid, set(), depth + 1, shown / name)
        finally:
            os.close(sub)


def hand_over(ctx: EnvContext, uid: int, gid: int) -> None:
    """Let the agent's uid write its worktree (see the module's docstring);
    its own git dir is container_git.hand_over's.  Nothing of the common git
    dir: the container never sees it."""
    if not needs_grants(uid):
        return
    top = os.open(ctx.path, _DIR)
    try:
        _hand_over_tree(top, uid, gid, {".git"}, ctx.path)
    finally:
        os.close(top)
    ctx.record.container_grants = [HANDED_OVER]


def refresh(ctx: EnvContext, uid: int, gid: int, files: Iterable[str]) -> None:
    """Files the host wrote into the worktree since (the env file: readable;
    included files: the agent's); each ``up`` before the agent runs."""
    if not needs_grants(uid):
        return
    for rel in files:
        parts = Path(rel).parts
        if not parts or ".." in parts:
            continue
        try:
            with safe_files.open_dir(ctx.path, Path(*parts[:-1]) if len(parts) > 1 else "") as parent:
                fd = _open_at(parent, parts[-1], directory=False)
                if fd is None:
                    continue
                try:
                    if rel == ENV_FILE:
                        grant_fd(fd, uid, 4, shown=ctx.path / rel)  # read it, never rewrite what the host reads back
                    elif os.fstat(fd).st_uid != uid:
                        os.fchown(fd, uid, gid)
                finally:
                    os.close(fd)
        except (FileNotFoundError, NotADirectoryError, safe_files.UnsafePath):
            continue  # the agent made it something else: not ours to touch


def take_back(ctx: EnvContext) -> None:
    """Remove the ACL entries an older hybridiso gave the agent's uid (and
    its group, with the repository's last such agent) in the common git dir,
    as its record lists them (``down``, and the first ``up`` of this version)."""
    user = parse_user(ctx.record.container_user)
    legacy = [g for g in ctx.record.container_grants if g != HANDED_OVER]
    if user is None or not needs_grants(user[0]) or not legacy:
        return
    uid, gid = user
    common = ctx.project.repo.common_dir
    others = [
        r for r in ctx.project.store.load().agents.values()
        if r.name != ctx.name and r.strategy == "container" and Path(r.path).exists() and any(g != HANDED_OVER for g in r.container_grants)
    ]
    group_left = not any((parse_user(r.container_user) or (0, 0))[1] == gid for r in others)
    with _acl_lock:
        for rel in legacy:
            if rel.startswith("logs/refs/heads/") and _at(common, rel, directory=False) is not None:
                _revoke_at(common, rel, uid, group=False)  # its branch's reflog: the uid's own entry
            elif group_left:
                _revoke_at(common, rel, gid, group=True)
        ctx.record.container_grants = [g for g in ctx.record.container_grants if g == HANDED_OVER]


def _revoke_at(common: Path, rel: str, ident: int, *, group: bool) -> None:
    if Path(rel).is_absolute() or ".." in Path(rel).parts:
        return  # a tampered record names nothing outside the git dir
    fd = _at(common, rel)
    if fd is None:
        fd = _at(common, rel, directory=False)
    if fd is None:
        return
    try:
        revoke_fd(fd, ident, group=group)
        if rel == "objects":
            # fan-out directories made since inherited the entry
            for name in os.listdir(fd):
                sub = _open_at(fd, name, directory=True)
                if sub is not None:
                    try:
                        revoke_fd(sub, ident, group=group)
                        if not _has_named_user(sub):
                            _sticky(sub, on=False)
                    finally:
                        os.close(sub)
            if not _has_named_user(fd):
                _sticky(fd, on=False)  # the last agent left it: as it was
    except OSError:
        pass  # best effort: an entry left behind grants an id nobody runs as
    finally:
        os.close(fd)
