"""``land --parallel K``: speculative checks (issue 14 item 3; docs/land.md).

Candidate k is applied on top of the target plus candidates 1..k-1 (each
assumed green) and checked at the same time as they are, each in a scratch
worktree of its own, at most K checks running.  Candidates still land one
at a time, in order, by the same steps as the sequential train (queue.py):
the one at the head lands when its check is green and its base is the
target as it is, by the same compare-and-swap.

When a candidate does not land (red check, branch deleted, ...), everything
behind it was applied on a base that will never be: those are stopped
(their checks killed with their groups), their scratch worktrees removed,
and they are applied again without it and checked again.  So each candidate
is checked, and lands, on exactly the base the sequential train gives it,
and the landed history is the sequential one (tests/land/test_land_parallel.py
compares the two, commit ids included).

A red check behind the head is acted on at once: whatever is behind *it* is
rebuilt without it, whether or not the ones ahead of it then land (if one
of them does not, the red one is rebuilt too).  Prediction, applying and
landing run in this thread (git's worktree and ref updates are never raced);
only the checks run in threads, each waiting on its own process group.
"""
from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from hybridiso import git, output, process_groups
from hybridiso.land.queue import (
    DONE,
    FAILED,
    LANDED,
    MAX_ATTEMPTS,
    TIP_MOVED,
    Build,
    Candidate,
    Outcome,
    Run,
    Train,
    _log,
    gave_up,
)
from hybridiso.state import ProcessGroup

class Cancelled(Exception):
    """Raised into a check whose base is no longer what would land."""


@dataclass
class Slot:
    """A candidate prepared on a speculative base."""

    cand: Candidate
    outcome: Outcome
    tip: str | None = None
    build: Build | None = None  # None: a result with no check (conflict, empty, ...) or no candidate at all
    thread: threading.Thread | None = None
    passed: bool | None = None  # written by the check's thread
    verdict: bool | None = None  # what the main loop has seen of it
    cancelled: bool = False
    groups: list[ProcessGroup] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def lands(self) -> bool:
        """Assumed to land: the next candidate is applied on top of it."""
        return self.build is not None and self.verdict is not False

    @property
    def checking(self) -> bool:
        return self.build is not None and self.verdict is None


@dataclass
class Spent:
    """What a candidate cost over all its (re)builds."""

    started: float
    checks: int = 0
    check_seconds: float = 0.0
    attempts: int = 1


def speculate(train: Train, run: Run, cands: Sequence[Candidate], ref: str, explicit: bool) -> None:
    _Speculation(train, run, ref, explicit).run(cands)


class _Speculation:
    def __init__(self, train: Train, run: Run, ref: str, explicit: bool) -> None:
        self.train = train
        self.landing = run
        self.ref = ref
        self.explicit = explicit
        self.k = train.options.parallel
        run.parallel = self.k
        self.root = train.root
        self.pending: deque[tuple[Candidate, str | None]] = deque()  # (candidate, its tip when it is not to be read again)
        self.window: list[Slot] = []
        self.events: queue.Queue[Slot] = queue.Queue()
        self.spent: dict[str, Spent] = {}
        self.target = git.resolve_commit(self.root, ref) or ""

    def run(self, cands: Sequence[Candidate]) -> None:
        output.message(f"hybridiso: checking up to {self.k} candidates at once, each on top of those before it")
        self.pending.extend((c, None) for c in cands)
        try:
            while True:
                self._fill()
                if not self.window:
                    return
                head = self.window[0]
                if head.checking:
                    self._settle(self.events.get())
                    continue
                if not self._resolve(head):
                    self._stop_all()
                    return
        finally:
            for slot in self.window:
                self._cancel(slot)
            self.window.clear()

    # --- the window ---------------------------------------------------------

    def _base(self) -> str:
        """What the next candidate is applied on: the last one assumed to land."""
        for slot in reversed(self.window):
            if slot.lands and slot.build is not None:
                return slot.build.commit
        return self.target

    def _fill(self) -> None:
        while self.pending and sum(1 for s in self.window if s.lands) < self.k:
            cand, tip = self.pending.popleft()
            self.window.append(self._prepare(cand, tip))

    def _prepare(self, cand: Candidate, tip: str | None) -> Slot:
        name = cand.agent.name
        spent = self.spent.setdefault(name, Spent(time.monotonic()))
        o = Outcome(name, cand.branch, self.train._method(cand))
        o.attempts = spent.attempts
        slot = Slot(cand, o)
        base = self._base()
        if tip is None:
            tip = self.train.admit(cand, base, o, self.explicit)
            if tip is None:
                return slot
        else:
            o.tip, o.commits = tip, git.count_commits(self.root, base, tip)
        slot.tip = tip
        slot.build = self.train.build(self.landing, cand, base, tip, o)
        if slot.build is None:
            return slot
        if not self.train.project.manifest.land_check_for(cand.agent):
            o.why, slot.passed, slot.verdict = "no land.check: landed unchecked", True, True
            return slot
        slot.thread = threading.Thread(target=self._check, args=(slot,), name=f"land-check-{name}", daemon=True)
        slot.thread.start()
        return slot

    def _check(self, slot: Slot) -> None:
        """In its thread: the check, then the slot back to the main loop."""
        build = slot.build
        assert build is not None

        def started(group: ProcessGroup) -> None:
            with slot.lock:
                if slot.cancelled:
                    raise Cancelled
                slot.groups.append(group)

        ok = False
        try:
            ok = self.train.check(self.landing, build.cand, build.scratch, build.commit, slot.outcome, started)
        except Exception as e:  # noqa: BLE001  (stopped, or it could not run: red either way; the main loop hears of it below)
            if not slot.outcome.result:
                slot.outcome.result, slot.outcome.why = FAILED, "its check was stopped" if isinstance(e, Cancelled) else f"its check could not run: {e}"
        finally:
            slot.passed = ok
            self.events.put(slot)

    def _settle(self, slot: Slot) -> None:
        """A check ended (main thread)."""
        if slot.cancelled or slot.verdict is not None or slot not in self.window:
            return
        if slot.thread is not None:
            slot.thread.join()
        slot.verdict = bool(slot.passed)
        self._charge(slot)
        if slot.verdict:
            self._remove_scratch(slot)
            return
        # red: those behind it were applied on top of it; again without it
        index = self.window.index(slot)
        self._discard(self.window[index + 1:], because=slot)
        del self.window[index + 1:]

    def _charge(self, slot: Slot) -> None:
        spent = self.spent[slot.cand.agent.name]
        spent.checks += slot.outcome.checks
        spent.check_seconds += slot.outcome.check_seconds
        slot.outcome.checks, slot.outcome.check_seconds = 0, 0.0

    def _discard(self, slots: list[Slot], *, because: Slot) -> None:
        """``slots`` were applied on a base that will not be: stop them and
        queue them again, in order, in front of the rest."""
        for slot in slots:
            self._cancel(slot)
        names = ", ".join(s.cand.agent.name for s in slots if s.build is not None)
        if names:
            _log(because.cand.agent.name, "rebuild", f"{names}: applied again without it")
        self.pending.extendleft(reversed([(s.cand, None) for s in slots]))

    def _cancel(self, slot: Slot) -> None:
        """Stop a slot's check (its process groups) and remove its scratch worktree."""
        with slot.lock:
            slot.cancelled = True
            groups = list(slot.groups)
        if slot.thread is not None:
            if slot.passed is None and groups:
                process_groups.stop(groups, grace=1.0)
            slot.thread.join()
            self._charge(slot)
        self._remove_scratch(slot)

    def _remove_scratch(self, slot: Slot) -> None:
        if slot.build is not None and not slot.outcome.kept:  # given back once (again: nothing); cleaned or removed when taken
            self.train.scratches.give_back(slot.build.scratch)

    # --- the head -----------------------------------------------------------

    def _resolve(self, head: Slot) -> bool:
        """The head's check is over (or it had none): land it or say why
        not.  False when the queue stops."""
        o = head.outcome
        build = head.build
        self.window.pop(0)
        if build is None or not head.verdict:
            if build is not None:
                self.train.keep_failed(build)  # --keep-failed: kept, or removed just below
                self._remove_scratch(head)
            return self._record(head)
        self._remove_scratch(head)  # a check is over; nothing to check had one too
        step, value = self.train.conclude(self.landing, build, self.ref)
        if step == DONE:
            if o.result == LANDED:
                self.target = build.commit
            else:  # missing, refused: it will not land, and those behind assumed it would
                self._discard(self.window[:], because=head)
                self.window.clear()
            return self._record(head)
        # its branch moved, or the target did: it is applied and checked
        # again, and so is everything behind it
        spent = self.spent[head.cand.agent.name]
        spent.attempts += 1
        behind = self.window[:]
        self.window.clear()
        for slot in behind:
            self._cancel(slot)
        self.pending.extendleft(reversed([(s.cand, None) for s in behind]))
        if spent.attempts > MAX_ATTEMPTS:
            o.result, o.why = FAILED, gave_up()
            return self._record(head)
        if step == TIP_MOVED:
            self.pending.appendleft((head.cand, value))
        else:
            self.target = value
            self.pending.appendleft((head.cand, head.tip))
        return True

    def _record(self, slot: Slot) -> bool:
        o = slot.outcome
        spent = self.spent[o.agent]
        o.checks += spent.checks
        o.check_seconds += spent.check_seconds
        o.attempts = min(spent.attempts, MAX_ATTEMPTS)
        o.seconds = time.monotonic() - spent.started
        if not o.result:
            return True  # not a candidate: nothing beyond the target
        self.train.said(o)
        self.landing.outcomes.append(o)
        return not self.train.stops(o)

    def _stop_all(self) -> None:
        for slot in self.window:
            self._cancel(slot)
        rest = [s.cand for s in self.window] + [c for c, _ in self.pending]
        self.window.clear()
        self.pending.clear()
        self.landing.outcomes.extend(self.train.skipped(c) for c in rest)
