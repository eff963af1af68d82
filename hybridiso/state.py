"""State under ``$(git rev-parse --git-common-dir)/hybridiso/``: shared by every
worktree of the repository and never committed.

- ``state.json``: one record per agent, written atomically (temp file +
  ``os.replace``).  A record is created with phase ``creating`` *before* any
  work starts, so it doubles as the journal: an interrupted ``up`` leaves a
  ``creating`` record that the next ``up`` rolls back; ``ready`` is written last
  (nothing is marked done before it is).
- ``lock``: one lock per repository (``flock``), held while the state
  changes; a second run says whose it waits for (docs/faults.md row 10).
  ``up`` lets it go for its long steps (``StateStore.unlocked``), holding
  ``agents/<name>.lock`` for each agent it works on (``StateStore.claim``):
  the kernel's lock, so a killed run lets go of it whatever a file says.
  Saves in between merge that run's records into the file as it is.
- A corrupt or missing state file is moved aside and rebuilt from reality by
  the reconciler; it is never a crash (docs/faults.md row 18).
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import re
import stat
import sys
import threading
import time
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal

from hybridiso import json_data, names, output, safe_files
from hybridiso.errors import UserError
from hybridiso.names import agent_name_problem, branch_name_problem

STATE_VERSION = 2

# A record is written ``creating`` before any work starts and ``ready`` last
# (the journal: docs/faults.md row 9).
Phase = Literal["creating", "ready"]
PHASE_CREATING: Phase = "creating"
PHASE_READY: Phase = "ready"

# What up's probe found of git in a container agent's image (docs/faults.md row 21):
# "" before it probed
GitInContainer = Literal["", "ok", "image has no git"]
GIT_IN_CONTAINER_OK: GitInContainer = "ok"
GIT_IN_CONTAINER_MISSING: GitInContainer = "image has no git"


@dataclass
class DatabaseBranch:
    """A database branch an agent owns (``service_branches``).  ``baseline``
    is what ``databases.Baseline`` recorded when it was created: what "its
    data changed" is measured against (docs/faults.md row 26)."""

    name: str
    server: str  # the service's URL; may hold a password (the state file is 0600)
    baseline: dict[str, Any] | None = None

    @classmethod
    def from_json(cls, data: Any) -> DatabaseBranch | None:
        if not isinstance(data, dict) or not isinstance(data.get("name"), str) or not isinstance(data.get("server"), str):
            return None  # a tampered entry names nothing hybridiso would act on
        baseline = data.get("baseline")
        return cls(data["name"], data["server"], baseline if isinstance(baseline, dict) else None)


@dataclass
class ProcessGroup:
    """A setup (or check) command started in its own session, recorded
    before it is waited for, so a run that is killed leaves a trace the next
    ``up``, rollback or ``gc`` can stop (docs/faults.md row 38).  ``token`` is in the
    environment of everything the command started
    (``process_groups.TOKEN_VAR``): it, not the pid, says what is ours, and
    finds what left the group too.  ``start`` (the leader's start time in
    clock ticks, /proc/PID/stat field 22) and ``boot_id`` say which process
    the pid named then."""

    pgid: int
    start: int
    boot_id: str
    token: str
    command: str
    started_at: float = 0.0

    @classmethod
    def from_json(cls, data: Any) -> ProcessGroup | None:
        try:
            group = cls(int(data["pgid"]), int(data["start"]), str(data["boot_id"]), str(data["token"]), str(data["command"]), float(data.get("started_at", 0.0)))
        except (KeyError, TypeError, ValueError):
            return None
        # pid 0, 1 or negative would signal far more than one setup: never
        return group if group.pgid > 1 and group.token else None


@dataclass
class AgentRecord:
    name: str
    strategy: str
    branch: str
    path: str
    base: str
    base_commit: str | None = None
    phase: Phase = PHASE_CREATING
    created_branch: bool = False
    ports: dict[str, int] = field(default_factory=dict)
    created_at: float = field(default_factory=time.time)
    timings: dict[str, float] = field(default_factory=dict)
    config_hash: str = ""
    setup_hash: str = ""
    # clones: how git made its objects, "hard-linked" or "copied" (the
    # workspace on another file system, docs/faults.md row 36); "" for other strategies
    clone_objects: str = ""
    # the remote-tracking branch (refs/remotes/origin/feature) the agent's
    # branch was created from and tracks: `branch: feature` that existed only
    # on a remote, as git worktree add does; "" otherwise
    track: str = ""
    # service -> the database branch it got (docs/faults.md row 26)
    databases: dict[str, DatabaseBranch] = field(default_factory=dict)
    # setup commands of a run that has not finished them (docs/faults.md row 38)
    setup_processes: list[ProcessGroup] = field(default_factory=list)
    # the include: patterns the agent had when it was created: its copies
    # stay precious after it leaves the manifest (issue 11)
    include_patterns: list[str] = field(default_factory=list)
    # the journal (docs/faults.md row 9): the directory at ``path`` is this
    # record's to remove (set before anything is made there), and a removal
    # began after the work was judged (a retry finishes it without asking)
    owns_path: bool = False
    removing: bool = False
    # which directory that removal began on ("st_dev:st_ino"): a retry
    # skips the ownership and work checks only for that very directory, so
    # a forged or stale ``removing`` never deletes someone else's
    removing_dir: str = ""
    # rebuilt from what git shows after the state file was lost (docs/faults.md row 18)
    adopted: bool = False
    # this run of up rolled the half-made environment back (up reports it)
    rolled_back: bool = False
    # the variables its services' branches gave it (DATABASE_URL, ...), in its env file
    service_env: dict[str, str] = field(default_factory=dict)
    # the include files that were copied in when it was made: precious work
    included: list[str] = field(default_factory=list)
    # container agents: the image it was made from (down fixes ownership with
    # it once the manifest forgets the agent); the git identity taken once,
    # when it was made (None: not taken yet); what up found of git in the image
    image: str = ""
    git_identity: dict[str, str] | None = None
    git_in_container: GitInContainer = ""
    # the worktree the agent was made from (its manifest and include files):
    # for a bare repository with linked worktrees, what a command run from
    # inside the agent's environment uses (project.find_repo, docs/faults.md row 22)
    checkout: str = ""
    # container agents (issue 12): the unprivileged "uid:gid" it runs as,
    # chosen once; the paths in the common git dir where that uid was given
    # ACL entries (removed by down); how its network is isolated ("iptables",
    # "none", "internal", or "" for an ordinary network); the addresses its
    # egress host names resolved to when it was created (pinned)
    container_user: str = ""
    container_grants: list[str] = field(default_factory=list)
    network_guard: str = ""
    egress_addresses: dict[str, list[str]] = field(default_factory=dict)

    def begin_removal(self, path: Path) -> None:
        """Mark that removing ``path`` begins (its work was judged): saved
        before anything is deleted, so a run that stops half-way is finished
        by the next one."""
        self.removing = True
        self.removing_dir = directory_identity(path) or ""

    def removal_begun(self, path: Path) -> bool:
        """A removal of this very directory began and was judged: true when
        the record says so for the directory now at ``path`` (or nothing is
        there any more).  ``removing`` alone, or naming another directory,
        proves nothing (docs/faults.md row 30)."""
        if not self.removing or not self.removing_dir:
            return False
        here = directory_identity(path)
        return (here is None and not os.path.lexists(path)) or here == self.removing_dir

    @classmethod
    def from_json(cls, name: str, data: Any) -> AgentRecord:
        """The record stored under ``name``, read field by field against the
        annotations (never ``cls(**data)``): a wrong type, a missing field or
        a value out of range is ``StateCorrupt`` (docs/faults.md row 18)."""
        return read_record(name, data)


INT_LIMIT = 1 << 63  # no number hybridiso writes is larger (times, ports, pids, sizes)


def directory_identity(path: Path) -> str | None:
    """``st_dev:st_ino`` of the directory at ``path`` itself (never through
    a symlink); None when there is none."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return f"{st.st_dev}:{st.st_ino}" if stat.S_ISDIR(st.st_mode) else None


@dataclass(frozen=True)
class SetAside:
    """A record this hybridiso cannot act on (a strategy it does not know,
    say from a newer version): kept in the file as it was, shown by status,
    and left alone."""

    name: str
    reason: str
    raw: dict[str, Any]

    @property
    def path(self) -> str | None:
        value = self.raw.get("path")
        return value if isinstance(value, str) else None


@dataclass
class State:
    agents: dict[str, AgentRecord] = field(default_factory=dict)
    rebuilt_from: str | None = None  # why the file was rebuilt, for status
    set_aside: dict[str, SetAside] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        agents: dict[str, Any] = {n: r.raw for n, r in self.set_aside.items() if n not in self.agents}
        agents.update({n: _plain(r) for n, r in self.agents.items()})
        return {"version": STATE_VERSION, "agents": dict(sorted(agents.items()))}

    @property
    def warnings(self) -> list[str]:
        """What a command says once about the state file before it acts."""
        notes = [self.rebuilt_from] if self.rebuilt_from else []
        notes += [f"{a.reason}; hybridiso leaves it alone" for a in self.set_aside.values()]
        return notes

    def leased_ports(self) -> dict[int, tuple[str, str]]:
        return {p: (r.name, n) for r in self.agents.values() for n, p in r.ports.items()}


def atomic_write_text(path: Path, text: str, *, anchor: Path | None = None, mode: int = 0o600) -> None:
    """Write ``path`` atomically, never through a symlink: below ``anchor``
    (default: the file's own directory, trusted as given) no component may
    be one (hybridiso.safe_files)."""
    if anchor is None:
        path.parent.mkdir(parents=True, exist_ok=True)
        anchor = path.parent
    safe_files.write_atomic(anchor, path.relative_to(anchor), text, mode=mode)


class StateStore:
    def __init__(self, common_dir: Path) -> None:
        # everything below the git dir is walked without following symlinks
        self.anchor = common_dir
        self.dir = common_dir / "hybridiso"
        self.path = self.dir / "state.json"
        self.lock_path = self.dir / "lock"
        # one save at a time, and the lock's state with it (re-entrant: a
        # save while unlocked takes the lock for that moment)
        self._mutex = threading.RLock()
        self._lock_fd: int | None = None  # the repository lock's, while ``locked``
        self._held = False  # this run holds it now (not between ``unlocked``)
        self._command = ""
        self._was_unlocked = False  # let go since it was taken: saves merge (``save``)
        self._claims: dict[str, int] = {}  # agent -> its flocked descriptor (``claim``)
        # saves asked for and written (``save``: one write covers every
        # save asked for before it began)
        self._requests = threading.Lock()
        self._requested = self._saved = 0
        self._saved_state: State | None = None

    @property
    def logs_dir(self) -> Path:
        return self.dir / "logs"

    @property
    def images_without_git(self) -> Path:
        """Image ids (with the PATH they were probed with) whose git probe found no git."""
        return self.dir / "images-without-git"

    @property
    def compose_dir(self) -> Path:
        return self.dir / "compose"

    def load(self) -> State:
        """The state on disk.  Whatever is in the file, this returns: a file
        that is not UTF-8 JSON of our shape is moved aside and the state is
        rebuilt from reality by the caller's reconcile (docs/faults.md row 18); a record
        of an unknown strategy is set aside alone."""
        try:
            raw = safe_files.read_bytes(self.anchor, self.path.relative_to(self.anchor))
        except safe_files.UnsafePath as e:
            # never followed or read: set aside like a corrupt file (docs/faults.md row 31)
            return State(rebuilt_from=f"{e.message}; rebuilt from git")
        if raw is None:
            return State()
        try:
            return parse_state(raw)
        except StateCorrupt as e:
            aside = self._move_aside()
            where = f"moved to {aside}" if aside else "it could not be moved aside (it is replaced on the next save)"
            # the file's path in the one message: it is what the user looks at (docs/faults.md rows 18, 30)
            return State(rebuilt_from=f"state file {self.path} was unreadable ({e}); {where} and rebuilt from git")

    def _move_aside(self) -> str | None:
        """Rename state.json to a name of its own (never over an earlier copy),
        inside the state dir opened without following symlinks."""
        name = f"state.json.corrupt-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{time.monotonic_ns() % 10**6}"
        try:
            with safe_files.open_dir(self.anchor, self.dir.relative_to(self.anchor)) as fd:
                os.rename("state.json", name, src_dir_fd=fd, dst_dir_fd=fd)
        except (OSError, UserError):
            return None
        return name

    def save(self, state: State) -> None:
        """Write atomically; a failed write (disk full) leaves the previous
        file intact and is one clear error.

        Under the repository lock (``locked``) the whole state is written:
        it was loaded under that same lock.  Without it (``up``'s long steps,
        ``unlocked``) only the records of the agents this run has claimed
        are written, into the file as it is now, under the lock taken for
        that moment: what other runs saved meanwhile stays."""
        with self._requests:
            self._requested += 1
            mine = self._requested
        with self._mutex:
            if self._saved >= mine and self._saved_state is state:
                # a save that began after this one was asked for wrote it
                # too (workers finishing together: one write, not one each)
                return
            with self._requests:
                covers = self._requested
            self._save(state)
            self._saved, self._saved_state = covers, state

    def _save(self, state: State) -> None:
        with self._mutex:
            if not (self._was_unlocked and self._claims):
                self._write(state)
                return
            # once let go, what this run loaded is stale but for its own agents
            with contextlib.nullcontext() if self._held else self._briefly():
                fresh = self.load()
                if fresh.rebuilt_from:
                    # another shell left the file unreadable while this run
                    # had let the lock go: say so, as a load at the start does
                    # (docs/faults.md row 18); the others' records come back
                    # from git on the next command
                    output.warn(fresh.rebuilt_from)
                for name in self._claims:
                    record = state.agents.get(name)
                    if record is None:
                        fresh.agents.pop(name, None)
                    else:
                        fresh.agents[name] = record
                self._write(fresh)

    def _write(self, state: State) -> None:
        text = _serialise(state)
        try:
            atomic_write_text(self.path, text, anchor=self.anchor)
        except OSError as e:
            raise UserError(
                f"cannot write the state file {self.path}: {e.strerror}",
                hint="free some disk space; the previous state file is intact, and the next run reconciles it with git",
            ) from None

    @contextlib.contextmanager
    def locked(self, command: str, *, wait_message: bool = True) -> Iterator[None]:
        """Hold the repository lock for the duration of a mutating command
        (``unlocked`` lets it go for a while); the agents it claims
        (``claim``) are released when it ends."""
        with self._mutex:
            first = self._lock_fd is None
            if first:
                fd = safe_files.open_regular(self.anchor, self.lock_path.relative_to(self.anchor), os.O_RDWR | os.O_CREAT)
                self._lock_fd, self._command = fd, command
        if not first:
            # another thread of this run has it: wait for it as another run would
            with hold_lock(self.anchor, self.lock_path.relative_to(self.anchor), command, "the repository lock", wait_message=wait_message):
                yield
            return
        try:
            _take(fd, command, "the repository lock", wait_message=wait_message)
            self._held = True
            yield
        finally:
            self._held = self._was_unlocked = False
            self._lock_fd = None
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)  # closing releases the flock
            self.release_claims()

    @contextlib.contextmanager
    def unlocked(self) -> Iterator[None]:
        """Let the repository lock go while the agents this run claimed are
        worked on (``up``'s create, includes, setup): other commands go on
        meanwhile, and never touch a claimed agent (``agent_holder``).
        Saves in between merge this run's records into the file
        (``save``).  The lock is taken again at the end."""
        fd = self._lock_fd
        if fd is None or not self._held:
            raise AssertionError("unlocked() inside locked() only")
        with self._mutex:
            self._held = False
            self._was_unlocked = True
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
        try:
            yield
        finally:
            with self._mutex:
                _take(fd, self._command, "the repository lock", wait_message=False)
                self._held = True

    @contextlib.contextmanager
    def _briefly(self) -> Iterator[None]:
        """The repository lock for one save while ``unlocked``."""
        fd = self._lock_fd
        assert fd is not None
        _take(fd, self._command, "the repository lock", wait_message=False)
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)

    # --- agent claims: which run works on an agent now ----------------------

    def agent_lock_path(self, name: str) -> Path:
        return self.dir / AGENT_LOCKS / f"{name}.lock"

    def claim(self, names: list[str], *, wait_message: bool = True) -> None:
        """Claim ``names`` for this run (under the repository lock): an
        flock per agent, held until the run ends, so no other run acts on
        them meanwhile -- and a run that dies (kill -9) lets go of them with
        the kernel, whatever the state file says (a pid in it proves
        nothing: it may be reused).  An agent another run holds is waited
        for, with the repository lock let go, saying for whom (docs/faults.md
        row 10); then the claim is tried again.  Called before the state is
        loaded: what is loaded after it is current."""
        if not self._held:
            raise AssertionError("claim() under the repository lock only")
        _room_for(len(names))
        said: set[str] = set()
        was_unlocked = self._was_unlocked
        while True:
            busy = self._try_claim(names)
            if not busy:
                self._was_unlocked = was_unlocked  # nothing was loaded while it waited
                return
            with self.unlocked():
                for name, fd in busy.items():
                    try:
                        if wait_message and name not in said:
                            said.add(name)
                            print(f"hybridiso: waiting for agent {name}, held by {_read_holder(fd)}", file=sys.stderr, flush=True)
                        fcntl.flock(fd, fcntl.LOCK_SH)  # returns once its holder let go
                    finally:
                        os.close(fd)

    def _try_claim(self, names: list[str]) -> dict[str, int]:
        """Take every free agent lock of ``names``; the busy ones' descriptors
        (not locked), after letting go of what this call took, or {} when
        all are now this run's."""
        taken: list[str] = []
        busy: dict[str, int] = {}
        for name in dict.fromkeys(names):
            if name in self._claims:
                continue
            if agent_name_problem(name):  # a name reaches a path: the manifest's rule
                raise AssertionError(f"claim of agent {name!r}")
            fd = safe_files.open_regular(self.anchor, self.agent_lock_path(name).relative_to(self.anchor), os.O_RDWR | os.O_CREAT)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
                busy[name] = fd
                continue
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{LockHolder(os.getpid(), self._command).describe()}\n".encode(), 0)
            self._claims[name] = fd
            taken.append(name)
        if busy:
            for name in taken:
                self._release(name)
        return busy

    def release_claims(self) -> None:
        for name in list(self._claims):
            self._release(name)

    def _release(self, name: str) -> None:
        fd = self._claims.pop(name)
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)

    def agent_holder(self, name: str) -> LockHolder | None:
        """The run that has claimed agent ``name`` now (``claim``), if one
        has; None when none has.  What holds it says who it is; a lock file
        that is not ours to read (a symlink, a FIFO) is held by "another
        hybridiso process"."""
        path = self.agent_lock_path(name)
        if agent_name_problem(name) or lock_is_free(path):
            return None
        return holder_of(path) or LockHolder(0, "")

    def agent_busy(self, name: str) -> str | None:
        """``agent_holder`` in words ("pid N (hybridiso up)"), or None."""
        holder = self.agent_holder(name)
        if holder is None:
            return None
        return holder.describe() if holder.pid else "another hybridiso process"


def _room_for(claims: int) -> None:
    """One descriptor per claimed agent stays open for the run: raise the
    soft limit of open files when they would not fit beside the rest (git
    pipes, logs), up to the hard limit; past that, one clear error."""
    import resource

    needed = claims + FILES_BESIDE_CLAIMS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or needed <= soft:
        return
    if hard != resource.RLIM_INFINITY and needed > hard:
        raise UserError(
            f"{claims} agents at once need {needed} open files, and this shell allows {hard} (ulimit -Hn)",
            hint="name fewer agents (`hybridiso up AGENT...`), or raise the limit",
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


FILES_BESIDE_CLAIMS = 512  # what an up keeps open besides its claims, with room

AGENT_LOCKS = "agents"  # state dir: agents/<name>.lock, one flock per agent (StateStore.claim)


def _take(fd: int, command: str, what: str, *, wait_message: bool) -> None:
    """flock ``fd``; a run that must wait says for whom; then the file
    names this run."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in (errno.EAGAIN, errno.EACCES):
            raise
        if wait_message:
            print(f"hybridiso: waiting for {what} held by {_read_holder(fd)}", file=sys.stderr, flush=True)
        fcntl.flock(fd, fcntl.LOCK_EX)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{LockHolder(os.getpid(), command).describe()}\n".encode(), 0)


@contextlib.contextmanager
def hold_lock(anchor: Path, rel: str | os.PathLike[str], command: str, what: str, *, wait_message: bool = True) -> Iterator[None]:
    """Hold the flock on ``anchor/rel`` (made if missing, never through a
    symlink); a run that must wait says for whom, and the file names this
    run while it holds it."""
    fd = safe_files.open_regular(anchor, rel, os.O_RDWR | os.O_CREAT)
    try:
        _take(fd, command, what, wait_message=wait_message)
        yield
    finally:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # closing releases the flock


# --- reading the file: typed, field by field -------------------------------------


class StateCorrupt(ValueError):
    """The state file is not what hybridiso writes."""


_COMMIT_RE = re.compile(r"[0-9a-f]{7,64}")


def parse_state(raw: bytes) -> State:
    try:
        data = json_data.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise StateCorrupt(f"not UTF-8 at byte {e.start}") from None
    except ValueError as e:  # json.JSONDecodeError
        raise StateCorrupt(f"not JSON: {e}") from None
    if not isinstance(data, dict):
        raise StateCorrupt(f"not an object but {type(data).__name__}")
    version = data.get("version")
    if version not in (1, STATE_VERSION) or isinstance(version, bool):
        raise StateCorrupt(f"unknown state version {version!r}")
    if version == STATE_VERSION:
        _no_unknown_keys(data, {"version", "agents"}, "the file")
    agents = data.get("agents", {})
    if not isinstance(agents, dict):
        raise StateCorrupt(f"'agents' is {type(agents).__name__}, not an object")
    state = State()
    for name, item in agents.items():
        strategy = item.get("strategy") if isinstance(item, dict) else None
        if isinstance(strategy, str) and strategy not in names.STRATEGY_NAMES:
            state.set_aside[name] = SetAside(
                name,
                f"the state file's record of agent {name!r} names strategy {strategy!r}, which this hybridiso does "
                f"not know (known: {', '.join(names.STRATEGY_NAMES)}; a newer version made it?)",
                item,
            )
            continue
        if version == 1:
            state.agents[name] = read_record(name, upgrade_v1_record(name, item), strict=False)
        else:
            state.agents[name] = read_record(name, item)
    return state


def read_record(name: str, data: Any, *, strict: bool = True) -> AgentRecord:
    """The record stored under ``name``; ``strict``: a key that is not one of
    its fields is StateCorrupt (a typo such as ``owns_pth`` would otherwise
    silently turn rollback off).  Only version 1 files are read leniently,
    as version 1's reader did."""
    where = f"record {name!r}"
    if not isinstance(data, dict):
        raise StateCorrupt(f"{where} is {type(data).__name__}, not an object")
    hints = _record_hints()
    if strict:
        _no_unknown_keys(data, set(hints), where)
    values: dict[str, Any] = {}
    for f_name, required in _record_fields():
        if f_name in data:
            value, hint = data[f_name], hints[f_name]
            simple = _SIMPLE.get(hint)
            # most fields are a str, int or bool: checked here, at once
            # (the load of 200 records was mostly _typed's bookkeeping)
            values[f_name] = value if simple is not None and simple(value) else _typed(value, hint, f"{where}: {f_name}", strict=strict)
        elif required:
            raise StateCorrupt(f"{where} has no {f_name!r}")
    record = AgentRecord(**values)
    if record.name != name:
        raise StateCorrupt(f"{where} is named {record.name!r}")
    # names and branches reach paths (logs/<name>/) and git's argv: the
    # manifest's rules hold for what the file says too
    if agent_name_problem(record.name):
        raise StateCorrupt(f"{where}: {agent_name_problem(record.name)}")
    if branch_name_problem(record.branch):
        raise StateCorrupt(f"{where}: {branch_name_problem(record.branch)}")
    if record.base_commit is not None and not _COMMIT_RE.fullmatch(record.base_commit):
        raise StateCorrupt(f"{where}: base_commit {record.base_commit!r} is not a commit id")
    if record.strategy not in names.STRATEGY_NAMES:
        raise StateCorrupt(f"{where}: unknown strategy {record.strategy!r}")
    if not record.path or "\x00" in record.path or not os.path.isabs(record.path):
        raise StateCorrupt(f"{where}: path {record.path!r} is not an absolute path")
    for port_name, port in record.ports.items():
        if not 1 <= port <= 65535:
            raise StateCorrupt(f"{where}: port {port_name} is {port}")
    for group in record.setup_processes:
        # pid 0, 1 or a negative one would signal far more than one setup,
        # and without its token nothing proves a process is ours: never
        if group.pgid <= 1 or not group.token:
            raise StateCorrupt(f"{where}: setup process group {group.pgid} cannot be one hybridiso recorded")
    return record


def _no_unknown_keys(data: dict[str, Any], known: set[str], where: str) -> None:
    unknown = sorted(k for k in data if k not in known)
    if unknown:
        raise StateCorrupt(f"{where} has {', '.join(map(repr, unknown))}, which hybridiso does not write")


# --- version 1 -------------------------------------------------------------------

# Version 1 kept these in the record's free-form ``extra`` object; version 2
# has a field for each (the key on the right).
V1_EXTRA_FIELDS: dict[str, str] = {
    "owns_path": "owns_path",
    "removing": "removing",
    "adopted": "adopted",
    "rolled_back": "rolled_back",
    "env": "service_env",
    "included": "included",
    "image": "image",
    "git_identity": "git_identity",
    "git_in_container": "git_in_container",
    "databases": "databases",  # before the field of that name (its own shape, below)
}
# keys earlier versions wrote and nothing reads any more
V1_EXTRA_RETIRED = frozenset({"seen_upstream"})


def upgrade_v1_record(name: str, data: Any) -> Any:
    """A version 1 record in version 2's shape: each ``extra`` key becomes
    its field, type-checked as ``extra.<key>``; a key version 1 never wrote
    is StateCorrupt."""
    if not isinstance(data, dict):
        return data
    where = f"record {name!r}"
    hints = _record_hints()
    record = {k: v for k, v in data.items() if k in hints}
    extra = data.get("extra", {})
    if not isinstance(extra, dict):
        raise StateCorrupt(f"{where}: extra is {_shown(extra)}, not an object")
    for key, value in extra.items():
        if key in V1_EXTRA_RETIRED:
            continue
        if key not in V1_EXTRA_FIELDS:
            raise StateCorrupt(f"{where}: extra.{key} is not a key hybridiso wrote")
        if key == "databases":
            branches = _typed(value, dict[str, dict[str, Any]], f"{where}: extra.databases", strict=False)
            for service, db in branches.items():
                if not isinstance(db.get("name"), str) or not isinstance(db.get("server"), str):
                    raise StateCorrupt(f"{where}: database branch of {service!r} has no name or server")
            if not record.get("databases"):
                record["databases"] = {svc: {"name": db["name"], "server": db["server"]} for svc, db in branches.items()}
            continue
        field_name = V1_EXTRA_FIELDS[key]
        record[field_name] = _typed(value, hints[field_name], f"{where}: extra.{key}", strict=False)
    return record


_HINTS: dict[str, Any] = {}
_FIELDS: list[tuple[str, bool]] = []
# what _typed accepts as is for these hints (a float field takes an int too,
# converted: _typed does that)
_SIMPLE: dict[Any, Callable[[Any], bool]] = {
    str: lambda v: isinstance(v, str),
    bool: lambda v: isinstance(v, bool),
    int: lambda v: isinstance(v, int) and not isinstance(v, bool) and abs(v) < INT_LIMIT,
    float: lambda v: isinstance(v, float) and math.isfinite(v),
}


def _record_fields() -> list[tuple[str, bool]]:
    """(name, required) of each AgentRecord field, in order."""
    if not _FIELDS:
        _FIELDS.extend((f.name, f.default is MISSING and f.default_factory is MISSING) for f in fields(AgentRecord))
    return _FIELDS


def _record_hints() -> dict[str, Any]:
    if not _HINTS:
        _HINTS.update(typing.get_type_hints(AgentRecord))
    return _HINTS


def _typed(value: Any, hint: Any, where: str, *, strict: bool = True) -> Any:
    """``value`` if it is of type ``hint`` (a JSON view of it: str, int,
    float, bool, None, list, dict with str keys, unions, Literal, Any and
    dataclasses, recursively), else StateCorrupt.  ``strict``: a dataclass
    read from an object with a key that is not its field is StateCorrupt."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            try:
                return _typed(value, option, where, strict=strict)
            except StateCorrupt:
                continue
        raise StateCorrupt(f"{where} is {_shown(value)}, not {_hint_name(hint)}")
    if origin is typing.Literal:
        if value in typing.get_args(hint):
            return value
        raise StateCorrupt(f"{where} is {_shown(value)}, not one of {typing.get_args(hint)}")
    if hint is type(None):
        if value is None:
            return None
    elif hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) < INT_LIMIT:
            return value
    elif hint is float:
        # a huge integer has no float (OverflowError): out of range like inf
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) < INT_LIMIT:
            return float(value)
        if isinstance(value, float) and math.isfinite(value):
            return value
    elif hint is str:
        if isinstance(value, str):
            return value
    elif origin is list:
        if isinstance(value, list):
            (item,) = typing.get_args(hint) or (Any,)
            return [_typed(v, item, f"{where}[{i}]", strict=strict) for i, v in enumerate(value)]
    elif origin is dict:
        if isinstance(value, dict):
            key, item = typing.get_args(hint) or (str, Any)
            return {_typed(k, key, f"{where} key", strict=strict): _typed(v, item, f"{where}[{k!r}]", strict=strict) for k, v in value.items()}
    elif origin is tuple:
        if isinstance(value, list):
            args = typing.get_args(hint)
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(_typed(v, args[0], f"{where}[{i}]", strict=strict) for i, v in enumerate(value))
            if len(args) == len(value):
                return tuple(_typed(v, a, f"{where}[{i}]", strict=strict) for i, (v, a) in enumerate(zip(value, args, strict=False)))
    elif is_dataclass(hint) and isinstance(hint, type):
        if isinstance(value, dict):
            return _dataclass(value, hint, where, strict=strict)
    else:
        # a field of a type this reader does not know: a bug, found by
        # tests/test_state.py, never taken for a corrupt file
        raise TypeError(f"the state reader cannot read {hint!r} ({where})")
    raise StateCorrupt(f"{where} is {_shown(value)}, not {_hint_name(hint)}")


_CLASS_HINTS: dict[type, dict[str, Any]] = {}


def _dataclass(value: dict[str, Any], cls: type, where: str, *, strict: bool) -> Any:
    hints = _CLASS_HINTS.get(cls)
    if hints is None:  # once per class: get_type_hints evaluates every annotation
        hints = _CLASS_HINTS[cls] = typing.get_type_hints(cls)
    if strict:
        _no_unknown_keys(value, set(hints), where)
    values: dict[str, Any] = {}
    for f in fields(cls):
        if f.name in value:
            values[f.name] = _typed(value[f.name], hints[f.name], f"{where}.{f.name}", strict=strict)
        elif f.default is MISSING and f.default_factory is MISSING:
            raise StateCorrupt(f"{where} has no {f.name!r}")
    return cls(**values)


def _shown(value: Any) -> str:
    try:
        text = json.dumps(value) if not isinstance(value, float) or math.isfinite(value) else repr(value)
    except ValueError:  # an integer of more digits than Python converts
        text = "a number too large"
    return text if len(text) <= 40 else text[:37] + "..."


def _hint_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _plain(value: Any) -> Any:
    """``dataclasses.asdict`` for what a record holds (JSON values and
    dataclasses, in dicts and lists), at a fraction of its cost: asdict
    deep-copies every leaf, which was half of a save at 200 agents
    (docs/benchmarks.md, issue 15)."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    kind = type(value)
    names = _FIELD_NAMES.get(kind)
    if names is None:
        if not is_dataclass(value):
            raise TypeError(f"the state writer cannot write {kind.__name__}")
        names = _FIELD_NAMES[kind] = tuple(f.name for f in fields(value))
    return {n: _plain(getattr(value, n)) for n in names}


def _serialise(state: State) -> str:
    """The state as JSON.  Worker threads save their record while others
    still fill theirs in (setup process groups are saved before they are
    waited for, docs/faults.md row 38): a dict that grows while it is copied raises
    RuntimeError, and copying again a moment later succeeds."""
    for attempt in range(20):
        try:
            return _layout(state.to_json())
        except RuntimeError:
            if attempt == 19:
                raise
            time.sleep(0.001)
    raise AssertionError("unreachable")


def _layout(data: dict[str, Any]) -> str:
    """The file's text: one line per agent (json's C encoder writes each;
    ``indent`` would have run its pure-Python one over the whole file),
    keys sorted, so a diff shows which agents changed."""
    agents = data["agents"]
    lines = [f"  {json.dumps(n)}: {json.dumps(agents[n], sort_keys=True)}" for n in agents]
    body = "{\n" + ",\n".join(lines) + "\n }" if lines else "{}"
    rest = {k: v for k, v in data.items() if k != "agents"}
    head = json.dumps(rest, sort_keys=True)[1:-1]
    return "{" + '"agents": ' + body + (", " + head if head else "") + "}\n"


def lock_is_free(path: Path) -> bool:
    """True when nobody holds an flock on ``path`` now (a missing file is
    free).  A holder that died let go of it: the kernel drops its locks."""
    try:
        # a FIFO must not block the probe, a symlink is not followed
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return True
    except OSError:
        return False  # not a lock we made: nobody should treat it as free
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    finally:
        os.close(fd)  # also releases the probe's lock
    return True


@dataclass(frozen=True)
class LockHolder:
    """Who holds a lock, as its file says: the line ``describe`` wrote
    there is what a waiting run shows, and what ``read`` reads back."""

    pid: int
    command: str  # the hybridiso command: up, down, land, ...

    def describe(self) -> str:
        return f"pid {self.pid} (hybridiso {self.command})"

    @classmethod
    def read(cls, text: str) -> LockHolder | None:
        m = _HOLDER_RE.fullmatch(text.strip())
        return cls(int(m.group(1)), m.group(2)) if m else None


_HOLDER_RE = re.compile(r"pid (\d+) \(hybridiso ([a-z-]+)\)")


def holder_of(path: Path) -> LockHolder | None:
    """The hybridiso run that holds the lock at ``path`` now, if its file names one."""
    holder = lock_holder(path)
    return LockHolder.read(holder) if holder is not None else None


def lock_holder(path: Path) -> str | None:
    """Who holds the lock at ``path`` now ("pid N (hybridiso up)"), or None
    when nobody does."""
    if lock_is_free(path):
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return "another hybridiso process"
    try:
        return _read_holder(fd)
    finally:
        os.close(fd)


def _read_holder(fd: int) -> str:
    """The holder the lock file names, as ``LockHolder`` wrote it; anything
    else there (planted text, terminal escapes) is never printed."""
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", errors="replace")
    except OSError:
        text = ""
    holder = LockHolder.read(text)
    return holder.describe() if holder is not None else "another hybridiso process"
