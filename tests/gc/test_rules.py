"""gc/rules.py: what gc says about each finding, and its one-line summary.
The table of decisions is tests/gc/test_gc.py::test_decide_table; these pin
the words a user reads (the reason shown beside each finding) and the
summary's counts, which no CLI test reads closely enough to fail on."""
from __future__ import annotations

from typing import Any

import pytest

from hybridiso.output import json_value
from hybridiso.gc.merged import Verdict
from hybridiso.gc.rules import KEPT, MERGED, AgentFacts, Finding, decide, summary


def _facts(**kw: Any) -> AgentFacts:
    base = dict(name="a", phase="ready", exists=True, registered=True, work="", verdict=Verdict(False, "", 1), owns_branch=True, branch="hybridiso/a")
    base.update(kw)
    return AgentFacts(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "facts, reason",
    [
        (_facts(work="1 modified: x"), "work gc would lose: 1 modified: x"),
        (_facts(exists=False, verdict=Verdict(False, "", 0)), "directory was deleted; git metadata, record and port leases go"),
        (
            _facts(exists=False, verdict=Verdict(False, "", 2)),
            "directory was deleted; git metadata, record and port leases go; branch hybridiso/a kept (2 commits not in base)",
        ),
        (_facts(exists=False, verdict=Verdict(False, "", 2), owns_branch=False), "directory was deleted; git metadata, record and port leases go"),
        (_facts(registered=False, removing=True), "what an earlier removal could not delete"),
        (_facts(registered=False), "directory exists but git does not know it; look inside, then delete it yourself"),
        (
            _facts(phase="creating", verdict=Verdict(False, "", 1)),
            "creation never finished (it failed or was interrupted); branch hybridiso/a kept (1 commit not in base)",
        ),
        (_facts(verdict=None), "branch hybridiso/a not found; look at the environment by hand"),
        (_facts(verdict=Verdict(True, "squash", 2, "main")), "merged into main (squash)"),
        (_facts(verdict=Verdict(True, "rebase", 2, "origin/main"), upstream_gone="origin/x"), "merged into origin/main (rebase); upstream origin/x deleted"),
        (_facts(upstream_gone="origin/x", verdict=Verdict(False, "", 0)), "upstream origin/x was deleted and the branch has no commits of its own"),
        (
            _facts(upstream_gone="origin/x", verdict=Verdict(False, "", 3)),
            "upstream origin/x was deleted but 3 commits not in base: merge or push them, or `hybridiso down --force` backs them up",
        ),
        (_facts(verdict=Verdict(False, "", 0)), "no commits of its own yet"),
        (_facts(exists=False, verdict=None), "directory was deleted; git metadata, record and port leases go; branch hybridiso/a kept (branch not found)"),
    ],
)
def test_each_decision_says_why(facts: AgentFacts, reason: str) -> None:
    assert decide(facts).reason == reason


def test_a_branch_goes_only_with_nothing_of_its_own_on_it() -> None:
    assert decide(_facts(exists=False, verdict=None)).delete_branch is False  # not found: nothing to judge
    assert decide(_facts(phase="creating", verdict=Verdict(False, "", 0), owns_branch=False)).delete_branch is False  # not ours
    assert decide(_facts(registered=False, removing=True, verdict=Verdict(False, "", 1))).delete_branch is False
    assert decide(_facts(registered=False, removing=True, verdict=Verdict(False, "", 0))).delete_branch is True
    assert decide(_facts(upstream_gone="origin/x", verdict=Verdict(False, "", 0), owns_branch=False)).delete_branch is False


def _finding(kind: str, remove: bool, reason: str, result: str = "") -> Finding:
    return Finding(kind=kind, target=f"t-{kind}-{reason[:3]}", remove=remove, reason=reason, result=result)


def test_summary_counts_by_kind_and_by_reason() -> None:
    findings = [
        _finding(MERGED, True, "merged into main (squash)"),
        _finding(MERGED, True, "merged into main (ancestry)"),
        _finding("zombie", True, "directory was deleted; git metadata go"),
        _finding(KEPT, False, "2 commits not in base"),
        _finding(KEPT, False, "1 commit not in base"),
        _finding(KEPT, False, "work gc would lose: 1 modified: x"),
    ]
    assert summary(findings, applied=False) == (
        "gc: would remove 3 (2 merged, 1 zombie); kept 3 (2: commits not in base, 1: work gc would lose)"
    )
    findings[0].result, findings[1].result, findings[2].result = "removed", "failed", "removed"
    assert summary(findings, applied=True) == (
        "gc: removed 2 (1 merged, 1 zombie); could not finish 1 (1 merged); kept 3 (2: commits not in base, 1: work gc would lose)"
    )
    assert summary([], applied=True) == "gc: removed 0; kept 0"
    # a reason without a colon is counted by what comes before its first ';'
    unknown = [_finding(KEPT, False, "directory exists but git does not know it; look inside, then delete it yourself")]
    assert summary(unknown, applied=False) == "gc: would remove 0; kept 1 (1: directory exists but git does not know it)"


def test_a_finding_as_json() -> None:
    f = Finding(kind=MERGED, target="a", remove=True, reason="merged into main (squash)", owns=["/ws/a"], apply=lambda: [])
    assert json_value(f) == {
        "kind": MERGED, "target": "a", "action": "remove", "reason": "merged into main (squash)",
        "owns": ["/ws/a"], "result": None, "left": [],
    }
    kept = Finding(kind=KEPT, target="b", remove=False, reason="x", result="kept", left=["/ws/b/f"])
    shown = json_value(kept)
    assert shown["action"] == "keep" and shown["result"] == "kept" and shown["left"] == ["/ws/b/f"]


def test_an_environment_whose_branch_is_gone_is_kept() -> None:
    d = decide(_facts(verdict=None))
    assert (d.remove, d.kind, d.delete_branch) == (False, KEPT, False)
