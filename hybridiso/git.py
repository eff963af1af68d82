"""Everything hybridiso asks of git: the only module that runs git.

Every call goes through ``hybridiso.process.run`` with leaked ``GIT_*``
variables stripped.  (GitPython was the first choice; it has no worktree API,
so it was only ever a command runner here, and its import cost 60-120 ms of the
0.5 s that ``status`` may take: docs/architecture.md.)  Each call:
- runs as an argv list in a given directory (paths with spaces/unicode are safe);
- raises ``CommandError`` showing the command, exit code, stdout and stderr;
- retries a bounded number of times when git reports lock contention
  (``index.lock``, ``cannot lock ref``, ``config.lock``: docs/faults.md row 11), and
  reports a lock file that is older than ``STALE_LOCK_SECONDS`` as stale.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import secrets
import stat
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from hybridiso.errors import UserError
from hybridiso import process, safe_files
from hybridiso.process import CommandError, Result

_K = TypeVar("_K")
_V = TypeVar("_V")

LOCK_RETRIES = 8
STALE_LOCK_SECONDS = 600.0
# Lock contention (another git holds the lock file: "File exists"), and
# reading another worktree's metadata while a concurrent `worktree add` is
# still writing it ("failed to read .git/worktrees/x/commondir").  Only that is
# waited out: "cannot lock ref" also says a ref is not at the expected old
# value (a compare-and-swap that lost), that 'refs/heads/feat' is in the way of
# 'feat/x', or that the lock cannot be made at all (permission, read-only or
# full disk), and none of those goes away by trying again.
_LOCK_RE = re.compile(
    r"\.lock': File exists|could not lock config file [^\n]*: File exists"
    r"|failed to read [^\n]*worktrees/[^\n]*(commondir|gitdir)"
)
_LOCK_PATH_RE = re.compile(r"Unable to create '(?P<path>[^']+\.lock)'")


class StaleLock(UserError):
    pass


# --- work trees a container wrote ------------------------------------------------
#
# A container agent's files are written by code the user does not trust.  The
# host's git still reads them (status, inventory, snapshots, sync), so every
# git call whose directory is such a work tree runs with what a work tree can
# make git execute switched off: no fsmonitor (a command from config), no
# hooks, no recursion into submodules (a nested repository the agent made has
# a config of its own).  The config of that work tree's repository is the
# host's (the agent never sees it: strategies/container.py), so this is
# defence in depth for the work tree itself.  It is decided here, in the one
# function that runs git, by the directory a call runs in: no call site can
# forget it.  ``distrust`` registers a work tree (the container strategy,
# for every environment whose record says it is a container's).

UNTRUSTED_CONFIG = ("-c", "core.fsmonitor=false", "-c", "core.hooksPath=/dev/null", "-c", "submodule.recurse=false")
_distrusted: set[str] = set()
_distrust_lock = threading.Lock()


def distrust(path: Path | str) -> None:
    """Every later git call in ``path`` (or below it) runs with
    ``UNTRUSTED_CONFIG``, and ``status_porcelain`` there ignores submodules."""
    with _distrust_lock:
        _distrusted.add(os.path.normpath(os.fspath(path)))


def distrusted(cwd: Path | str) -> bool:
    here = os.path.normpath(os.fspath(cwd))
    with _distrust_lock:
        if not _distrusted:
            return False
        return any(here == d or here.startswith(d + os.sep) for d in _distrusted)


def _execute(cwd: Path | str, args: Sequence[str], env: dict[str, str] | None = None, input: str | None = None) -> Result:
    base = process.no_git_env()
    if env:
        base.update(env)
    prefix = UNTRUSTED_CONFIG if distrusted(cwd) else ()
    return process.run(["git", *prefix, *args], cwd=cwd, env=base, check=False, input=input)


def run(cwd: Path | str, *args: str, check: bool = True) -> Result:
    """Run ``git ARGS`` in ``cwd``; retry on lock contention."""
    if args[:1] == ("worktree",) and args[1:2] != ("list",):
        # any worktree command (a `worktree move` too) changes what the
        # listing and the admin scan say: neither is believed after it (issue 15)
        _forget_worktrees()
        try:
            return _run(cwd, args, check)
        finally:
            _forget_worktrees()
    return _run(cwd, args, check)


def _run(cwd: Path | str, args: Sequence[str], check: bool) -> Result:
    delay = 0.05
    for attempt in range(LOCK_RETRIES + 1):
        result = _execute(cwd, args)
        if result.returncode == 0 or not check:
            return result
        m = _LOCK_RE.search(result.stderr)
        lock = _LOCK_PATH_RE.search(result.stderr)
        if m and lock:
            _raise_if_stale(Path(lock.group("path")), result)  # an old lock will not go away by waiting
        if not m or attempt == LOCK_RETRIES:
            raise CommandError(result, os.fspath(cwd))
        time.sleep(delay)
        delay = min(delay * 2, 1.0)
    raise AssertionError("unreachable")


def _raise_if_stale(lock: Path, result: Result) -> None:
    try:
        age = time.time() - lock.stat().st_mtime
    except OSError:
        return
    if age >= STALE_LOCK_SECONDS:
        raise StaleLock(
            f"git lock file {lock} is {int(age)} s old, so no running git holds it "
            f"(while running: git {' '.join(result.argv[1:])})",
            hint="if no git command is running in this repository, delete that file",
        )


def out(cwd: Path | str, *args: str) -> str:
    return run(cwd, *args).stdout.strip()


def ok(cwd: Path | str, *args: str) -> bool:
    return _execute(cwd, args).returncode == 0


# --- repository discovery -----------------------------------------------------


@dataclass(frozen=True)
class RepoInfo:
    toplevel: Path  # the worktree the command was run from
    common_dir: Path  # shared git directory (objects, refs, worktrees/), resolved
    # where git runs for "the repository": the main worktree, or for a bare
    # repository with linked worktrees the bare directory itself
    main_root: Path
    has_commits: bool
    shallow: bool
    bare: bool  # the repository is bare: every worktree is a linked one
    # the worktree whose manifest and ignored files (include:) are used: the
    # main worktree, or for a bare repository the worktree you stand in
    checkout: Path


class BareRepository(UserError):
    """The command was run in a bare repository, which has no working tree."""


# One rev-parse answers everything discovery needs.  Its output is in this
# order, and git stops at --show-toplevel outside a working tree (a bare
# repository, inside .git) after printing the others.
_PROBE = ["rev-parse", "--is-bare-repository", "--is-inside-work-tree", "--absolute-git-dir", "--git-common-dir",
          "--is-shallow-repository", "--show-toplevel"]


def discover(start: Path) -> RepoInfo:
    """The repository around ``start``, the same from every directory of it
    and of each of its worktrees (docs/faults.md row 22)."""
    return _discover(start, hops=0)


def _discover(start: Path, hops: int) -> RepoInfo:
    if not start.exists():
        raise UserError(f"{start} does not exist", hint="pass -C an existing directory of your repository")
    if not start.is_dir():
        raise UserError(f"{start} is not a directory", hint="pass -C the directory to run in (your repository or one of its subdirectories)")
    probe = _execute(start, _PROBE)
    lines = probe.stdout.splitlines()
    if len(lines) < 5:
        raise _not_a_repository(start, probe)
    bare_here, in_tree = lines[0] == "true", lines[1] == "true"
    git_dir = Path(lines[2]).resolve()
    common = Path(lines[3])
    # --git-common-dir is relative to the directory git ran in (not to the
    # toplevel): from repo/src it is "../.git"
    common = (common if common.is_absolute() else start / common).resolve()
    shallow = lines[4].strip() == "true"
    if bare_here:
        raise _bare(start, common)
    if not in_tree or len(lines) < 6:
        # inside a git directory (.git, .git/worktrees/x): act as from the
        # working tree it belongs to, when there is one
        if hops == 0 and common.name == ".git":
            return _discover(common.parent, hops + 1)
        raise UserError(
            f"{start} is inside the git directory {common}, not in a working tree",
            hint="run hybridiso from the repository's working tree (or pass -C PATH)",
        )
    toplevel = Path(lines[5]).resolve()
    bare = False
    if git_dir == common:
        main_root = toplevel  # we stand in the main worktree
    else:
        # a linked worktree: of a bare repository (every worktree is linked),
        # or of a repository whose main worktree holds the common dir as .git
        bare = _is_bare(common)
        if bare:
            main_root = common
        elif common.name == ".git":
            main_root = common.parent
        else:
            raise UserError(
                f"{toplevel} is a linked worktree of {common}, whose main worktree git cannot name "
                "(a repository made with --separate-git-dir)",
                hint="run hybridiso from the repository's main worktree",
            )
    has_commits = _execute(toplevel, ["rev-parse", "--verify", "-q", "HEAD"]).returncode == 0
    return RepoInfo(toplevel, common, main_root, has_commits, shallow, bare, toplevel if bare else main_root)


def _is_bare(common_dir: Path) -> bool:
    r = _execute(common_dir, ["rev-parse", "--is-bare-repository"])
    return r.returncode == 0 and r.stdout.strip() == "true"


def _not_a_repository(start: Path, probe: Result) -> UserError:
    said = (probe.stderr.strip().splitlines() or [""])[-1].removeprefix("fatal: ")
    if said.startswith("not a git repository: "):
        # a .git file naming a git dir that is gone: a worktree whose metadata went
        return UserError(
            f"{start} is in a worktree whose link to its repository is broken ({said})",
            hint="run hybridiso from the repository itself; `git worktree repair` there can mend the link if the repository moved",
        )
    if "not a git repository" in said or not said:
        return UserError(
            f"{start} is not inside a git repository",
            hint="run hybridiso from your repository (or pass -C PATH); `git init` makes one",
        )
    # e.g. "detected dubious ownership in repository at ..." (safe.directory)
    return UserError(f"git cannot use the repository around {start}: {said}", hint="fix what git says, then run hybridiso again")


def _bare(start: Path, common: Path) -> BareRepository:
    try:
        trees = [wt.path for wt in _worktree_list(common) if not wt.bare]
    except CommandError:
        trees = []
    if trees:
        shown = ", ".join(str(p) for p in trees[:3]) + (f" (+{len(trees) - 3} more)" if len(trees) > 3 else "")
        hint = f"run hybridiso from one of its worktrees: {shown}"
    else:
        hint = f"make a worktree to work in (git -C '{common}' worktree add ../main main), then run hybridiso there"
    where = f"{start} is a bare repository" if start.resolve() == common else f"{start} is in the bare repository {common}"
    return BareRepository(f"{where}, which has no working tree", hint=hint)


def resolve_commit(cwd: Path, ref: str) -> str | None:
    r = _execute(cwd, ["rev-parse", "--verify", "-q", "--end-of-options", f"{ref}^{{commit}}"])
    return r.stdout.strip() if r.returncode == 0 else None


def branch_exists(cwd: Path, branch: str) -> bool:
    return _execute(cwd, ["show-ref", "--verify", "-q", f"refs/heads/{branch}"]).returncode == 0


def local_branches(cwd: Path) -> list[str]:
    """Every local branch (name without refs/heads/), in one call."""
    r = run(cwd, "for-each-ref", "--format=%(refname)", "refs/heads/")
    return [line.removeprefix("refs/heads/") for line in r.stdout.splitlines() if line.startswith("refs/heads/")]


def branch_commit(cwd: Path, branch: str) -> str | None:
    return resolve_commit(cwd, f"refs/heads/{branch}")


def current_branch(cwd: Path) -> str | None:
    r = _execute(cwd, ["symbolic-ref", "-q", "--short", "HEAD"])
    return r.stdout.strip() if r.returncode == 0 else None


# --- worktrees ------------------------------------------------------------------


@dataclass(frozen=True)
class Worktree:
    path: Path
    head: str | None
    branch: str | None  # short name, None when detached
    bare: bool = False
    locked: bool = False
    prunable: bool = False


# What this process read of the repository's worktrees, so a command asks
# once and not once per agent (issue 15: N agents asking "which worktree is
# mine?" of a list of N was O(N^2)).  Every call here that adds, removes or
# forgets a worktree, or moves a branch one has checked out, clears it
# (``_forget_worktrees``); ``_generation`` counts those, so a listing that
# was read while one happened (another thread) is used once, never kept.
_worktree_cache: dict[Path, list[Worktree]] = {}
_worktree_index: dict[Path, dict[str, Worktree]] = {}
_admin_cache: dict[str, dict[str, list[Path]]] = {}
_cache_lock = threading.Lock()
_generation = 0
_admin_scopes = 0


def _forget_worktrees() -> None:
    global _generation
    with _cache_lock:
        _generation += 1
        _worktree_cache.clear()
        _worktree_index.clear()
        _admin_cache.clear()


def _keep(cache: dict[_K, _V], key: _K, value: _V, generation: int) -> None:
    """Keep ``value`` (read while the generation was ``generation``) only
    when no worktree changed since it was read."""
    with _cache_lock:
        if generation == _generation:
            cache[key] = value


def worktree_list(cwd: Path, *, fresh: bool = False) -> list[Worktree]:
    """``git worktree list``, cached per process until a worktree command here
    changes it (status asks once instead of once per agent); ``fresh``: asked
    again (another shell may have changed it)."""
    key = Path(cwd).resolve()
    return list(_listed(key, fresh))


def _listed(key: Path, fresh: bool = False) -> list[Worktree]:
    with _cache_lock:
        cached, generation = (None if fresh else _worktree_cache.get(key)), _generation
    if cached is None:
        cached = _worktree_list(key)
        _keep(_worktree_cache, key, cached, generation)
    return cached


def worktree_at(cwd: Path, path: Path) -> Worktree | None:
    """The worktree ``git worktree list`` shows at ``path`` (both sides'
    symlinks resolved), from one listing and one index of it for every
    agent of a command (issue 15)."""
    key = Path(cwd).resolve()
    with _cache_lock:
        index, generation = _worktree_index.get(key), _generation
    if index is None:
        index = {}
        for wt in _listed(key):
            index.setdefault(os.path.realpath(wt.path), wt)  # the first, as a scan of the list finds it
        _keep(_worktree_index, key, index, generation)
    return index.get(os.path.realpath(path))


def _worktree_list(cwd: Path) -> list[Worktree]:
    text = run(cwd, "worktree", "list", "--porcelain", "-z").stdout
    trees: list[Worktree] = []
    for block in text.split("\0\0"):
        fields: dict[str, str] = {}
        for line in block.split("\0"):
            if not line:
                continue
            key, _, value = line.partition(" ")
            fields[key] = value
        if "worktree" not in fields:
            continue
        branch = fields.get("branch")
        trees.append(
            Worktree(
                path=Path(fields["worktree"]),
                head=fields.get("HEAD"),
                branch=branch.removeprefix("refs/heads/") if branch else None,
                bare="bare" in fields,
                locked="locked" in fields,
                prunable="prunable" in fields,
            )
        )
    return trees


_worktree_metadata = threading.Lock()


def worktree_add(repo: Path, path: Path, branch: str, start: str | None, *, track: bool = False) -> None:
    """Check out ``branch`` in a new worktree; create it at ``start`` when given.

    git reads every worktree's metadata while adding one, and fails on a
    half-written one (docs/faults.md row 11), so registering is serialised; the checkout,
    the expensive part, runs in the new worktree (its own index) in parallel.
    ``--no-track`` keeps git from writing upstream config for the new branch;
    ``track`` (``start`` is a remote-tracking branch) sets it up instead.
    """
    _forget_worktrees()
    try:
        with _worktree_metadata:
            if start is not None:
                tracking = "--track" if track else "--no-track"
                run(repo, "worktree", "add", "--no-checkout", tracking, "-b", branch, "--", str(path), start)
            else:
                run(repo, "worktree", "add", "--no-checkout", "--", str(path), branch)
        run(path, "reset", "-q", "--hard", "--no-recurse-submodules", "HEAD")
    finally:
        _forget_worktrees()


def worktree_add_detached(repo: Path, path: Path, commit: str) -> None:
    """A scratch worktree with a detached HEAD at ``commit`` (``land``'s, issue 14)."""
    _forget_worktrees()
    try:
        with _worktree_metadata:
            run(repo, "worktree", "add", "--no-checkout", "--detach", "--", str(path), commit)
        run(path, "reset", "-q", "--hard", "--no-recurse-submodules", "HEAD")
    finally:
        _forget_worktrees()


def worktree_remove(repo: Path, path: Path, *, force: bool) -> None:
    args = ["worktree", "remove"]
    if force:
        args += ["--force", "--force"]  # twice: also when locked
    try:
        run(repo, *args, "--", str(path))
    finally:
        _forget_worktrees()


def worktree_entry(common_dir: Path, path: Path) -> Path | None:
    """The metadata directory ``$common/worktrees/<id>/`` that git keeps for
    the worktree at ``path``: the one whose ``gitdir`` file names
    ``path/.git``.  Only a plain directory counts, never one reached through
    a symlink, and the files are read without following any (safe_files).
    Two entries naming one path (git never writes that: someone edited a
    ``gitdir`` file) are no answer: None, so nothing is removed on a guess."""
    entries = worktree_entries(common_dir, path)
    return entries[0] if len(entries) == 1 else None


def worktree_entries(common_dir: Path, path: Path) -> list[Path]:
    """Every metadata directory whose ``gitdir`` names ``path/.git``."""
    worktrees = common_dir / "worktrees"
    if not safe_files.is_plain_dir(worktrees):
        return []
    wanted = _gitdir_spellings(path)
    try:
        ids = sorted(os.listdir(worktrees))
    except OSError:
        return []
    found = []
    for ident in ids:
        entry = worktrees / ident
        if not safe_files.is_plain_dir(entry):
            continue
        try:
            text = safe_files.read_text(worktrees, f"{ident}/gitdir", limit=1 << 16)
        except (OSError, UserError):
            continue
        if text is None or not text.strip():
            continue
        named = Path(text.strip())
        if not named.is_absolute():  # worktree.useRelativePaths (git >= 2.48)
            named = entry / named
        if os.path.normpath(named) in wanted:
            found.append(entry)
    return found


def _gitdir_spellings(path: Path) -> set[str]:
    """``path/.git`` as git may have written it: as given, and with the
    parent's symlinks resolved (git records the real path)."""
    spellings = {os.path.normpath(path / ".git")}
    with contextlib.suppress(OSError):
        spellings.add(os.path.normpath(Path(os.path.realpath(path.parent)) / path.name / ".git"))
    return spellings


def worktree_forget(common_dir: Path, path: Path) -> bool:
    """Drop git's record of the worktree at ``path``, whose directory is gone:
    that one metadata directory and nothing else (what ``git worktree prune``
    would do for it alone).  Never a repository-wide prune, which would also
    take the metadata, index and detached commits of every worktree that is
    only briefly missing (an unmounted disk: docs/faults.md row 28).  Returns whether
    there was an entry to drop."""
    if os.path.lexists(path):
        return False  # it is there: `git worktree remove` is the way
    entry = worktree_entry(common_dir, path)
    if entry is None:
        return False
    try:
        _remove_entry(entry)
    except OSError as e:  # immutable, a read-only mount: said, and the next run finishes it (docs/faults.md row 8)
        raise UserError(
            f"git's record of the worktree {path} could not be removed: {e.filename or entry}: {e.strerror or e}",
            hint=f"make {entry} writable by you (immutable? a read-only mount?), then run the same hybridiso command again",
        ) from None
    finally:
        _forget_worktrees()
    return True


def remove_scratch_worktree(repo: Path, common_dir: Path, parent: Path, path: Path) -> str:
    """Remove ``path``, a scratch worktree a hybridiso command made directly
    in ``parent`` (land's ``scratch/``), and git's record of it; '' when it
    is gone, else why it was left.  Only what hybridiso made is touched
    (docs/faults.md rows 28, 31, 41): ``path`` must be exactly one level in
    ``parent`` and a directory itself (lstat: never a symlink, whose target
    may be an agent's worktree, nor a FIFO, which would block whoever opens
    it), registered as a worktree of this repository at that very path with
    a detached HEAD (scratch worktrees never have a branch), its ``.git``
    naming that record.  Nothing is opened but those small files, and
    only this worktree's metadata is forgotten, never a repository-wide
    ``git worktree prune``."""
    if not os.path.lexists(path):
        entry = worktree_entry(common_dir, path)
        if path.parent == parent and entry is not None and _detached(entry):
            worktree_forget(common_dir, path)  # its directory was deleted (by a check, by hand): its own record only
        return ""
    why = not_scratch_worktree(common_dir, parent, path)
    if why:
        return why
    with contextlib.suppress(CommandError):
        worktree_remove(repo, path, force=True)
    if safe_files.is_plain_dir(path):
        shutil.rmtree(path, ignore_errors=True)  # rmtree never follows a symlink inside
    worktree_forget(common_dir, path)
    return f"{path} could not be removed entirely: left as it is" if os.path.lexists(path) else ""


def scratch_entries(repo: Path, parent: Path) -> list[Path]:
    """What is directly in ``parent`` (a scratch dir), and the worktrees git
    records there whose directory is gone (a check deleted it): everything
    ``remove_scratch_worktree`` is to be asked about."""
    found = {parent / name for name in os.listdir(parent)} if safe_files.is_plain_dir(parent) else set()
    found |= {wt.path for wt in worktree_list(repo) if wt.path.parent == parent}
    return sorted(found)


SCRATCH_CLONE_MARK = "hybridiso-land-clone"  # in a scratch clone's directory, beside its repo/: the project id


def _not_own_directory(parent: Path, path: Path, what: str) -> str:
    """Why ``path`` is not a real directory (lstat: never a symlink's
    target) directly in ``parent`` that could be ``what`` hybridiso made;
    '' when it could be."""
    if path.parent != parent or path.name in ("", ".", ".."):
        return f"{path} is not directly in {parent}: left as it is"
    try:
        mode = os.lstat(path).st_mode
    except OSError as e:
        return f"{path} cannot be looked at ({e.strerror}): left as it is"
    if not stat.S_ISDIR(mode):
        return f"{path} is {safe_files.kind(mode)}, not {what} hybridiso made: left as it is (remove it by hand)"
    return ""


def not_scratch_clone(parent: Path, path: Path, owner: str) -> str:
    """Why ``path`` is not a scratch clone hybridiso made in ``parent``
    (land's ``clones/``; '' when it is one): a directory itself (lstat),
    directly in ``parent``, holding the mark file (a regular file, read
    without following a symlink) that names ``owner`` (the project id),
    beside the clone ``repo/``; or one that is empty, or holds only an
    empty mark (a run killed while making it)."""
    why = _not_own_directory(parent, path, "a clone")
    if why:
        return why
    try:
        names = sorted(os.listdir(path))
    except OSError as e:
        return f"{path} cannot be read ({e.strerror}): left as it is"
    try:
        mark = safe_files.read_text(path, SCRATCH_CLONE_MARK, limit=4096) if SCRATCH_CLONE_MARK in names else None
    except (OSError, UserError):
        mark = None  # a symlink, a FIFO, too big: no mark of ours
    if not names or (mark == "" and names == [SCRATCH_CLONE_MARK]) or (mark is not None and mark.strip() == owner):
        return ""
    return f"{path} is not a scratch clone hybridiso made for this repository (no mark naming it): left as it is"


def remove_scratch_clone(parent: Path, path: Path, owner: str) -> str:
    """Remove ``path``, a scratch clone land made (``not_scratch_clone``);
    '' when it is gone, else why it was left.  rmtree never follows a
    symlink inside, whatever a check put there."""
    if not os.path.lexists(path):
        return ""
    why = not_scratch_clone(parent, path, owner)
    if why:
        return why
    shutil.rmtree(path, ignore_errors=True)
    return f"{path} could not be removed entirely: left as it is" if os.path.lexists(path) else ""


def not_scratch_worktree(common_dir: Path, parent: Path, path: Path) -> str:
    """Why ``path`` is not a scratch worktree hybridiso made in ``parent``
    ('' when it is one; see ``remove_scratch_worktree``)."""
    why = _not_own_directory(parent, path, "a worktree")
    if why:
        return why
    entry = worktree_entry(common_dir, path)
    if entry is None:
        return f"{path} is not a worktree of this repository: left as it is (remove it by hand if it is no one's)"
    if not _links_to(path, entry) or not _detached(entry):
        return f"{path} is not a scratch worktree hybridiso made (its .git or HEAD says otherwise): left as it is"
    return ""


def _links_to(path: Path, entry: Path) -> bool:
    """``path/.git`` is a regular file naming ``entry`` (read with O_NOFOLLOW)."""
    try:
        text = safe_files.read_text(path, ".git", limit=4096)
    except (OSError, UserError):
        return False
    if text is None or not text.startswith("gitdir: "):
        return False
    named = Path(text.removeprefix("gitdir: ").strip())
    if not named.is_absolute():
        named = path / named
    return os.path.realpath(named) == os.path.realpath(entry)


def _detached(entry: Path) -> bool:
    try:
        head = safe_files.read_text(entry, "HEAD", limit=4096)
    except (OSError, UserError):
        return False
    return head is not None and not head.startswith("ref:")


def _remove_entry(entry: Path) -> None:
    """Delete a metadata dir with its ``gitdir`` file last: a run killed half
    way leaves an entry the next one still finds by its gitdir, and finishes.
    (rmtree refuses a symlink at the top and never follows one below.)"""
    with os.scandir(entry) as it:
        for item in it:
            if item.name == "gitdir":
                continue
            if item.is_dir(follow_symlinks=False):
                shutil.rmtree(item.path)
            else:
                os.unlink(item.path)
    shutil.rmtree(entry)


def init_submodules(path: Path) -> bool:
    if not (path / ".gitmodules").is_file():
        return False
    run(path, "submodule", "update", "--init", "--recursive")
    return True


# --- branches, status, commits ---------------------------------------------------


def create_branch(cwd: Path, branch: str, start: str) -> None:
    run(cwd, "branch", "--no-track", "--", branch, start)


def delete_branch(cwd: Path, branch: str) -> None:
    run(cwd, "branch", "-D", "--", branch)


def status_porcelain(path: Path, *, ignored: bool = False) -> list[tuple[str, str]]:
    """(two-letter code, path) for each changed, untracked (and ignored) file."""
    args = ["status", "--porcelain=v1", "-z", "--untracked-files=all"]
    if distrusted(path):
        args.append("--ignore-submodules=all")  # never enter a repository the agent made
    if ignored:
        args.append("--ignored=matching")
    return _parse_status(run(path, *args).stdout)


# what the environment's own config could use to hide a change from
# `git status` (an fsmonitor hook answering "nothing changed", a submodule
# set to `ignore = all`): the work check never asks them
_TRUST_NOTHING = ("-c", "core.fsmonitor=false", "-c", "core.untrackedCache=false", "-c", "core.ignoreStat=false")


def index_flags(path: Path, *, prefix: Sequence[str] = (), env: dict[str, str] | None = None) -> dict[str, str]:
    """path -> ``ls-files -v`` tag of each index entry whose flags make git
    stop looking at its file: lowercase (``--assume-unchanged``) and ``S``
    (``--skip-worktree``, also what a sparse checkout sets)."""
    r = _execute(path, [*prefix, "ls-files", "-v", "-z"], env=env)
    if r.returncode != 0:
        raise CommandError(r, os.fspath(path))
    flags = {}
    for item in r.stdout.split("\0"):
        tag, _, name = item.partition(" ")
        if name and (tag == "S" or tag.islower() or tag == "s"):
            flags[name] = tag
    return flags


def _clear_flags(path: Path, prefix: Sequence[str], env: dict[str, str], flags: dict[str, str]) -> None:
    """Clear the flags of ``flags`` in the index ``env`` names: every
    assume-unchanged, and skip-worktree where the file is there (one a sparse
    checkout left out is in the commit, not a deletion)."""
    unassume = [n for n, t in flags.items() if t.islower()]
    unskip = [n for n, t in flags.items() if t.upper() == "S" and os.path.lexists(path / n)]
    for option, names in (("--no-assume-unchanged", unassume), ("--no-skip-worktree", unskip)):
        if names:
            r = _execute(path, [*prefix, "update-index", option, "-z", "--stdin"], env=env, input="\0".join(names) + "\0")
            if r.returncode != 0:
                raise CommandError(r, os.fspath(path))


def work_status(path: Path) -> list[tuple[str, str]]:
    """``status_porcelain`` that index flags and the checkout's own config
    cannot fool (attack11 #1): files marked ``--assume-unchanged`` or
    ``--skip-worktree`` are compared through a copy of the index with those
    flags cleared (the real index is never touched)."""
    flags = index_flags(path)
    if not flags:
        return _parse_status(_status(path, None))
    index = Path(out(path, "rev-parse", "--git-path", "index"))
    index = index if index.is_absolute() else path / index
    tmp = index.with_name(f"hybridiso-check-index-{os.getpid()}-{secrets.token_hex(4)}")
    env = {"GIT_INDEX_FILE": str(tmp)}
    try:
        tmp.write_bytes(index.read_bytes())
        _clear_flags(path, [], env, flags)
        return _parse_status(_status(path, env))
    finally:
        tmp.unlink(missing_ok=True)


def _status(path: Path, env: dict[str, str] | None) -> str:
    args = [*_TRUST_NOTHING, "status", "--porcelain=v1", "-z", "--untracked-files=all", "--ignore-submodules=none", "--no-renames"]
    r = _execute(path, args, env=env)
    if r.returncode != 0:
        raise CommandError(r, os.fspath(path))
    return r.stdout


def _parse_status(text: str) -> list[tuple[str, str]]:
    entries: list[tuple[str, str]] = []
    parts = iter(text.split("\0"))
    for item in parts:
        if not item:
            continue
        code, name = item[:2], item[3:]
        if code[0] in "RC":
            next(parts, None)  # the rename source follows
        entries.append((code, name))
    return entries


@dataclass(frozen=True)
class Ignored:
    """A file (or a directory, ending in ``/``) git ignores, and the rule
    that does: ``source`` as ``check-ignore -v`` names it (a ``.gitignore``
    relative to the checkout, an exclude file by its path), ``""`` when no
    rule was named."""

    entry: str
    source: str
    pattern: str


def ignored_entries(path: Path, leave_out: Sequence[str] = ()) -> list[Ignored]:
    """Every ignored file under ``path`` -- a wholly ignored directory as one
    entry -- with the rule that ignores it: two git calls.  ``leave_out``:
    files the caller does not want (the env file): no rule is asked for
    them, and when nothing else is ignored, no second call is made."""
    r = _execute(path, ["ls-files", "-z", "--others", "--ignored", "--directory", "--exclude-standard"])
    if r.returncode != 0:
        raise CommandError(r, os.fspath(path))
    entries: list[str] = []
    for name in (n for n in r.stdout.split("\0") if n):
        if not any(name.startswith(d) for d in entries if d.endswith("/")):
            entries.append(name)
    entries = [e for e in entries if e not in leave_out]
    if not entries:
        return []
    rules = _ignore_rules(path, entries)
    # a directory git lists whole because every file in it is ignored, by
    # rules for its files, not for it (``config/local.json``): its files, one by one
    whole = [e for e in entries if e.endswith("/") and e not in rules]
    if whole:
        r = _execute(path, ["ls-files", "-z", "--others", "--ignored", "--exclude-standard", "--", *(f":(literal){d}" for d in whole)])
        if r.returncode != 0:
            raise CommandError(r, os.fspath(path))
        inner = [n for n in r.stdout.split("\0") if n]
        rules.update(_ignore_rules(path, inner))
        entries = [e for e in entries if e not in whole] + inner
    return [Ignored(e, *rules.get(e, ("", ""))) for e in entries]


def _ignore_rules(path: Path, names: Sequence[str]) -> dict[str, tuple[str, str]]:
    """name -> (source, pattern) of the rule ignoring it, for those ``names`` a rule ignores."""
    if not names:
        return {}
    c = _execute(path, ["check-ignore", "-v", "-z", "--stdin"], input="\0".join(names) + "\0")
    if c.returncode not in (0, 1):
        raise CommandError(c, os.fspath(path))
    fields = c.stdout.split("\0")
    rules: dict[str, tuple[str, str]] = {}
    for i in range(0, len(fields) - 3, 4):
        source, _line, pattern, name = fields[i : i + 4]
        if pattern.startswith("!"):
            continue  # a negation: not what ignores it
        rules[name] = (source, pattern)
    return rules


def excludes_file(cwd: Path) -> str | None:
    """The ``core.excludesFile`` git uses in ``cwd`` (its default included), resolved."""
    r = _execute(cwd, ["config", "--path", "--get", "core.excludesFile"])
    value = r.stdout.strip() if r.returncode == 0 else ""
    if not value:
        base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
        value = os.path.join(base, "git", "ignore")
    return os.path.realpath(os.path.join(cwd, value))


def ahead_behind(cwd: Path, base: str, head: str) -> tuple[int, int]:
    r = _execute(cwd, ["rev-list", "--left-right", "--count", f"{base}...{head}"])
    if r.returncode != 0:
        return (0, 0)
    behind, ahead = (int(x) for x in r.stdout.split())
    return ahead, behind


def ahead_behind_of_branches(cwd: Path, base: str, branches: Sequence[str] | None = None) -> dict[str, tuple[int, int]] | None:
    """commit -> (ahead, behind) ``base`` (a commit id) of the tip of each of
    ``branches`` (short names; default every local branch), in ONE
    ``for-each-ref`` (issue 15: one ``rev-list`` per agent was most of the
    drift's cost).  None when this git has no ``%(ahead-behind)`` (before
    2.41): ask ``ahead_behind`` per commit then.  A commit none of them is
    at (a detached HEAD, another branch) is not in it."""
    patterns = [f"refs/heads/{b}" for b in dict.fromkeys(branches)] if branches is not None else ["refs/heads/"]
    if not patterns:
        return {}
    r = _execute(cwd, ["for-each-ref", f"--format=%(objectname) %(ahead-behind:{base})", "--", *patterns])
    if r.returncode != 0:
        return None
    found: dict[str, tuple[int, int]] = {}
    for line in r.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
            found[parts[0]] = (int(parts[1]), int(parts[2]))
    return found


def unique_commits(cwd: Path, base: str, head: str) -> list[str]:
    """Commits reachable from ``head`` but not from ``base`` (one line each)."""
    return [line for line in out(cwd, "log", "--format=%h %s", f"{base}..{head}").splitlines() if line]


SNAPSHOT_MESSAGE = "hybridiso: work saved before forced removal"


def snapshot_worktree(path: Path, extra_ignored: Sequence[str] = ()) -> str:
    """A commit of everything in the worktree, untracked files included, with HEAD
    as parent; the working tree, index and HEAD stay untouched.  Used to save
    work before a forced removal (docs/faults.md row 5)."""
    index = Path(out(path, "rev-parse", "--git-path", "index"))
    if not index.is_absolute():
        index = path / index
    tree = _write_tree(path, [], index, extra_ignored)
    head = resolve_commit(path, "HEAD")
    return commit_tree(path, tree, [head] if head else [], SNAPSHOT_MESSAGE)


def snapshot_directory(work_tree: Path, git_dir: Path, patterns: Sequence[str], parent: str | None, *, own_index: bool) -> str:
    """A commit (in ``git_dir``'s object store) of every file under
    ``work_tree`` that its ignore rules keep, plus the ignored ones matching
    ``patterns`` (gitignore syntax): the files of an environment whose own
    git link is broken (docs/faults.md row 24), read with a git dir we trust.  With a
    worktree's own admin dir (``own_index``), its index and HEAD make it an
    exact snapshot; with the repository's git dir, it starts from nothing."""
    prefix = [f"--git-dir={git_dir}", f"--work-tree={work_tree}"]
    index = git_dir / ("index" if own_index else f"hybridiso-no-index-{secrets.token_hex(4)}")
    precious: list[str] = []
    if patterns:
        with _pattern_file(git_dir, patterns) as pattern_file:
            r = _execute(work_tree, [*prefix, "ls-files", "-z", "--others", "--ignored", f"--exclude-from={pattern_file}"])
        if r.returncode != 0:
            raise CommandError(r, os.fspath(work_tree))
        precious = [p for p in r.stdout.split("\0") if p]
    tree = _write_tree(work_tree, prefix, index, precious)
    return commit_tree(work_tree, tree, [parent] if parent else [], SNAPSHOT_MESSAGE, prefix=prefix)


@contextlib.contextmanager
def _pattern_file(directory: Path, patterns: Sequence[str]) -> Iterator[Path]:
    path = directory / f"hybridiso-patterns-{os.getpid()}-{secrets.token_hex(4)}"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("\n".join(patterns) + "\n")
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def _write_tree(cwd: Path, prefix: list[str], index: Path, extra_ignored: Sequence[str]) -> str:
    """``git write-tree`` of ``index`` plus every change, through a temporary
    copy of the index (the real one is never touched)."""
    # unique per call: two threads (or processes) snapshotting at once never share one
    tmp_index = index.with_name(f"hybridiso-backup-index-{os.getpid()}-{secrets.token_hex(4)}")
    env = {"GIT_INDEX_FILE": str(tmp_index)}
    try:
        if index.is_file() and not index.is_symlink():
            tmp_index.write_bytes(index.read_bytes())
            # a file the agent edited under --skip-worktree/--assume-unchanged is saved too (attack11 #1)
            _clear_flags(cwd, prefix, env, index_flags(cwd, prefix=prefix, env=env))
        steps = [["add", "-A", "--", "."]]
        if extra_ignored:
            steps.append(["add", "-f", "--", *extra_ignored])
        steps.append(["write-tree"])
        for step in steps:
            r = _execute(cwd, [*prefix, *step], env=env)
            if r.returncode != 0:
                raise CommandError(r, os.fspath(cwd))
        return r.stdout.strip()
    finally:
        tmp_index.unlink(missing_ok=True)


_FALLBACK_IDENT = {
    "GIT_AUTHOR_NAME": "hybridiso",
    "GIT_AUTHOR_EMAIL": "hybridiso@localhost",
    "GIT_COMMITTER_NAME": "hybridiso",
    "GIT_COMMITTER_EMAIL": "hybridiso@localhost",
}


def commit_tree(cwd: Path, tree: str, parents: Sequence[str], message: str, *, prefix: Sequence[str] = ()) -> str:
    """``git commit-tree``; a machine without a git identity still gets its
    backup (git would refuse with "Please tell me who you are")."""
    args = [*prefix, "commit-tree", tree, *[a for p in parents for a in ("-p", p)], "-m", message]
    r = _execute(cwd, args)
    if r.returncode != 0 and ("tell me who you are" in r.stderr.lower() or "empty ident" in r.stderr):
        r = _execute(cwd, args, env=_FALLBACK_IDENT)
    if r.returncode != 0:
        raise CommandError(r, os.fspath(cwd))
    return r.stdout.strip()


# --- clones -----------------------------------------------------------------------


CLONE_HARDLINKED = "hard-linked"
CLONE_COPIED = "copied"
_CROSS_DEVICE_RE = re.compile(r"failed to create link .*(Invalid cross-device link|Operation not permitted)")


def clone_local(source: Path, dest: Path, origin_name: str, common_dir: Path) -> str:
    """A local clone, no checkout yet, no network; returns how its objects
    were made.  ``--local`` hard-links the object files, and then refuses to
    copy where it cannot link ("Invalid cross-device link": the workspace on
    another file system, or a bind mount between them, docs/faults.md row 36), so there
    it is ``--no-hardlinks``, which copies them: the clone is as independent,
    it only takes the space."""
    base = ["clone", "--no-checkout", "--origin", origin_name]
    if _same_filesystem(common_dir / "objects", dest.parent):
        r = _clone_retrying(source, dest, [*base, "--local", "--", str(source), str(dest)])
        if r.returncode == 0:
            return CLONE_HARDLINKED
        if not _CROSS_DEVICE_RE.search(r.stderr):
            raise CommandError(r, os.fspath(source))
        _clear_failed_clone(dest)
    r = _clone_retrying(source, dest, [*base, "--no-hardlinks", "--", str(source), str(dest)])
    if r.returncode != 0:
        raise CommandError(r, os.fspath(source))
    return CLONE_COPIED


# a loose object that vanished while git linked or copied it: the
# repository's own `git gc --auto` (detached after a commit) packed it meanwhile
_VANISHED_RE = re.compile(r"failed to (create link|copy file to) .*No such file or directory")


def _clone_retrying(source: Path, dest: Path, args: list[str]) -> Result:
    """A local clone copies the object files one by one; a gc packing them at
    the same time makes it fail: tried again, on a clean directory."""
    for attempt in range(3):
        r = _execute(source, args)
        if r.returncode == 0 or not _VANISHED_RE.search(r.stderr) or attempt == 2:
            return r
        _clear_failed_clone(dest)
        time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def _same_filesystem(a: Path, b: Path) -> bool:
    try:
        return os.stat(a).st_dev == os.stat(b).st_dev
    except OSError:
        return True  # let git try: it says what is wrong


def _clear_failed_clone(dest: Path) -> None:
    """git removes the clone it could not finish, except a directory that was
    there before (an empty one is allowed): empty it again for the retry."""
    import shutil

    if dest.is_dir() and not dest.is_symlink():
        for entry in list(dest.iterdir()):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()


def local_config_path(cwd: Path, key: str) -> str | None:
    """A path-valued key as the repository's own config sets it (``~``
    expanded by git), None when only the global/system config (or nothing)
    sets it."""
    r = _execute(cwd, ["config", "--local", "--type=path", "--get", "--", key])
    return r.stdout.strip() if r.returncode == 0 and r.stdout.strip() else None


def set_config(cwd: Path, key: str, value: str) -> None:
    run(cwd, "config", "--", key, value)


def remote_url(cwd: Path, name: str) -> str | None:
    r = _execute(cwd, ["remote", "get-url", "--", name])
    return r.stdout.strip() if r.returncode == 0 else None


def config_values(cwd: Path, key: str) -> list[str]:
    """Every value of ``key`` as written (no insteadOf rewriting); [] if unset."""
    r = _execute(cwd, ["config", "--get-all", "--", key])
    return r.stdout.splitlines() if r.returncode == 0 else []


def add_remote(cwd: Path, name: str, url: str, push_urls: Sequence[str] = ()) -> None:
    run(cwd, "remote", "add", "--", name, url)
    for push in push_urls:
        run(cwd, "config", "--add", f"remote.{name}.pushurl", push)


def checkout_new_branch(cwd: Path, branch: str, start: str) -> None:
    # -B: a fresh clone already has a local branch for the source's HEAD
    run(cwd, "checkout", "-q", "--no-track", "-B", branch, start)


def set_upstream(cwd: Path, branch: str, upstream: str) -> None:
    run(cwd, "branch", "-q", f"--set-upstream-to={upstream}", "--", branch)


def checkout(cwd: Path, branch: str) -> None:
    run(cwd, "checkout", "-q", branch)


def git_dir(cwd: Path) -> Path:
    p = Path(out(cwd, "rev-parse", "--git-dir"))
    return p if p.is_absolute() else (cwd / p).resolve()


def add_exclude(common_dir: Path, pattern: str) -> None:
    """Keep ``pattern`` out of ``git status`` in every worktree sharing this
    git dir.  ``info/exclude`` is never followed if it is a symlink or FIFO:
    that is an ``UnsafePath`` error naming it (docs/faults.md row 31)."""
    text = safe_files.read_text(common_dir, "info/exclude") or ""
    if pattern in text.splitlines():
        return
    fd = safe_files.open_regular(common_dir, "info/exclude", os.O_WRONLY | os.O_APPEND | os.O_CREAT, mode=0o644, dir_mode=0o755)
    try:
        os.write(fd, (("\n" if text and not text.endswith("\n") else "") + pattern + "\n").encode("utf-8"))
    finally:
        os.close(fd)


def check_ignored(cwd: Path, paths: Sequence[str]) -> set[str]:
    """The subset of ``paths`` that git ignores in ``cwd``."""
    if not paths:
        return set()
    r = _execute(cwd, ["check-ignore", "-z", "--stdin"], input="\0".join(paths) + "\0")
    if r.returncode not in (0, 1):
        raise CommandError(r, os.fspath(cwd))
    return {p for p in r.stdout.split("\0") if p}


def version() -> tuple[int, ...]:
    text = process.run(["git", "--version"], check=False).stdout
    m = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    return tuple(int(x) for x in m.groups() if x) if m else (0,)


# --- lifecycle: merge detection, upstreams, fetch, rebase (issue 5) ------------


def is_ancestor(cwd: Path, ancestor: str, descendant: str) -> bool:
    return _execute(cwd, ["merge-base", "--is-ancestor", ancestor, descendant]).returncode == 0


def merge_base(cwd: Path, a: str, b: str) -> str | None:
    r = _execute(cwd, ["merge-base", a, b])
    return r.stdout.strip() if r.returncode == 0 else None


def fork_point(cwd: Path, ref: str, commit: str) -> str | None:
    """``git merge-base --fork-point``: where ``commit``'s history left any
    value ``ref`` ever had (its reflog), so a base that was rewritten since
    still gives the old fork; None without a reflog that says."""
    r = _execute(cwd, ["merge-base", "--fork-point", ref, commit])
    return r.stdout.strip() if r.returncode == 0 and r.stdout.strip() else None


def operation_in_progress(cwd: Path) -> str | None:
    """A merge, rebase, cherry-pick, revert or bisect the user has under way
    in the worktree ``cwd`` (None when there is none)."""
    states = (
        ("MERGE_HEAD", "a merge"),
        ("rebase-merge", "a rebase"),
        ("rebase-apply", "a rebase or am"),
        ("CHERRY_PICK_HEAD", "a cherry-pick"),
        ("REVERT_HEAD", "a revert"),
        ("BISECT_LOG", "a bisect"),
    )
    args = [a for name, _ in states for a in ("--git-path", name)]
    paths = out(cwd, "rev-parse", *args).splitlines()  # one process for all of them
    for line, (_, what) in zip(paths, states, strict=False):
        p = Path(line)
        if (p if p.is_absolute() else Path(cwd) / p).exists():
            return what
    return None


def reset_keep(cwd: Path, commit: str) -> bool:
    """Move the checked-out branch of ``cwd`` to ``commit`` the way ``git reset
    --keep`` does: local changes are kept, and git refuses (False) when one of
    them would be overwritten."""
    return _execute(cwd, ["reset", "-q", "--keep", commit]).returncode == 0


def count_commits(cwd: Path, exclude: str, include: str) -> int:
    r = _execute(cwd, ["rev-list", "--count", f"{exclude}..{include}"])
    return int(r.stdout.strip()) if r.returncode == 0 else 0


def cherry_marks(cwd: Path, upstream: str, head: str) -> list[str]:
    """``git cherry``: '-' for each commit of ``head`` whose patch is already in
    ``upstream`` (a rebase merge), '+' for one that is not."""
    return [line[0] for line in out(cwd, "cherry", upstream, head).splitlines() if line[:1] in "+-"]


def merge_tree(cwd: Path, ours: str, theirs: str) -> str | None:
    """The tree a merge of ``theirs`` into ``ours`` would have, or None on a
    conflict (or a git older than 2.38 without ``merge-tree --write-tree``)."""
    r = _execute(cwd, ["merge-tree", "--write-tree", "--no-messages", ours, theirs])
    return r.stdout.split()[0] if r.returncode == 0 and r.stdout.strip() else None


def tree_of(cwd: Path, rev: str) -> str | None:
    r = _execute(cwd, ["rev-parse", "--verify", "-q", f"{rev}^{{tree}}"])
    return r.stdout.strip() if r.returncode == 0 else None


def squash_in(cwd: Path, fork: str, tip: str, base: str) -> bool:
    """True when one commit in ``fork..base`` carries exactly the combined
    change ``fork..tip`` (a squash merge), compared by ``git patch-id``."""
    diff = _execute(cwd, ["diff", "--binary", fork, tip])
    if diff.returncode != 0 or not diff.stdout:
        return False
    mine = _execute(cwd, ["patch-id", "--stable"], input=diff.stdout).stdout.split()
    if not mine:
        return False
    log = _execute(cwd, ["log", "-p", "--binary", "--no-merges", "--format=commit %H", f"{fork}..{base}"])
    theirs = _execute(cwd, ["patch-id", "--stable"], input=log.stdout).stdout
    return any(line.split()[0] == mine[0] for line in theirs.splitlines() if line.strip())


def has_object(cwd: Path, rev: str) -> bool:
    return _execute(cwd, ["cat-file", "-e", f"{rev}^{{commit}}"]).returncode == 0


def full_ref(cwd: Path, rev: str) -> str | None:
    """``main`` -> ``refs/heads/main``; None for a commit id or an unknown name.

    ``--verify``: without it rev-parse echoes ``--end-of-options`` as the first
    line of its answer, which hid every name (a clone's copy of base was then
    never updated by sync, and ``down`` counted base's commits as the agent's)."""
    r = _execute(cwd, ["rev-parse", "--verify", "-q", "--symbolic-full-name", "--end-of-options", rev])
    name = r.stdout.strip()
    return name if r.returncode == 0 and name.startswith("refs/") else None


@dataclass(frozen=True)
class Upstream:
    ref: str  # e.g. refs/remotes/origin/feature ('' when none is configured)
    remote: str  # e.g. origin
    merge: str  # e.g. refs/heads/feature (the branch name on the remote)
    gone: bool  # configured, but the remote-tracking ref is gone (fetch --prune)


def upstream(cwd: Path, branch: str) -> Upstream | None:
    """The upstream git configured for ``branch`` (``push -u``), if any."""
    fmt = "%(upstream)%00%(upstream:track)%00%(upstream:remotename)%00%(upstream:remoteref)"
    r = _execute(cwd, ["for-each-ref", f"--format={fmt}", f"refs/heads/{branch}"])
    parts = r.stdout.rstrip("\n").split("\0")
    if r.returncode != 0 or len(parts) < 4 or not (parts[0] or parts[2]):
        return None
    return Upstream(parts[0], parts[2], parts[3], "[gone]" in parts[1])


def refs_under(cwd: Path, *prefixes: str) -> list[tuple[str, str]]:
    """(ref, commit) of every ref under ``prefixes``, in one process."""
    text = run(cwd, "for-each-ref", "--format=%(refname)%00%(objectname)", *prefixes).stdout
    pairs = []
    for line in text.splitlines():
        ref, _, commit = line.partition("\0")
        if ref and commit:
            pairs.append((ref, commit))
    return pairs


def remote_names(cwd: Path) -> list[str]:
    return [line for line in out(cwd, "remote").splitlines() if line]


def has_refs_under(cwd: Path, prefix: str) -> bool:
    return bool(_execute(cwd, ["for-each-ref", "--count=1", "--format=%(refname)", prefix]).stdout.strip())


def fetch(cwd: Path, remote: str, *refspecs: str, prune: bool = False) -> None:
    args = ["fetch", "-q", "--no-tags"] + (["--prune"] if prune else []) + ["--", remote, *refspecs]
    run(cwd, *args)


def delete_ref_if(cwd: Path, ref: str, expected: str) -> bool:
    """Delete ``ref`` only if it still points at ``expected`` (no race with a
    commit made since we looked); returns whether it did."""
    return _execute(cwd, ["update-ref", "-d", ref, expected]).returncode == 0


@dataclass(frozen=True)
class RebaseResult:
    ok: bool
    conflicts: tuple[str, ...] = ()
    error: str = ""


def rebase(cwd: Path, onto: str, upstream: str | None = None) -> RebaseResult:
    """Rebase the checked-out branch onto ``onto``; with ``upstream``, only the
    commits after it (``git rebase --onto ONTO UPSTREAM``: what lay below
    ``upstream`` is left behind, docs/faults.md row 35).  On a conflict, abort (the
    branch and files are as before) and return the conflicting paths.  A rebase
    that cannot start because of a git lock is retried like ``run``."""
    args = ["-c", "core.editor=true", "rebase", "-q", "--no-autostash"]
    args += ["--onto", onto, upstream] if upstream is not None else [onto]
    delay = 0.05
    for attempt in range(LOCK_RETRIES + 1):
        r = _execute(cwd, args)
        if r.returncode == 0:
            return RebaseResult(True)
        if _rebase_in_progress(cwd):
            conflicts = tuple(p for p in out(cwd, "diff", "--name-only", "--diff-filter=U", "-z").split("\0") if p)
            run(cwd, "rebase", "--abort")
            return RebaseResult(False, conflicts, _last_line(r))
        m = _LOCK_RE.search(r.stderr)
        lock = _LOCK_PATH_RE.search(r.stderr)
        if m and lock:
            _raise_if_stale(Path(lock.group("path")), r)  # an old lock will not go away by waiting
        if not m or attempt == LOCK_RETRIES:
            return RebaseResult(False, error=_last_line(r))
        time.sleep(delay)
        delay = min(delay * 2, 1.0)
    raise AssertionError("unreachable")


def _rebase_in_progress(cwd: Path) -> bool:
    for name in ("rebase-merge", "rebase-apply"):
        p = Path(out(cwd, "rev-parse", "--git-path", name))
        if (p if p.is_absolute() else Path(cwd) / p).exists():
            return True
    return False


def _last_line(r: Result) -> str:
    text = (r.stderr or r.stdout).strip()
    return text.splitlines()[-1] if text else f"exit {r.returncode}"


def ff_merge(cwd: Path, target: str) -> bool:
    """Fast-forward the checked-out branch in ``cwd`` to ``target``; git keeps
    local changes safe (it refuses when they would be overwritten)."""
    return _execute(cwd, ["merge", "-q", "--ff-only", target]).returncode == 0


def branch_created_at(cwd: Path, branch: str) -> str | None:
    """The commit ``branch`` was created at, from its reflog (None when the
    reflog is gone or expired)."""
    r = _execute(cwd, ["log", "-g", "--format=%H", f"refs/heads/{branch}", "--"])
    lines = r.stdout.split()
    return lines[-1] if r.returncode == 0 and lines else None


def changed_paths(cwd: Path, a: str, b: str) -> set[str]:
    """Paths whose content differs between commits ``a`` and ``b``."""
    r = _execute(cwd, ["diff", "--name-only", "--no-renames", "-z", a, b])
    return {p for p in r.stdout.split("\0") if p} if r.returncode == 0 else set()


def changed_and_added(cwd: Path, a: str, b: str) -> tuple[set[str], set[str]]:
    """(paths whose content differs between commits ``a`` and ``b``, those of
    them that ``a`` has no file at): one ``diff --name-status``."""
    r = _execute(cwd, ["diff", "--name-status", "--no-renames", "-z", a, b])
    if r.returncode != 0:
        return set(), set()
    parts = r.stdout.split("\0")
    changed, added = set(), set()
    for status, path in zip(parts[0::2], parts[1::2], strict=False):  # a trailing "" after the last NUL
        if path:
            changed.add(path)
            if status.startswith("A"):
                added.add(path)
    return changed, added


# --- work inventory and backups (issue 11, docs/faults.md rows 23-27) ---------------------


@dataclass(frozen=True)
class RefEntry:
    name: str  # full name, e.g. refs/heads/side
    oid: str  # what the ref points at (a tag object for an annotated tag)
    commit: str | None  # the commit it peels to (None: a ref to a tree or blob)


def list_refs(cwd: Path, *patterns: str) -> list[RefEntry]:
    """Every ref (or those under ``patterns``) in one ``for-each-ref``."""
    fmt = "%(refname)%00%(objectname)%00%(objecttype)%00%(*objectname)%00%(*objecttype)"
    r = _execute(cwd, ["for-each-ref", f"--format={fmt}", *patterns])
    if r.returncode != 0:
        raise CommandError(r, os.fspath(cwd))
    refs = []
    for line in r.stdout.splitlines():
        parts = line.split("\0")
        if len(parts) != 5:
            continue
        name, oid, kind, peeled, peeled_kind = parts
        commit = oid if kind == "commit" else peeled if peeled_kind == "commit" else None
        refs.append(RefEntry(name, oid, commit))
    return refs


@dataclass(frozen=True)
class GitLocation:
    """Where git finds an environment's repository: ``toplevel`` is None when
    it cannot read it, and ``why`` says what git said."""

    toplevel: Path | None
    git_dir: Path | None
    why: str = ""


def locate(path: Path) -> GitLocation:
    """The repository git sees at ``path`` itself, never one above it
    (``GIT_CEILING_DIRECTORIES``): an environment whose ``.git`` was removed
    must not be read as the directory that holds the workspace."""
    env = {"GIT_CEILING_DIRECTORIES": os.fspath(Path(path).parent)}
    r = _execute(path, ["rev-parse", "--show-toplevel", "--absolute-git-dir"], env=env)
    lines = r.stdout.splitlines()
    if r.returncode != 0 or len(lines) < 2:
        text = (r.stderr or r.stdout).strip().splitlines()
        return GitLocation(None, None, text[-1].removeprefix("fatal: ") if text else f"git exit {r.returncode}")
    return GitLocation(Path(lines[0]), Path(lines[1]))


@dataclass(frozen=True)
class LinkedWorktree:
    """One entry ``worktrees/<id>`` of a repository's common dir."""

    admin: Path  # the entry itself (its HEAD, logs/HEAD, index)
    path: Path | None  # the worktree its ``gitdir`` file names (None: no readable gitdir file)
    locked: bool  # ``git worktree lock``: git keeps it even when its path is gone


def linked_worktrees(common_dir: Path) -> list[LinkedWorktree]:
    """Every linked worktree entry of ``common_dir``, read from the admin
    side (plain directories only; a ``gitdir`` that is a regular file)."""
    found: list[LinkedWorktree] = []
    try:
        entries = sorted(os.scandir(Path(common_dir) / "worktrees"), key=lambda e: e.name)
    except OSError:
        return found
    for entry in entries:
        if not entry.is_dir(follow_symlinks=False):
            continue
        admin = Path(entry.path)
        gitdir = admin / "gitdir"
        named: Path | None = None
        try:
            if gitdir.is_file() and not gitdir.is_symlink() and gitdir.stat().st_size <= 4096:
                target = gitdir.read_text(encoding="utf-8", errors="replace").strip()
                if target:
                    named = Path(target)
                    if not named.is_absolute():  # worktree.useRelativePaths (git >= 2.48): relative to the entry
                        named = admin / named
                    named = Path(os.path.normpath(named)).parent
        except OSError:
            named = None
        found.append(LinkedWorktree(admin, named, os.path.lexists(admin / "locked")))
    return found


def worktree_admin_dirs(common_dir: Path) -> dict[str, list[Path]]:
    """``<worktree path>/.git`` -> the admin dirs ``worktrees/<id>`` naming
    it, read from the admin side (each ``gitdir`` file), so a worktree whose
    own ``.git`` file is gone or garbage is still found.  One scan for every
    worktree; only plain directories and regular files count (a symlink
    planted there is not ours), and a path's parent is resolved, never a
    ``.git`` symlink.  git writes one entry per path: two mean an edited
    ``gitdir`` (worktree_admin_dir refuses them)."""
    return {k: list(v) for k, v in _admin_dirs(common_dir).items()}


def _admin_dirs(common_dir: Path) -> dict[str, list[Path]]:
    """``worktree_admin_dirs``, scanned once per ``one_admin_scan`` scope
    (shared: not for the caller to change)."""
    key = os.fspath(common_dir)
    with _cache_lock:
        cached, generation, scoped = _admin_cache.get(key), _generation, _admin_scopes > 0
    if cached is not None:
        return cached
    found: dict[str, list[Path]] = {}
    for wt in linked_worktrees(common_dir):
        if wt.path is not None:
            found.setdefault(_own_dotgit(wt.path), []).append(wt.admin)
    if scoped:
        _keep(_admin_cache, key, found, generation)
    return found


@contextlib.contextmanager
def one_admin_scan() -> Iterator[None]:
    """Within it, every ``worktree_admin_dir`` question is answered from one
    scan of ``worktrees/*/gitdir`` (issue 15: ``status`` and ``up`` asked it
    once per agent, each a scan of every agent's entry).  A command that
    reads, as those two do, opts in; outside, each question scans afresh.
    A worktree added or removed by this process clears it, like the listing."""
    global _admin_scopes
    with _cache_lock:
        _admin_scopes += 1
    try:
        yield
    finally:
        with _cache_lock:
            _admin_scopes -= 1
            if _admin_scopes == 0:
                _admin_cache.clear()


def _own_dotgit(worktree: Path) -> str:
    return os.path.join(os.path.realpath(worktree), ".git")


class AmbiguousWorktree(UserError):
    """Two worktree entries name one path: removing either would be a guess."""


def worktree_admin_dir(common_dir: Path, env: Path, dirs: dict[str, list[Path]] | None = None) -> Path | None:
    """The admin dir of the linked worktree at ``env`` (``dirs``: a scan
    made before, for many lookups).  Two entries naming it (an edited
    ``gitdir`` file: git never writes that) are refused before anything is
    read or saved, so a user's worktree is never taken for an agent's."""
    entries = (dirs if dirs is not None else _admin_dirs(common_dir)).get(_own_dotgit(env), [])
    if len(entries) > 1:
        raise ambiguous_worktree(env, entries)
    return entries[0] if entries else None


def ambiguous_worktree(path: Path, entries: Sequence[Path]) -> AmbiguousWorktree:
    shown = ", ".join(str(e / "gitdir") for e in entries)
    return AmbiguousWorktree(
        f"{len(entries)} worktree entries name {path} ({shown}); hybridiso will not guess which one is its own",
        hint="one of those files was edited: make it name its own worktree again, then run the command again",
    )


def head_of(git_dir: Path) -> tuple[str | None, str | None]:
    """(commit, full ref name or None when detached) of ``git_dir``'s HEAD,
    in one ``rev-parse`` (two when the branch has no commit yet)."""
    r = _execute(git_dir, [f"--git-dir={git_dir}", "rev-parse", "HEAD", "--symbolic-full-name", "HEAD"])
    lines = r.stdout.split()
    if r.returncode == 0 and len(lines) == 2:
        return lines[0], lines[1] if lines[1].startswith("refs/") else None
    s = _execute(git_dir, [f"--git-dir={git_dir}", "symbolic-ref", "-q", "HEAD"])
    return None, (s.stdout.strip() or None) if s.returncode == 0 else None


@dataclass(frozen=True)
class ReflogEntry:
    commit: str
    selector: str  # e.g. stash@{0}, HEAD@{3}
    subject: str  # the reflog message ("commit: ...", "WIP on main: ...")
    parents: tuple[str, ...] = ()


def reflog(git_dir: Path, ref: str = "HEAD") -> list[ReflogEntry]:
    """Every entry of ``ref``'s reflog, newest first ([] when it has none);
    entries whose commit is gone are skipped by git itself."""
    fmt = "--format=%H%x00%gd%x00%gs%x00%P"
    r = _execute(git_dir, [f"--git-dir={git_dir}", "log", "-g", "--no-show-signature", fmt, ref, "--"])
    if r.returncode != 0:
        return []
    entries = []
    for line in r.stdout.splitlines():
        parts = line.split("\0")
        if len(parts) == 4:
            entries.append(ReflogEntry(parts[0], parts[1], parts[2], tuple(parts[3].split())))
    return entries


def head_and_branch_reflogs(git_dir: Path, *branches: str) -> tuple[list[ReflogEntry], list[str]]:
    """(HEAD's reflog, newest first; the commits the reflogs of ``branches``
    -- full names, or ``--branches`` -- ever recorded), in one ``log -g``.
    A branch is never named HEAD, so the selector tells them apart."""
    fmt = "--format=%H%x00%gD%x00%gs%x00%P"
    r = _execute(git_dir, [f"--git-dir={git_dir}", "log", "-g", "--no-show-signature", fmt, "HEAD", *branches, "--"])
    head: list[ReflogEntry] = []
    others: list[str] = []
    for line in r.stdout.splitlines() if r.returncode == 0 else []:
        parts = line.split("\0")
        if len(parts) != 4:
            continue
        if parts[1].startswith("HEAD@{"):
            head.append(ReflogEntry(parts[0], parts[1], parts[2], tuple(parts[3].split())))
        else:
            others.append(parts[0])
    return head, list(dict.fromkeys(others))


@dataclass(frozen=True)
class CommitInfo:
    parents: tuple[str, ...]
    subject: str


def commits_not_in(cwd: Path, tips: Sequence[str], exclude: Sequence[str], *, git_dir: Path | None = None) -> dict[str, CommitInfo]:
    """Commits reachable from ``tips`` but from none of ``exclude``, with
    their parents and subjects: ONE ``rev-list`` however many tips and refs
    (ids read from stdin; ones this object store lacks are skipped)."""
    if not tips:
        return {}
    prefix = [f"--git-dir={git_dir}"] if git_dir is not None else []
    # ``^ID`` lines, not ``--not``: git before 2.42 (Debian 12 has 2.39)
    # dies on any option in --stdin mode
    stdin = "\n".join([*dict.fromkeys(tips), *(f"^{e}" for e in dict.fromkeys(exclude))]) + "\n"
    r = _execute(cwd, [*prefix, "rev-list", "--ignore-missing", "--stdin", "--parents", "--format=%x00%s"], input=stdin)
    if r.returncode != 0:
        raise CommandError(r, os.fspath(cwd))
    found: dict[str, CommitInfo] = {}
    current: list[str] = []
    for line in r.stdout.splitlines():
        if line.startswith("commit "):
            current = line.split()[1:]
        elif line.startswith("\0") and current:
            found[current[0]] = CommitInfo(tuple(current[1:]), line[1:])
    return found


def existing_commits(cwd: Path, oids: Sequence[str]) -> set[str]:
    """The subset of ``oids`` that are commits in ``cwd``'s object store."""
    if not oids:
        return set()
    r = _execute(cwd, ["cat-file", "--batch-check=%(objectname) %(objecttype)"], input="\n".join(oids) + "\n")
    return {parts[0] for parts in (line.split() for line in r.stdout.splitlines()) if len(parts) == 2 and parts[1] == "commit"}


def gitlinks(cwd: Path) -> list[tuple[str, str]]:
    """(path, commit) of every submodule the index of ``cwd`` records."""
    r = _execute(cwd, ["ls-files", "--stage", "-z"])
    if r.returncode != 0:
        return []
    links = []
    for item in r.stdout.split("\0"):
        meta, _, name = item.partition("\t")
        fields = meta.split()
        if len(fields) == 3 and fields[0] == "160000":
            links.append((name, fields[1]))
    return links


def blob_ids(cwd: Path, paths: Sequence[str]) -> dict[str, str]:
    """path -> the blob id its content would get (``git hash-object``)."""
    if not paths:
        return {}
    r = _execute(cwd, ["hash-object", "--no-filters", "--stdin-paths"], input="\n".join(paths) + "\n")
    ids = r.stdout.split()
    return dict(zip(paths, ids, strict=True)) if r.returncode == 0 and len(ids) == len(paths) else {}


def blob_head(cwd: Path, oid: str, size: int) -> bytes | None:
    """The first ``size`` bytes of blob ``oid`` (None when git cannot read
    it): bytes, unlike every other call here, for comparing file content."""
    try:
        proc = subprocess.run(
            ["git", "cat-file", "blob", oid], check=False, cwd=cwd, env=process.no_git_env(), capture_output=True, stdin=subprocess.DEVNULL, timeout=120
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout[:size] if proc.returncode == 0 else None


def tree_blobs(cwd: Path, rev: str) -> dict[str, str]:
    """path -> blob id of every file in ``rev``'s tree."""
    return _blobs(_execute(cwd, ["ls-tree", "-r", "-z", "--full-tree", rev]))


def tree_blobs_at(cwd: Path, rev: str, paths: Sequence[str]) -> dict[str, str]:
    """path -> blob id in ``rev`` of each of ``paths`` it has (nothing when git cannot read ``rev``)."""
    if not paths:
        return {}
    return _blobs(_execute(cwd, ["ls-tree", "-z", "--full-tree", rev, "--", *paths]))


def _blobs(r: Result) -> dict[str, str]:
    """path -> blob id of the files ``ls-tree -z`` listed (nothing when it failed)."""
    blobs = {}
    for item in r.stdout.split("\0") if r.returncode == 0 else []:
        meta, _, name = item.partition("\t")
        fields = meta.split()
        if len(fields) == 3 and fields[1] == "blob":
            blobs[name] = fields[2]
    return blobs


def push_new_refs(source: Path, dest: Path, refs: dict[str, str]) -> None:
    """Copy the objects behind ``refs`` (ref -> object id in ``source``)
    into ``dest`` as those refs, each created only if it does not exist
    (``--force-with-lease=REF:`` with nothing expected) and all or none
    (``--atomic``).  ``source``'s config may not widen the push (tags,
    submodules, signing) and its hooks never run (``--no-verify``)."""
    if not refs:
        return
    leases = [f"--force-with-lease={ref}:" for ref in refs]
    specs = [f"{oid}:{ref}" for ref, oid in refs.items()]
    run(
        source, "push", "-q", "--no-verify", "--atomic", "--no-follow-tags", "--recurse-submodules=no", "--no-signed",
        *leases, "--", os.fspath(dest), *specs,
    )


def create_refs(cwd: Path, creates: dict[str, str], deletes: dict[str, str] | None = None) -> str | None:
    """Create every ref in ``creates`` (ref -> object id) and delete those in
    ``deletes`` (ref -> expected id), in ONE transaction: all or none, and a
    ref that already exists is never overwritten.  Returns git's complaint
    when it refused (None when done)."""
    lines = [f"create {ref} {oid}" for ref, oid in creates.items()]
    lines += [f"delete {ref} {oid}" for ref, oid in (deletes or {}).items()]
    r = _execute(cwd, ["update-ref", "--stdin"], input="\n".join(lines) + "\n")
    if r.returncode == 0:
        return None
    text = (r.stderr or r.stdout).strip().splitlines()
    lock = next((m for m in map(_LOCK_PATH_RE.search, text) if m), None)
    if lock is not None:
        # git's last line says only "remove the file manually": name the file
        return f"{lock.group('path')} exists (another git running, or one killed): if no git is running, remove it"
    return text[-1].removeprefix("fatal: ") if text else f"git update-ref exit {r.returncode}"


# --- a container agent's own repository (strategies/container.py, containers/git_dir.py) -----


def fetch_from_shadow(root: Path, shadow: Path, prefix: str) -> None:
    """Every ref of ``shadow`` (a repository hybridiso wrote: its own config,
    refs it read as data, objects through alternates it checked) into
    ``prefix`` of the repository at ``root``; refs gone there are pruned.
    Objects are checked (``fetch.fsckObjects``) as they come in."""
    run(
        root, *UNTRUSTED_CONFIG, "-c", "fetch.fsckObjects=true", "-c", "gc.auto=0", "-c", "maintenance.auto=false",
        "fetch", "-q", "--prune", "--no-tags", "--no-write-fetch-head", "--no-recurse-submodules",
        str(shadow), f"+refs/*:{prefix}*",
    )


def move_ref(cwd: Path, ref: str, new: str, old: str | None, message: str) -> bool:
    """``ref`` from ``old`` (None: whatever it is) to ``new``; False when it
    was not at ``old`` any more (someone else moved it)."""
    args = ["update-ref", "-m", message, ref, new] + ([old] if old else [])
    if _execute(cwd, args).returncode != 0:
        return False
    _forget_worktrees()  # a branch a worktree has checked out moved: its listed HEAD did
    return True


def reset_index(path: Path) -> None:
    """The index of the work tree ``path`` made HEAD's again, files untouched
    (``git reset -q``, mixed): what differs shows as unstaged."""
    run(path, "reset", "-q", "--no-refresh")


def delete_refs_under(cwd: Path, prefix: str) -> None:
    refs = list_refs(cwd, prefix)
    if refs:
        create_refs(cwd, {}, {r.name: r.oid for r in refs})


# --- many environments at once (issue 15: down, gc and sync at scale) -------------
#
# What the functions above ask per environment, asked once for all of them
# from the main repository.  Each answers None when git refuses any part
# (an unborn branch, a garbage HEAD, a missing reflog): the caller then asks
# one by one, as before, so a batch never changes an answer.

# worktree ids git makes (a sanitised basename); anything else is asked one by one
_BATCH_ID_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*")


def batchable_worktree_id(ident: str) -> bool:
    """An id that ``worktrees/<id>/HEAD`` names as a ref and nothing else
    (no ``^``, ``:``, ``..``, ``@{``, no ``.lock``)."""
    return bool(_BATCH_ID_RE.fullmatch(ident)) and not ident.endswith(".lock")


def worktree_heads(root: Path, ids: Sequence[str]) -> dict[str, tuple[str | None, str | None]] | None:
    """``head_of`` of ``common/worktrees/<id>`` for every id, in ONE
    ``rev-parse`` run in the main repository (``worktrees/<id>/HEAD``)."""
    ids = list(dict.fromkeys(ids))
    if not ids:
        return {}
    if not all(batchable_worktree_id(i) for i in ids):
        return None
    refs = [f"worktrees/{i}/HEAD" for i in ids]
    r = _execute(root, ["rev-parse", *refs, "--symbolic-full-name", *refs])
    lines = r.stdout.split()
    if r.returncode != 0 or len(lines) != 2 * len(ids):
        return None
    return {i: (lines[n], lines[len(ids) + n] if lines[len(ids) + n].startswith("refs/") else None) for n, i in enumerate(ids)}


@dataclass(frozen=True)
class Reflogs:
    """What ``head_and_branch_reflogs`` says, for many worktrees and branches."""

    heads: dict[str, list[ReflogEntry]]  # worktree id -> its HEAD reflog, newest first (HEAD@{n})
    branches: dict[str, list[str]]  # full branch name -> the commits its reflog recorded


def worktree_reflogs(root: Path, ids: Sequence[str], branches: Sequence[str]) -> Reflogs | None:
    """The HEAD reflog of each linked worktree ``ids`` and the reflogs of
    ``branches`` (full names), in ONE ``log -g`` in the main repository."""
    ids, branches = list(dict.fromkeys(ids)), list(dict.fromkeys(branches))
    if not all(batchable_worktree_id(i) for i in ids) or not all(b.startswith("refs/heads/") for b in branches):
        return None
    found = Reflogs({i: [] for i in ids}, {b: [] for b in branches})
    names = [f"worktrees/{i}/HEAD" for i in ids] + branches
    if not names:
        return found
    fmt = "--format=%H%x00%gD%x00%gs%x00%P"
    r = _execute(root, ["log", "-g", "--no-show-signature", fmt, *names, "--"])
    if r.returncode != 0:
        return None
    for line in r.stdout.splitlines():
        parts = line.split("\0")
        if len(parts) != 4:
            continue
        ref, at, count = parts[1].rpartition("@{")
        if not at:
            return None
        if ref.startswith("worktrees/") and ref.endswith("/HEAD"):
            entries = found.heads.get(ref.removeprefix("worktrees/").removesuffix("/HEAD"))
            if entries is None:
                return None
            entries.append(ReflogEntry(parts[0], f"HEAD@{{{count}", parts[2], tuple(parts[3].split())))
        elif ref in found.branches:
            found.branches[ref].append(parts[0])
        else:
            return None  # a name git spelled otherwise: ask one by one
    return Reflogs(found.heads, {b: list(dict.fromkeys(c)) for b, c in found.branches.items()})


def no_per_worktree_refs(admin: Path, common_dir: Path) -> bool:
    """True when the linked worktree whose admin dir is ``admin`` provably
    has no refs of its own (``refs/worktree/``, ``refs/bisect/``,
    ``refs/rewritten/``): the files backend keeps them loose under
    ``admin/refs/`` and never packs them.  A reftable repository, or
    anything at all under ``admin/refs/`` but directories, is no proof."""
    if os.path.lexists(common_dir / "reftable") or os.path.lexists(admin / "reftable"):
        return False
    top = admin / "refs"
    try:
        st = os.lstat(top)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    if not stat.S_ISDIR(st.st_mode):
        return False
    for here, dirs, files in os.walk(top):
        if files or any(os.path.islink(os.path.join(here, d)) for d in dirs):
            return False
    return True


def upstreams(cwd: Path) -> dict[str, Upstream]:
    """``upstream`` of every local branch that has one, in ONE ``for-each-ref``."""
    fmt = "%(refname)%00%(upstream)%00%(upstream:track)%00%(upstream:remotename)%00%(upstream:remoteref)"
    r = _execute(cwd, ["for-each-ref", f"--format={fmt}", "refs/heads/"])
    if r.returncode != 0:
        raise CommandError(r, os.fspath(cwd))
    found = {}
    for line in r.stdout.splitlines():
        parts = line.split("\0")
        if len(parts) != 5 or not (parts[1] or parts[3]):
            continue
        found[parts[0].removeprefix("refs/heads/")] = Upstream(parts[1], parts[3], parts[4], "[gone]" in parts[2])
    return found


def delete_refs_if(cwd: Path, refs: dict[str, str]) -> bool:
    """``delete_ref_if`` for every ref -> expected commit, in ONE
    transaction (``update-ref --stdin``): all are deleted, or, when any moved
    since it was judged, none (the caller then deletes them one by one)."""
    if not refs:
        return True
    stdin = "".join(f"delete {ref}\0{old}\0" for ref, old in refs.items())
    return _execute(cwd, ["update-ref", "-z", "--stdin"], input=stdin).returncode == 0
