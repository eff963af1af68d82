"""What ``hybridiso gc`` does with each thing it finds: the rules, in one place.

``decide`` is pure (facts in, decision out) so the rules are tested as a table
(tests/gc/test_gc.py).  The order matters and says what gc values most: work the
user has not committed or merged is never removed (docs/faults.md rows 5, 6), nor
anything else only the environment holds (docs/faults.md rows 23, 24); only then
do "gone", "interrupted", "merged" and "deleted upstream" make an environment
removable.

Finders (``gc/finders.py`` for git and the workspace, ``gc/leftovers.py`` for
Docker resources and database branches whose agent is gone) look at the
project and return ``Finding``s, each with its own ``apply``; gc itself never
imports docker or a database driver.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Literal, Protocol

from hybridiso.gc.merged import Verdict
from hybridiso.output import NOT_IN_JSON
from hybridiso.state import PHASE_READY, Phase

if TYPE_CHECKING:
    from hybridiso.project import Project
    from hybridiso.state import State

# kinds of finding (each finder module names its own), in the order the summary lists them
Kind = Literal[
    "merged", "zombie", "upstream-gone", "interrupted", "leftovers", "orphan-dir", "kept",
    "docker", "database", "process", "firewall", "land-scratch", "land-check", "land-database", "land-container",
]
MERGED: Kind = "merged"
ZOMBIE: Kind = "zombie"
UPSTREAM_GONE: Kind = "upstream-gone"
INTERRUPTED: Kind = "interrupted"
LEFTOVERS: Kind = "leftovers"
ORPHAN: Kind = "orphan-dir"
KEPT: Kind = "kept"
# what became of a finding after --yes
Result = Literal["removed", "kept", "failed"]


@dataclass(frozen=True)
class AgentFacts:
    name: str
    phase: Phase
    exists: bool  # the directory is there
    registered: bool  # git knows it (a listed worktree, a clone's .git)
    # everything but the branch's own commits that removal would lose
    # (files, other refs, stash, detached commits, submodules, an env git
    # cannot read: lifecycle.inspect_work), described ('' = none)
    work: str
    verdict: Verdict | None  # None when the branch cannot be found
    upstream_gone: str = ""  # the upstream ref that was deleted, if any
    owns_branch: bool = False  # hybridiso created the branch in the main repository
    branch: str = ""
    removing: bool = False  # an earlier gc/down started removing it and failed
    tip: str | None = None  # the branch's commit when judged
    busy: str = ""  # the running hybridiso that has claimed it ("pid N (hybridiso up)"), if one has


@dataclass(frozen=True)
class Decision:
    remove: bool
    kind: Kind
    reason: str
    delete_branch: bool = False


def decide(f: AgentFacts) -> Decision:
    own = f.verdict.own_commits if f.verdict else 0
    merged = bool(f.verdict and f.verdict.merged)
    # the branch may go only when nothing on it would be lost
    branch_ok = f.owns_branch and (merged or (f.verdict is not None and own == 0))
    keep_branch_note = "" if branch_ok or not f.owns_branch else f"; branch {f.branch} kept ({_describe(f.verdict)})"
    if f.busy:
        return Decision(False, KEPT, f"{f.busy} is working on it now")
    if f.work:
        return Decision(False, KEPT, f"work gc would lose: {f.work}")
    if not f.exists:
        return Decision(True, ZOMBIE, "directory was deleted; git metadata, record and port leases go" + keep_branch_note, branch_ok)
    if f.removing and not f.registered:
        return Decision(True, LEFTOVERS, "what an earlier removal could not delete", branch_ok)
    if not f.registered:
        return Decision(False, KEPT, "directory exists but git does not know it; look inside, then delete it yourself")
    if f.phase != PHASE_READY:
        return Decision(True, INTERRUPTED, "creation never finished (it failed or was interrupted)" + keep_branch_note, branch_ok)
    if f.verdict is None:
        return Decision(False, KEPT, f"branch {f.branch} not found; look at the environment by hand")
    if merged:
        gone = f"; upstream {f.upstream_gone} deleted" if f.upstream_gone else ""
        return Decision(True, MERGED, f.verdict.describe() + gone, f.owns_branch)
    if f.upstream_gone:
        if own == 0:
            return Decision(True, UPSTREAM_GONE, f"upstream {f.upstream_gone} was deleted and the branch has no commits of its own", branch_ok)
        return Decision(
            False, KEPT, f"upstream {f.upstream_gone} was deleted but {_describe(f.verdict)}: merge or push them, or `hybridiso down --force` backs them up"
        )
    return Decision(False, KEPT, _describe(f.verdict))


def _describe(v: Verdict | None) -> str:
    return v.describe() if v is not None else "branch not found"


@dataclass
class Finding:
    """One thing gc found: removed with ``--yes`` when ``remove``."""

    kind: Kind
    target: str
    remove: bool = field(metadata=NOT_IN_JSON)  # --json says it as ``action``
    reason: str
    owns: list[str] = field(default_factory=list)
    # does the removal; returns what could not be removed (empty: all gone)
    apply: Callable[[], list[str]] | None = field(default=None, repr=False, compare=False, metadata=NOT_IN_JSON)
    result: Result | None = None  # after --yes
    left: list[str] = field(default_factory=list)

    JSON_PROPERTIES: ClassVar[tuple[str, ...]] = ("action",)

    @property
    def action(self) -> Literal["remove", "keep"]:
        return "remove" if self.remove else "keep"


@dataclass(frozen=True)
class Run:
    """What ``gc --json`` prints."""

    applied: bool
    findings: list[Finding]
    summary: str


class Finder(Protocol):
    """What every gc finder is: the project and its state in, findings out."""

    def __call__(self, project: Project, state: State, dry_run: bool) -> list[Finding]: ...


def summary(findings: list[Finding], applied: bool) -> str:
    removed = [f for f in findings if f.remove and (not applied or f.result == "removed")]
    failed = [f for f in findings if f.result == "failed"]
    kept = [f for f in findings if not f.remove]
    verb = "removed" if applied else "would remove"
    parts = [f"{verb} {len(removed)}{_by_kind(removed)}"]
    if failed:
        parts.append(f"could not finish {len(failed)}{_by_kind(failed)}")
    parts.append(f"kept {len(kept)}{_by_reason(kept)}")
    return "gc: " + "; ".join(parts)


def _by_kind(items: list[Finding]) -> str:
    counts: dict[str, int] = {}
    for f in items:
        counts[f.kind] = counts.get(f.kind, 0) + 1
    return f" ({', '.join(f'{n} {k}' for k, n in counts.items())})" if counts else ""


def _by_reason(items: list[Finding]) -> str:
    counts: dict[str, int] = {}
    for f in items:
        key = f.reason.split(":")[0].split(";")[0]
        key = "commits not in base" if "not in base" in key else key
        counts[key] = counts.get(key, 0) + 1
    return f" ({', '.join(f'{n}: {k}' for k, n in counts.items())})" if counts else ""
