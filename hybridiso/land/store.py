"""Where ``land`` keeps its things, under the state dir
(``<common git dir>/hybridiso/land/``), and its lock and journal.

- ``lock``: one ``land`` at a time.  It is not the repository lock: a check
  may run for half an hour, and ``up``/``status``/``exec`` in other shells
  must not wait for it; the repository lock is taken only for the moment an
  agent's branch and environment are moved (queue.py).
- ``journal.json``: what a run is doing that a ``kill -9`` would leave
  half-done: the check's process group (stopped by the next run) and a
  landing whose target ref moved but whose agent branch did not yet (finished
  by the next run), and the checks' scratch databases (dropped by the next
  run; land/databases.py).  Written atomically before the step it describes.
- ``scratch/``: the scratch worktrees; everything in it belongs to the run
  holding the lock, so the next run (or ``gc``) removes what a killed run left.
- ``clones/``: a clone agent's checks' scratch clones (land/clones.py),
  the same way: the next run (or ``gc``) removes what a killed run left.
- ``kept/``: scratch worktrees of failed candidates kept by ``--keep-failed``.
- ``runs/<run>/``: check logs (one per candidate) and the landing report.
"""
from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import PurePosixPath
from typing import Any

from hybridiso import json_data, safe_files
from hybridiso.errors import UserError
from hybridiso.state import ProcessGroup, StateStore, atomic_write_text, hold_lock, lock_holder

LAND_DIR = PurePosixPath("hybridiso", "land")
RESULT_FIELDS = ("result", "run", "landed", "why")  # of each agent in last.json (report.remember)
JOURNAL_LIMIT = 1 << 20  # a journal names a few groups and databases: bigger is not land's


@dataclass
class Landing:
    """A candidate between moving the target and moving its branch."""

    agent: str
    branch: str
    where: str  # the repository whose refs/heads/<branch> is the agent's (a clone's own)
    tip: str  # the branch's commit that was checked
    landed: str  # what the target moved to
    target_ref: str
    before: str  # the target before


@dataclass
class Journal:
    pid: int
    run: str
    agent: str = ""
    phase: str = ""
    groups: list[ProcessGroup] = field(default_factory=list)
    landing: Landing | None = None
    databases: list[dict[str, str]] = field(default_factory=list)  # {server, name}: the checks' scratch databases

    @classmethod
    def parse(cls, data: Any) -> Journal:
        """The journal in ``data``, every field of the type land writes;
        ValueError (why) otherwise: a value is never coerced into use.
        What the fields name is checked against the repository by
        queue.check_journal before anything is acted on (docs/faults.md row 42)."""
        if not isinstance(data, dict):
            raise ValueError("it is not a JSON object")
        pid = data.get("pid")
        if type(pid) is not int or pid <= 0:
            raise ValueError(f"pid {pid!r} is no process id")
        run, agent, phase = _str(data, "run"), _str(data, "agent", ""), _str(data, "phase", "")
        groups = []
        for raw in _list(data, "groups"):
            if not isinstance(raw, dict) or not all(type(raw.get(k)) is int for k in ("pgid", "start")) or not all(
                isinstance(raw.get(k), str) for k in ("boot_id", "token", "command")
            ) or type(raw.get("started_at", 0.0)) not in (int, float):
                raise ValueError(f"groups holds {str(raw)[:80]!r}, not a process group land records")
            group = ProcessGroup.from_json(raw)
            if group is None:
                raise ValueError(f"process group {raw.get('pgid')!r} cannot be one land recorded")
            groups.append(group)
        landing = None
        raw = data.get("landing")
        if raw is not None:
            if not isinstance(raw, dict) or not all(isinstance(raw.get(k), str) for k in Landing.__dataclass_fields__):
                raise ValueError("its landing is not one land writes")
            landing = Landing(**{k: raw[k] for k in Landing.__dataclass_fields__})
        dbs = []
        for d in _list(data, "databases"):
            if not isinstance(d, dict) or not all(isinstance(v, str) for v in d.values()) or not {"server", "name"} <= d.keys():
                raise ValueError(f"databases holds {str(d)[:80]!r}, not a check database")
            dbs.append(dict(d))
        return cls(pid, run, agent, phase, groups, landing, dbs)


def _str(data: dict[str, Any], key: str, default: str | None = None) -> str:
    value = data.get(key, default)
    if not isinstance(value, str):
        raise ValueError(f"{key} {value!r} is not a string")
    return value


def _list(data: dict[str, Any], key: str) -> list[Any]:
    value = data.get(key, [])
    if not isinstance(value, list):
        raise ValueError(f"{key} is not a list")
    return value


class JournalInvalid(UserError):
    """land's journal is unreadable or names what land never wrote there."""


class LandStore:
    def __init__(self, store: StateStore) -> None:
        self.anchor = store.anchor  # the common git dir
        self.rel = LAND_DIR
        self.dir = self.anchor.joinpath(*LAND_DIR.parts)
        self.scratch_dir = self.dir / "scratch"
        self.kept_dir = self.dir / "kept"
        self.clones_dir = self.dir / "clones"
        self.runs_dir = self.dir / "runs"
        self.lock_path = self.dir / "lock"
        self.journal_path = self.dir / "journal.json"
        self.results_path = self.dir / "last.json"

    def ensure(self) -> None:
        for d in ("scratch", "clones", "kept", "runs"):
            safe_files.ensure_dir(self.anchor, self.rel / d)

    @contextlib.contextmanager
    def locked(self, what: str) -> Iterator[None]:
        """One ``land`` at a time; the second says for whom it waits."""
        with hold_lock(self.anchor, self.rel / "lock", what, "the land lock"):
            yield

    def held_by_other(self) -> str | None:
        """Who holds the land lock now (None when nobody does)."""
        return lock_holder(self.lock_path)

    # --- journal --------------------------------------------------------------

    def read_journal(self) -> Journal | None:
        """The journal a killed run left (None: there is none).  A journal
        land could not have written (a symlink, a FIFO, too big, not JSON,
        a field of the wrong type) is JournalInvalid: one message naming
        the file, and nothing it says is acted on (docs/faults.md row 42)."""
        try:
            raw = safe_files.read_text(self.anchor, self.rel / "journal.json", limit=JOURNAL_LIMIT)
        except safe_files.UnsafePath as e:
            raise self.invalid(e.message) from None
        if raw is None:
            return None
        try:
            data = json_data.loads(raw)
        except ValueError as e:
            raise self.invalid(f"it is not valid JSON ({e})") from None
        try:
            return Journal.parse(data)
        except ValueError as e:
            raise self.invalid(str(e)) from None

    def invalid(self, why: str) -> JournalInvalid:
        path = self.journal_path
        return JournalInvalid(
            f"land's journal {path} is not one hybridiso land wrote: {why}; nothing in it was acted on",
            hint=(
                f"if a `hybridiso land` was killed, stop what its check may have left running, then remove the file "
                f"(`rm -- '{path}'`) and run `hybridiso land` again"
            ),
        )

    def write_journal(self, journal: Journal) -> None:
        atomic_write_text(self.journal_path, json.dumps(asdict(journal), indent=1), anchor=self.anchor)

    def clear_journal(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.journal_path.unlink()

    # --- results, for status ------------------------------------------------

    def write_results(self, results: dict[str, dict[str, Any]]) -> None:
        old = self.read_results()
        old.update(results)
        atomic_write_text(self.results_path, json.dumps(old, indent=1, sort_keys=True), anchor=self.anchor)

    def read_results(self) -> dict[str, dict[str, Any]]:
        try:
            raw = safe_files.read_text(self.anchor, self.rel / "last.json")
            data = json_data.loads(raw) if raw else {}
        except (safe_files.UnsafePath, ValueError):
            return {}
        if not isinstance(data, dict):
            return {}
        # only what report.remember writes, printable: status prints it (docs/faults.md row 42)
        return {
            k: {f: v[f] for f in RESULT_FIELDS if isinstance(v.get(f), str) and v[f].isprintable()}
            for k, v in data.items()
            if isinstance(k, str) and isinstance(v, dict)
        }

    def run_dir(self, run: str) -> PurePosixPath:
        return self.rel / "runs" / run
