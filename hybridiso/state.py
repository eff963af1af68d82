"""State under ``$(git rev-parse --git-common-dir)/hybridiso/``: shared by every
worktree of the repository and never committed.

- ``state.json``: one record per agent, written atomically (temp file +
  ``os.replace``).  A record is created with phase ``creating`` *before* any
  work starts, so it doubles as the journal: an interrupted ``up`` leaves a
  ``creating`` record that the next ``up`` rolls back; ``ready`` is written last
  (STYLE.md #6: nothing is marked done before it is).
- ``lock``: one lock per repository (``flock``); a second run says whose it
  waits for (FAULTS #10).
- A corrupt or missing state file is moved aside and rebuilt from reality by
  the reconciler; it is never a crash (FAULTS #18).
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hybridiso import safe_files
from hybridiso.errors import UserError

STATE_VERSION = 1

PHASE_CREATING = "creating"
PHASE_READY = "ready"


@dataclass
class AgentRecord:
    name: str
    strategy: str
    branch: str
    path: str
    base: str
    base_commit: str | None = None
    phase: str = PHASE_CREATING
    created_branch: bool = False
    ports: dict[str, int] = field(default_factory=dict)
    created_at: float = field(default_factory=time.time)
    timings: dict[str, float] = field(default_factory=dict)
    config_hash: str = ""
    setup_hash: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    # container agents (issue 12): the unprivileged "uid:gid" it runs as,
    # chosen once; the paths in the common git dir where that uid was given
    # ACL entries (removed by down); how its network is isolated ("iptables",
    # "none", "internal", or "" for an ordinary network); the addresses its
    # egress host names resolved to when it was created (pinned)
    container_user: str = ""
    container_grants: list[str] = field(default_factory=list)
    network_guard: str = ""
    egress_addresses: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AgentRecord:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass
class State:
    agents: dict[str, AgentRecord] = field(default_factory=dict)
    rebuilt_from: str | None = None  # why the file was rebuilt, for status

    def to_json(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "agents": {n: asdict(r) for n, r in sorted(self.agents.items())}}

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
        self._mutex = threading.Lock()

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
        try:
            raw = safe_files.read_text(self.anchor, self.path.relative_to(self.anchor))
        except safe_files.UnsafePath as e:
            # never followed or read: set aside like a corrupt file (FAULTS #31)
            return State(rebuilt_from=f"{e.message}; rebuilt from git")
        if raw is None:
            return State()
        try:
            data = json.loads(raw)
            if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
                raise ValueError(f"unknown state version {data.get('version') if isinstance(data, dict) else data!r}")
            agents = {n: AgentRecord.from_json(r) for n, r in data.get("agents", {}).items()}
            return State(agents)
        except (ValueError, TypeError, AttributeError) as e:
            aside = self.path.with_name(f"state.json.corrupt-{int(time.time())}")
            with contextlib.suppress(OSError):
                os.replace(self.path, aside)
            return State(rebuilt_from=f"state file was unreadable ({e}); moved to {aside.name} and rebuilt from git")

    def save(self, state: State) -> None:
        """Write atomically; a failed write (disk full) leaves the previous
        file intact and is one clear error."""
        with self._mutex:
            try:
                atomic_write_text(self.path, json.dumps(state.to_json(), indent=2, sort_keys=True) + "\n", anchor=self.anchor)
            except OSError as e:
                raise UserError(
                    f"cannot write the state file {self.path}: {e.strerror}",
                    hint="free some disk space; the previous state file is intact, and the next run reconciles it with git",
                ) from None

    @contextlib.contextmanager
    def locked(self, command: str, *, wait_message: bool = True) -> Iterator[None]:
        """Hold the repository lock for the duration of a mutating command."""
        fd = safe_files.open_regular(self.anchor, self.lock_path.relative_to(self.anchor), os.O_RDWR | os.O_CREAT)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if wait_message:
                    holder = _read_holder(fd)
                    print(f"hybridiso: waiting for the repository lock held by {holder}", file=sys.stderr, flush=True)
                fcntl.flock(fd, fcntl.LOCK_EX)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} (hybridiso {command})\n".encode(), 0)
            yield
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)  # closing releases the flock


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


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", errors="replace").strip()
    except OSError:
        text = ""
    return text or "another hybridiso process"
