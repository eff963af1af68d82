"""Admission control for `up` (issue 15): the machine is never overrun.

Every agent's job has a thread; what it may do at once is admitted here:

- its work outside setup (git laying files, includes, starting what runs,
  checking an existing environment) takes one of ``-j`` work slots;
- its setup gives that slot back and waits for a setup slot of its kind.
  Compute-bound setups (every ``workload.kind`` but ``io``, the default
  ``edit`` too: a new user's ``npm ci`` is not known to wait on the network)
  get one per core, fewer when memory is short (the machine's capacity,
  hybridiso.machine) or ``limits.setup_jobs`` says so; and the memory their
  ``resources.memory`` asks for, added up, stays within what is available
  (one runs whatever it asks, alone).  ``kind: io`` setups mostly wait on
  disk and network: four per core, or ``limits.io_setup_jobs``.
  A compute setup also holds one of the machine's slots (``MachineSlots``:
  flock'd files under the state home), so two `up`s at once, of one
  repository or two, never run more than the limit between them.

Who waits is said, with why ("2 compute setups running on 2 cores; api
waits"), and every job's step and how long it has been at it is kept for
the live display (output_live.py).  A wait ends at once on Ctrl-C: the job
raises ``Cancelled`` before it makes anything more (docs/faults.md row 9).
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from hybridiso import machine, ports, safe_files
from hybridiso.env_context import EnvContext, Steps
from hybridiso.errors import Cancelled
from hybridiso.manifest import MAX_SETUP_JOBS, Agent, Manifest, parse_size
from hybridiso import output
from hybridiso.output import human_bytes, plural
from hybridiso.state import PHASE_CREATING

IO_PER_CORE = 4
COMPUTE, IO = "compute", "io"
POLL = 0.2  # seconds between looks at Ctrl-C while waiting


@dataclass(frozen=True)
class SetupLimits:
    """How many setups of each kind run at once, and why (`plan` says it)."""

    compute: int
    compute_why: str
    io: int
    io_why: str
    memory_available: int | None  # what compute setups' resources.memory share

    def describe(self) -> str:
        return f"{self.compute} compute-bound ({self.compute_why}), {self.io} I/O-bound ({self.io_why})"


def setup_limits(manifest: Manifest, here: machine.Capacity | None = None) -> SetupLimits:
    here = here or machine.capacity()
    limits = manifest.limits
    if limits.setup_jobs is not None:
        compute, compute_why = limits.setup_jobs, f"limits.setup_jobs: {limits.setup_jobs}"
    else:
        compute, compute_why = here.cores, here.describe()
    if limits.io_setup_jobs is not None:
        io, io_why = limits.io_setup_jobs, f"limits.io_setup_jobs: {limits.io_setup_jobs}"
    else:
        io = min(MAX_SETUP_JOBS, IO_PER_CORE * here.cores)
        io_why = f"kind io mostly waits on disk and network: {IO_PER_CORE} per core"
    return SetupLimits(compute, compute_why, io, io_why, here.memory_available)


def kind_of(agent: Agent | None) -> str:
    return IO if agent is not None and agent.workload.kind == "io" else COMPUTE


def memory_of(agent: Agent | None) -> int:
    """What a compute setup is counted to take of the machine's memory: its
    ``resources.memory``, or nothing said (its cores bound it)."""
    if agent is None or agent.resources is None or agent.resources.memory is None:
        return 0
    return parse_size(agent.resources.memory)


SLOTS_DIR = "hybridiso/setup-slots"  # under the user's state home, beside the port registry


class MachineSlots:
    """Compute setup slots every `up` of this user on this machine shares:
    slot files ``compute-<i>.lock`` under the state home, each held by an
    ``flock`` while a setup runs.  The kernel lets go of a killed run's
    locks, so a kill -9 never leaves a slot taken (docs/faults.md row 9).
    A run whose limit is N uses slots 0..N-1.  Where the files cannot be
    used (a symlink there, no space), it says so once and counts its own
    setups only."""

    def __init__(self, anchor: Path | None = None) -> None:
        self._anchor = anchor
        self._broken = False
        self.problem: str | None = None  # said once by the caller, outside its lock

    def take(self, limit: int) -> int | None:
        """A slot's descriptor, -1 when slots cannot be used, or None when all are held."""
        if self._broken:
            return -1
        anchor = self._anchor or ports.state_home()
        for i in range(limit):
            try:
                anchor.mkdir(parents=True, exist_ok=True, mode=0o700)
                fd = safe_files.open_regular(anchor, f"{SLOTS_DIR}/compute-{i}.lock", os.O_RDWR | os.O_CREAT)
            except (OSError, safe_files.UnsafePath) as e:
                self._broken = True
                self.problem = f"compute setups of other `hybridiso up` runs are not counted: {getattr(e, 'message', None) or e}"
                return -1
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            return fd
        return None

    def give(self, fd: int | None) -> None:
        if fd is not None and fd >= 0:
            os.close(fd)  # the lock goes with it


@dataclass
class Row:
    """One job as the live display shows it."""

    name: str
    strategy: str
    step: str
    since: float  # monotonic time the step began
    done: bool = False


class Admission:
    def __init__(self, limits: SetupLimits, work_jobs: int, say: Callable[[str], None], slots: MachineSlots | None = None) -> None:
        self.limits = limits
        self._slots = slots or MachineSlots()
        self.work_jobs = work_jobs
        self._say = say
        self._cond = threading.Lock()
        # each waiter sleeps on its own condition, and only the head of a
        # queue is woken when room is given back (100 jobs woken for every
        # one that finished made a no-op up of 100 agents O(N^2))
        self._wakers: dict[str, threading.Condition] = {}
        self._work = 0
        self._running: dict[str, list[str]] = {COMPUTE: [], IO: []}
        self._memory = 0
        self._queues: dict[str, deque[str]] = {"work": deque(), COMPUTE: deque(), IO: deque()}
        self.rows: dict[str, Row] = {}
        self.max_running = {COMPUTE: 0, IO: 0}  # the most that ran at once (tests, benchmarks)

    def steps_for(self, ctx: EnvContext) -> Steps:
        self.rows[ctx.name] = Row(ctx.name, ctx.record.strategy, "queued", time.monotonic())
        return _AgentSteps(self, ctx)

    def snapshot(self) -> list[Row]:
        with self._cond:
            return [Row(r.name, r.strategy, r.step, r.since, r.done) for r in self.rows.values()]

    def _set(self, name: str, step: str) -> None:
        with self._cond:
            self.rows[name].step, self.rows[name].since = step, time.monotonic()

    def _wait(self, ctx: EnvContext, queue: str, fits: Callable[[], bool]) -> None:
        """Wait, first come first served, until ``fits()``; the caller holds
        ``self._cond`` and takes the room."""
        waiting = self._queues[queue]
        waiting.append(ctx.name)
        me = self._wakers[ctx.name] = threading.Condition(self._cond)
        try:
            while True:
                if ctx.cancel.is_set():  # also when there is room: Ctrl-C came first
                    raise Cancelled(ctx.name)
                if waiting[0] == ctx.name and fits():
                    break
                me.wait(POLL)  # woken when room is given back; POLL for Ctrl-C and other runs' slots
        finally:
            waiting.remove(ctx.name)
            del self._wakers[ctx.name]
            self._wake(queue)

    def _wake(self, queue: str) -> None:
        """Wake the first waiter of ``queue`` (the caller holds the lock)."""
        waiting = self._queues[queue]
        if waiting:
            head = self._wakers.get(waiting[0])
            if head is not None:
                head.notify()

    def take_work(self, ctx: EnvContext, step: str) -> None:
        with self._cond:
            if self._work >= self.work_jobs or self._queues["work"]:
                self.rows[ctx.name].step, self.rows[ctx.name].since = f"queued ({self.work_jobs} at once, -j)", time.monotonic()
            self._wait(ctx, "work", lambda: self._work < self.work_jobs)
            self._work += 1
            self.rows[ctx.name].step, self.rows[ctx.name].since = step, time.monotonic()

    def give_work(self) -> None:
        with self._cond:
            self._work -= 1
            self._wake("work")

    def take_setup(self, ctx: EnvContext) -> tuple[str, int, int | None]:
        kind, need = kind_of(ctx.agent), memory_of(ctx.agent)
        if kind == IO:
            need = 0
        running = self._running[kind]
        fits = self._fits(kind, need)
        slot: list[int | None] = [None]

        def room() -> bool:
            if not fits():
                return False
            if kind == IO:
                return True
            # compute setups also take a slot of the machine's, which every
            # `up` of this user shares (two at once, or of two repositories)
            slot[0] = self._slots.take(self.limits.compute)
            return slot[0] is not None

        def admitted() -> None:  # under the lock, with the room just found
            running.append(ctx.name)
            self._memory += need
            self.max_running[kind] = max(self.max_running[kind], len(running))
            self.rows[ctx.name].step, self.rows[ctx.name].since = "setup", time.monotonic()

        why = None
        with self._cond:
            if not self._queues[kind] and room():
                admitted()
            else:
                why = self._why_full(kind, need) if not fits() or self._queues[kind] else self._why_machine()
                self.rows[ctx.name].step, self.rows[ctx.name].since = f"waits: {why}", time.monotonic()
        if why is not None:
            self._say(f"{why}; {ctx.name} waits")  # never under the lock: the drawing takes it too
            with self._cond:
                self._wait(ctx, kind, room)
                admitted()
        self._said_problem()
        return kind, need, slot[0]

    def _said_problem(self) -> None:
        with self._cond:
            problem, self._slots.problem = self._slots.problem, None
        if problem:
            output.warn(problem)

    def give_setup(self, name: str, kind: str, need: int, slot: int | None) -> None:
        with self._cond:
            self._running[kind].remove(name)
            self._memory -= need
            self._slots.give(slot)
            self._wake(kind)

    def _why_machine(self) -> str:
        mine = len(self._running[COMPUTE])
        return f"{plural(self.limits.compute, 'compute setup')} running on this machine ({mine} of this run, the others of another `hybridiso up`)"

    def _fits(self, kind: str, need: int) -> Callable[[], bool]:
        limit = self.limits.compute if kind == COMPUTE else self.limits.io
        available = self.limits.memory_available

        def fits() -> bool:
            running = self._running[kind]
            if len(running) >= limit:
                return False
            # memory: what running setups' resources.memory ask, added up,
            # stays within what is available; one runs whatever it asks
            return not (running and need and available is not None and self._memory + need > available)

        return fits

    def _why_full(self, kind: str, need: int) -> str:
        running = self._running[kind]
        n = plural(len(running), f"{kind} setup")
        if kind == COMPUTE and len(running) < self.limits.compute and need and self.limits.memory_available is not None:
            return f"{n} running with {human_bytes(self._memory)} of {human_bytes(self.limits.memory_available)} memory (it asks {human_bytes(need)})"
        if self._queues[kind] and len(running) < (self.limits.compute if kind == COMPUTE else self.limits.io):
            return f"{n} running, others waiting first"
        if kind == COMPUTE:
            if self.limits.compute_why.startswith("limits."):
                return f"{n} running ({self.limits.compute_why})"
            return f"{n} running on {plural(self.limits.compute, 'core')}"
        return f"{n} running ({self.limits.io} at once: {self.limits.io_why})"


class _AgentSteps(Steps):
    def __init__(self, admission: Admission, ctx: EnvContext) -> None:
        self._a = admission
        self._ctx = ctx
        self._has_work = False

    @contextlib.contextmanager
    def job(self) -> Iterator[None]:
        self._a.take_work(self._ctx, "create" if self._ctx.record.phase == PHASE_CREATING else "checking")
        self._has_work = True
        try:
            yield
        finally:
            if self._has_work:
                self._a.give_work()
                self._has_work = False
            self._a.rows[self._ctx.name].done = True

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        if name != "setup" or not self._has_work:
            if name == "start" and self._ctx.record.strategy != "worktree" and self._ctx.agent is not None and self._ctx.agent.healthcheck:
                name = "start, waiting for healthy"
            self._a._set(self._ctx.name, name)
            yield
            return
        # setup gives its work slot to the others while it waits and runs
        self._a.give_work()
        self._has_work = False
        kind, need, slot = self._a.take_setup(self._ctx)
        try:
            yield
        finally:
            self._a.give_setup(self._ctx.name, kind, need, slot)
        self._a.take_work(self._ctx, "after setup")
        self._has_work = True
