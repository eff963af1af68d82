"""The decision rules for "isolation: auto" (docs/architecture.md), as a table."""
from __future__ import annotations

from pathlib import Path

import pytest

from hybridiso.manifest_file import parse_manifest
from hybridiso.manifest import ManifestError
from hybridiso.planner import Decision, Facts, decide, plan

SERVICES = "services:\n  pg: {kind: postgres}\n  shared: {kind: postgres, url: 'postgresql://x/y', template: t}\n"


def agent(spec: str):  # type: ignore[no-untyped-def]
    m = parse_manifest(SERVICES + "agents:\n  - " + spec + "\n", Path("m.yaml"))
    return m.agents[0], m


# (agent spec, facts about branches, strategy, words the reason must contain)
TABLE = [
    ("{name: a}", {}, "worktree", "cheapest"),
    ("{name: a, isolation: clone}", {}, "clone", "isolation: clone is set"),
    ("{name: a, isolation: worktree, workload: {needs: [own-refs]}}", {}, "worktree", "isolation: worktree is set"),
    ("{name: a, isolation: container, image: x}", {}, "container", "isolation: container is set"),
    ("{name: a, image: x, workload: {needs: [network-isolation]}}", {}, "container", "network-isolation"),
    ("{name: a, image: x, workload: {needs: [resource-limits]}}", {}, "container", "resource-limits"),
    ("{name: a, image: x, workload: {needs: [untrusted-code]}}", {}, "container", "untrusted-code"),
    ("{name: a, image: x, services: [pg]}", {}, "container", "service 'pg'"),
    ("{name: a, services: [shared]}", {}, "worktree", "cheapest"),
    ("{name: a, image: x, resources: {cpus: 1}}", {}, "container", "resources"),
    ("{name: a, image: x, healthcheck: {test: [\"true\"]}}", {}, "container", "healthcheck"),
    ("{name: a, workload: {needs: [own-refs]}}", {}, "clone", "own-refs"),
    ("{name: a, image: x, workload: {needs: [own-refs, untrusted-code]}}", {}, "container", "untrusted-code"),
    ("{name: a, branch: main}", {"main": "the main worktree"}, "clone", "checked out by the main worktree"),
    ("{name: a, branch: other}", {"main": "the main worktree"}, "worktree", "cheapest"),
    ("{name: a, branch: main, isolation: worktree}", {"main": "the main worktree"}, "worktree", "is set"),
    # an image or a command is used only by a container (issue 11: auto gave a worktree, silently)
    ("{name: a, image: 'python:3.12-slim'}", {}, "container", "has an image (python:3.12-slim)"),
    ("{name: a, image: x, command: [sleep, '1']}", {}, "container", "has an image"),
    ("{name: a, image: x, workload: {needs: [own-refs]}}", {}, "container", "has an image"),
    ("{name: a, image: x, isolation: clone}", {}, "clone", "isolation: clone is set"),
]


@pytest.mark.parametrize(("spec", "branches", "strategy", "reason"), TABLE)
def test_decision_rules(spec: str, branches: dict[str, str], strategy: str, reason: str) -> None:
    a, m = agent(spec)
    container_services = frozenset(n for n, s in m.services.items() if s.runs_in_container)
    d = decide(a, Facts(container_services, branches))
    assert d.strategy == strategy
    assert reason in d.reason


def _plan(text: str, **kw):  # type: ignore[no-untyped-def]
    m = parse_manifest(text, Path("m.yaml"))
    return plan(m, {a.name: f"/ws/{a.name}" for a in m.agents}, kw.pop("elsewhere", {}), **kw)


def test_second_agent_on_a_taken_branch_gets_a_clone() -> None:
    p = _plan("agents:\n  - {name: a, branch: shared}\n  - {name: b, branch: shared}\n")
    assert [x.strategy for x in p.agents] == ["worktree", "clone"]
    assert "agent a" in p.agents[1].reason


def test_existing_env_keeps_its_strategy_and_says_how_to_switch() -> None:
    p = _plan("agents:\n  - {name: a, workload: {needs: [own-refs]}}\n", existing={"a": "worktree"})
    assert p.agents[0].strategy == "worktree"
    assert "hybridiso down a" in p.agents[0].warnings[0]


def test_disk_budget_pushes_own_refs_clones_to_worktrees() -> None:
    text = "disk_budget: 1m\nagents:\n  - {name: a, workload: {needs: [own-refs]}}\n  - {name: b, isolation: clone}\n"
    p = _plan(text, clone_cost_bytes=10 << 20)
    assert [x.strategy for x in p.agents] == ["worktree", "clone"]
    assert any("disk_budget" in w for w in p.warnings)


def test_more_compute_agents_than_cores_is_reported() -> None:
    text = "agents:\n" + "".join(f"  - {{name: c{i}, workload: {{kind: compute}}}}\n" for i in range(3))
    p = _plan(text, cores=2)
    assert any("3 compute-bound agents" in w and "2 cores" in w for w in p.warnings)


def test_settings_the_strategy_does_not_use_are_said() -> None:
    p = _plan(
        "agents:\n  - {name: a, isolation: clone, image: x}\n  - {name: b, image: x, workload: {needs: [own-refs]}}\n"
        "  - {name: c, isolation: worktree, image: x, command: [x]}\n  - {name: d, image: x}\n"
    )
    notes = {x.agent.name: x.warnings for x in p.agents}
    assert notes["a"] == ("image is not used: it gets a clone (isolation: clone is set in the manifest)",)
    assert "needs own-refs, but a container shares the repository's refs" in notes["b"][0]
    assert notes["c"][0].startswith("image and command are not used: it gets a worktree")
    assert notes["d"] == ()


def test_a_container_or_worktree_on_a_checked_out_branch_is_said_before_up() -> None:
    p = _plan("agents:\n  - {name: a, branch: main, image: x}\n  - {name: b, branch: main}\n", elsewhere={"main": "the main worktree"})
    assert p.agents[0].strategy == "container"
    assert "checked out by the main worktree" in p.agents[0].warnings[0] and "`up` will refuse" in p.agents[0].warnings[0]
    assert p.agents[1].strategy == "clone" and p.agents[1].warnings == ()


# the reasons `plan` prints, word for word (the table above checks a part of each)
REASONS = [
    ("{name: a}", "worktree", "needs nothing beyond its own files: a worktree is the cheapest"),
    ("{name: a, isolation: clone}", "clone", "isolation: clone is set in the manifest"),
    ("{name: a, image: x, workload: {needs: [network-isolation]}}", "container", "needs network-isolation, which only a container gives"),
    ("{name: a, image: x, services: [pg]}", "container", "uses service 'pg', which runs in a container"),
    ("{name: a, image: x, resources: {cpus: 1}}", "container", "sets resources:, and CPU/memory/pids limits need a container"),
    ("{name: a, image: x, healthcheck: {test: [\"true\"]}}", "container", "sets healthcheck:, which runs in the agent's container"),
    ("{name: a, image: x}", "container", "has an image (x), which runs in a container"),
    ("{name: a, workload: {needs: [own-refs]}}", "clone", "needs own-refs (history rewrites, own remotes/config/hooks), which a worktree shares"),
]


@pytest.mark.parametrize(("spec", "strategy", "reason"), REASONS)
def test_each_rule_gives_its_reason_in_full(spec: str, strategy: str, reason: str) -> None:
    a, m = agent(spec)
    container_services = frozenset(n for n, s in m.services.items() if s.runs_in_container)
    assert decide(a, Facts(container_services, {})) == Decision(strategy, reason)


def test_a_command_alone_asks_for_a_container_and_the_manifest_says_it_needs_an_image() -> None:
    a, _ = agent("{name: a, image: x, command: [sleep, '1']}")
    alone = a.model_copy(update={"image": None})
    assert decide(alone, Facts()) == Decision("container", "sets command:, which runs in the agent's container")
    with pytest.raises(ManifestError) as e:
        parse_manifest("agents:\n  - {name: a, command: [x]}\n", Path("m.yaml"))
    assert "sets command:, which runs in the agent's container" in str(e.value) and "needs an 'image'" in str(e.value)


def test_plan_gives_an_agent_of_a_containerised_service_a_container() -> None:
    p = _plan(SERVICES + "agents:\n  - {name: a, image: x, services: [pg]}\n  - {name: b, services: [shared]}\n")
    assert [(x.strategy, x.reason) for x in p.agents] == [
        ("container", "uses service 'pg', which runs in a container"),
        ("worktree", "needs nothing beyond its own files: a worktree is the cheapest"),
    ]


def test_an_existing_environment_holds_its_own_branch_without_a_word() -> None:
    """Its own branch, held by itself, is not "checked out by another"; a
    second agent on that branch gets a clone and is told who holds it."""
    p = _plan(
        "agents:\n  - {name: b, branch: hybridiso/a}\n  - {name: a}\n",
        existing={"a": "worktree"},
        held_by_agents={"hybridiso/a": "a"},
    )
    by = {x.agent.name: x for x in p.agents}
    assert (by["a"].strategy, by["a"].reason, by["a"].warnings) == ("worktree", "already created as a worktree", ())
    assert by["b"].strategy == "clone" and by["b"].reason == "branch 'hybridiso/a' is already checked out by agent a"


def test_an_existing_container_still_hears_what_it_does_not_use() -> None:
    p = _plan("agents:\n  - {name: a, image: x, workload: {needs: [own-refs]}}\n", existing={"a": "container"})
    assert p.agents[0].reason == "already created as a container"
    assert p.agents[0].warnings == (
        "needs own-refs, but a container shares the repository's refs like a worktree: "
        "set isolation: clone if its refs must be its own (the image is then not used)",
    )


def test_a_worktree_on_a_branch_another_holds_is_told_up_will_refuse() -> None:
    p = _plan("agents:\n  - {name: a, branch: main, isolation: worktree}\n", elsewhere={"main": "the main worktree"})
    assert p.agents[0].warnings == (
        "branch 'main' is checked out by the main worktree, and a worktree needs it checked out too: "
        "`up` will refuse; give the agent another branch",
    )


def test_disk_budget_counts_only_new_clones_and_only_when_over() -> None:
    text = "disk_budget: 15m\nagents:\n  - {name: a, workload: {needs: [own-refs]}}\n  - {name: b, workload: {needs: [own-refs]}}\n"
    over = _plan(text, clone_cost_bytes=10 << 20)
    assert [x.strategy for x in over.agents] == ["worktree", "worktree"]
    assert over.warnings == ("clones would need about 20 MiB, over disk_budget 15m",)
    assert over.agents[0].reason.endswith("(but disk_budget pushes it to a worktree)")
    assert over.agents[0].warnings == ("disk_budget 15m is too small for 2 clones; using a worktree instead",)
    # b exists already as a clone: only a is new, 10 MiB fits
    fits = _plan(text, clone_cost_bytes=10 << 20, existing={"b": "clone"})
    assert [x.strategy for x in fits.agents] == ["clone", "clone"] and fits.warnings == ()
    roomy = _plan(text.replace("15m", "100m"), clone_cost_bytes=10 << 20)
    assert [x.strategy for x in roomy.agents] == ["clone", "clone"] and roomy.warnings == ()
    assert _plan(text.replace("disk_budget: 15m\n", ""), clone_cost_bytes=10 << 20).warnings == ()  # no budget, nothing to say
    assert _plan(text).warnings == ()  # no cost known: nothing to compare


def test_compute_bound_agents_are_counted_against_the_cores() -> None:
    kinds = ("compute", "build", "test", "edit", "io")
    text = "agents:\n" + "".join(f"  - {{name: {k[:4]}, workload: {{kind: {k}}}}}\n" for k in kinds)
    assert _plan(text, cores=2).warnings == ("3 compute-bound agents (comp, buil, test) on 2 cores: this machine sustains about 2 at full speed",)
    assert _plan(text, cores=3).warnings == ()  # as many as the cores: nothing to say


def test_each_agents_plan_names_its_branch_and_path() -> None:
    p = _plan("agents:\n  - {name: a}\n  - {name: b, branch: feature/x}\n")
    assert [(x.branch, x.path) for x in p.agents] == [("hybridiso/a", "/ws/a"), ("feature/x", "/ws/b")]


def test_a_disk_budget_exactly_met_is_not_over() -> None:
    text = "disk_budget: 20m\nagents:\n  - {name: a, workload: {needs: [own-refs]}}\n  - {name: b, workload: {needs: [own-refs]}}\n"
    assert [x.strategy for x in _plan(text, clone_cost_bytes=10 << 20).agents] == ["clone", "clone"]


def test_an_existing_agent_of_a_containerised_service_is_judged_with_its_services() -> None:
    p = _plan(SERVICES + "agents:\n  - {name: a, image: x, services: [pg]}\n", existing={"a": "container"})
    assert p.agents[0].strategy == "container" and p.agents[0].warnings == ()


def test_disk_budget_never_pushes_a_clone_chosen_for_its_branch() -> None:
    """The clone is there because a worktree cannot have that branch: only
    a clone chosen for own-refs may become a worktree under the budget."""
    text = "disk_budget: 1m\nagents:\n  - {name: a, branch: main}\n  - {name: b, isolation: clone, workload: {needs: [own-refs]}}\n"
    p = _plan(text, clone_cost_bytes=10 << 20, elsewhere={"main": "the main worktree"})
    assert [x.strategy for x in p.agents] == ["clone", "clone"]
    assert p.warnings == ("clones would need about 20 MiB, over disk_budget 1m",)
