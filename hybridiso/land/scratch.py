"""The scratch worktrees of one ``land`` run, reused from candidate to candidate.

A new worktree per candidate (``worktree add``, a checkout of the whole tree,
``worktree remove``) was most of land's own cost on a disk
(docs/benchmarks.md, land section).  So a run keeps the scratch worktrees it
made (one per check running at once) and moves an idle one to the next
candidate's commit, which rewrites only the files that differ.  What makes
that safe is what a reused scratch must be before anything runs in it again,
checked each time it is taken (``_reusable``, then ``_reset``):

- still what land made: a directory itself directly in ``scratch/``, a
  registered worktree at that path, its ``.git`` naming that record, its
  HEAD detached (git.not_scratch_worktree; docs/faults.md rows 28, 41); a
  check that changed its ``.git`` link or checked out a branch there makes
  it not land's any more: it is never run in, and removed only if it still
  is land's (else left and said, as before);
- its own git metadata holds nothing but what git keeps for a detached
  worktree (HEAD, ORIG_HEAD, index, logs/HEAD, ..., each a regular file;
  ``commondir`` naming this repository): no rebase, merge or
  bisect in progress, no per-worktree config (``config.worktree`` could name
  hooks or an fsmonitor), no per-worktree refs, no submodule repositories;
- no index entry with ``--assume-unchanged`` or ``--skip-worktree``
  (``reset --hard`` keeps those files as the check left them);
- then ``reset --hard COMMIT``; and when ``status --ignored`` had found
  anything before it, ``clean -ffdx`` (untracked and ignored files, nested
  repositories, what the check added to the index) and a second ``status
  --ignored`` that must find nothing.

Anything else, or any step failing, and the scratch is removed (only if it
is still land's) and a new one made: reuse saves time, never a check.  The
git commands land runs in a scratch worktree run with hooks, fsmonitor and
submodule recursion off (git.distrust): what a check wrote into the
repository's hooks never runs from land's own checkouts.  A scratch a
container check had (its files handed to the agent's uid, written from
inside) is never reused.  Every scratch stays in ``scratch/`` while the run
has it, so after a ``kill -9`` the next ``land`` or ``gc`` finds it as before.
"""
from __future__ import annotations

import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path

from hybridiso import git, safe_files
from hybridiso.errors import UserError
from hybridiso.land import apply as applying
from hybridiso.process import CommandError

# what git keeps in a detached worktree's metadata dir after land's own
# commands (worktree add, reset, rebase, merge, commit); anything else was
# put there by someone else (a check), or is an operation in progress
_GIT_OWN = frozenset({"HEAD", "ORIG_HEAD", "AUTO_MERGE", "commondir", "gitdir", "index", "logs", "refs"})


class Scratches:
    """The scratch worktrees of a run: ``take`` one at a commit, ``give_back``
    it when its candidate is done with it, ``close`` at the end of the run."""

    def __init__(self, repo: Path, common_dir: Path, parent: Path, warn: Callable[[str], None]) -> None:
        self.repo = repo
        self.common_dir = common_dir
        self.parent = parent
        self.warn = warn
        self._idle: list[Path] = []
        self._lent: set[Path] = set()
        self._tainted: set[Path] = set()
        self._lock = threading.Lock()
        self.made = 0  # new scratch worktrees this run (the benchmark and tests read it)
        self.reused = 0
        git.distrust(parent)  # land's git in a scratch never runs a hook or fsmonitor a check planted

    def take(self, agent: str, commit: str) -> Path:
        """A scratch worktree, clean, its detached HEAD and files at ``commit``."""
        while True:
            with self._lock:
                path = self._idle.pop() if self._idle else None
            if path is None:
                break
            why = self._reusable(path) or self._reset(path, commit)
            if not why:
                with self._lock:
                    self._lent.add(path)
                self.reused += 1
                return path
            self._remove(path)
        path = applying.new_scratch(self.parent, agent)
        with self._lock:
            self._lent.add(path)  # before it exists: a failure half way is removed like any
        git.worktree_add_detached(self.repo, path, commit)
        self.made += 1
        return path

    def taint(self, path: Path) -> None:
        """``path`` is not to be reused (a container check had it)."""
        with self._lock:
            self._tainted.add(path)

    def give_back(self, path: Path) -> None:
        """The candidate is done with ``path``: kept for the next one (made
        clean when taken) or removed.  Giving back twice, or a path not
        lent, does nothing."""
        with self._lock:
            if path not in self._lent:
                return
            self._lent.discard(path)
            tainted = path in self._tainted
            self._tainted.discard(path)
            if not tainted:
                self._idle.append(path)
                return
        self._remove(path)

    def disown(self, path: Path) -> None:
        """``path`` left the run (--keep-failed moved it to kept/)."""
        with self._lock:
            self._lent.discard(path)
            self._tainted.discard(path)

    def remove(self, path: Path) -> None:
        """Remove ``path`` now (not given back)."""
        self.disown(path)
        self._remove(path)

    def close(self) -> None:
        """The run is over: every scratch it has goes."""
        with self._lock:
            paths = [*self._idle, *self._lent]
            self._idle.clear()
            self._lent.clear()
            self._tainted.clear()
        for path in paths:
            self._remove(path)

    # --- reuse ------------------------------------------------------------------

    def _remove(self, path: Path) -> None:
        left = applying.remove_scratch(self.repo, self.common_dir, self.parent, path)
        if left:
            self.warn(left)

    def _reusable(self, path: Path) -> str:
        """Why ``path`` cannot be moved to another commit ('' when it can);
        nothing in it is run or followed (lstat and small reads only)."""
        why = git.not_scratch_worktree(self.common_dir, self.parent, path)
        if why:
            return why
        entry = git.worktree_entry(self.common_dir, path)
        if entry is None:
            return f"{path} has no worktree record"
        try:
            names = set(os.listdir(entry))
        except OSError as e:
            return f"its metadata {entry} cannot be read ({e.strerror})"
        extra = names - _GIT_OWN
        if extra:
            return f"its metadata holds {', '.join(sorted(extra))}"
        for name in sorted(names - {"logs", "refs"}):  # git's files are regular files: never a FIFO git would block on, nor a symlink
            if not _regular(entry / name):
                return f"its metadata's {name} is not a regular file"
        try:
            common = (safe_files.read_text(entry, "commondir", limit=4096) or "").strip()
        except (OSError, UserError):
            common = ""
        if not common or os.path.realpath(entry / common) != os.path.realpath(self.common_dir):
            return "its metadata's commondir does not name this repository"  # git would work in another repository's objects and refs
        for sub, allowed in (("logs", {"HEAD"}), ("refs", set())):
            if sub not in names:
                continue
            if not safe_files.is_plain_dir(entry / sub):
                return f"its metadata's {sub} is not a directory"
            try:
                inside = set(os.listdir(entry / sub))
            except OSError as e:
                return f"its metadata's {sub} cannot be read ({e.strerror})"
            if inside - allowed:
                return f"its metadata's {sub} holds {', '.join(sorted(inside - allowed))}"
            if not all(_regular(entry / sub / n) for n in inside):
                return f"its metadata's {sub} holds what is not a regular file"
        return ""

    def _reset(self, path: Path, commit: str) -> str:
        """Move the scratch's detached HEAD, index and files to ``commit``
        and remove everything untracked or ignored; why it could not (''
        when it is clean at ``commit`` now).  When the first look finds no
        change, untracked or ignored file, ``reset --hard`` alone gives
        exactly ``commit``; else ``clean -ffdx`` after it, and a second look
        must find nothing."""
        try:
            if git.index_flags(path):
                return "its index has files git is told not to look at"
            left = self._left(path)
            r = git.run(path, "reset", "-q", "--hard", "--no-recurse-submodules", commit, check=False)
            if r.returncode != 0:
                return f"reset failed: {(r.stderr or r.stdout).strip()[:200]}"
            if left:  # after the reset: what the check added to the index is untracked now
                r = git.run(path, "clean", "-ffdxq", check=False)
                if r.returncode != 0:
                    return f"clean failed: {(r.stderr or r.stdout).strip()[:200]}"
                left = self._left(path)
        except CommandError as e:
            return f"git failed there: {e.result.stderr.strip()[:200]}"
        if left:
            return f"files are left after cleaning: {', '.join(left[:5])}"
        return ""

    def _left(self, path: Path) -> list[str]:
        """Every changed, untracked or ignored file (no cache or stat
        shortcut consulted; nested repositories are untracked directories)."""
        r = git.run(path, "-c", "core.untrackedCache=false", "-c", "core.ignoreStat=false", "status", "--porcelain=v1", "-z",
                    "--untracked-files=all", "--ignored=matching", "--ignore-submodules=all", "--no-renames")
        return [p[3:] for p in r.stdout.split("\0") if p]


def _regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False
