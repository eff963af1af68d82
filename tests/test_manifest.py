from __future__ import annotations

from pathlib import Path

import pytest

from hybridiso.manifest import ManifestError, load_manifest, parse_manifest, parse_size

P = Path("/repo/hybridiso.yaml")


def errors(text: str) -> str:
    with pytest.raises(ManifestError) as e:
        parse_manifest(text, P)
    return str(e.value)


def test_full_example_from_the_design_loads() -> None:
    m = parse_manifest(
        """
version: 1
base: main
workspace: ../shop.agents
ports: {range: "20000-20999"}
defaults:
  setup: ["npm ci"]
  include: [".env"]
services:
  db: {kind: postgres, url: "postgresql://localhost/shop", template: shop}
agents:
  - name: ui
    ports: [web]
  - name: api
    isolation: container
    image: python:3.12-slim
    command: ["python", "-m", "http.server", "${PORT_WEB}"]
    ports: [web]
    services: [db]
    resources: {cpus: 1.0, memory: 1g}
    workload: {kind: compute, needs: [network-isolation]}
  - name: history-rewriter
    workload: {needs: [own-refs]}
""",
        P,
    )
    assert [a.name for a in m.agents] == ["ui", "api", "history-rewriter"]
    assert m.setup_for(m.agents[0]) == ["npm ci"]
    assert m.agents[1].resources is not None and m.agents[1].resources.memory == "1g"
    assert m.ports.bounds() == (20000, 20999)
    assert m.agents[0].branch_name == "hybridiso/ui"


def test_unknown_key_wrong_type_sorted_with_lines_and_fields() -> None:
    text = "version: 1\nagents:\n  - name: ui\n    colour: red\n  - name: api\n    ports: web\nbogus: 1\n"
    msg = errors(text)
    assert "The manifest '/repo/hybridiso.yaml' is invalid because:" in msg
    lines = [line.strip() for line in msg.splitlines() if line.strip().startswith("line ")]
    assert lines[0].startswith("line 4: agents[0].colour: unknown key")
    assert lines[1].startswith("line 6: agents[1].ports")
    assert lines[2].startswith("line 7: bogus: unknown key")


def test_bad_yaml_names_the_line() -> None:
    msg = errors("version: 1\nagents:\n  - name: ui\n   bad: [\n")
    assert "YAML syntax error" in msg and "line " in msg


def test_duplicate_agent_names_name_both_entries() -> None:
    msg = errors("agents:\n  - name: ui\n  - name: api\n  - name: ui\n")
    assert "line 4: agents[2].name: duplicate agent name 'ui': agents[0] (line 2)" in msg


@pytest.mark.parametrize("bad", ["../../etc", "a b", "UI", "a.lock"])
def test_bad_agent_names(bad: str) -> None:
    assert "agents[0].name" in errors(f'agents:\n  - name: "{bad}"\n')


@pytest.mark.parametrize("bad", ["a..b", "x.lock", "has space", "-x"])
def test_bad_branch_names(bad: str) -> None:
    msg = errors(f'agents:\n  - name: ui\n    branch: "{bad}"\n')
    assert "agents[0].branch" in msg and "check-ref-format" in msg


def test_two_worktree_agents_on_one_branch_is_an_error() -> None:
    msg = errors("agents:\n  - {name: a, branch: x, isolation: worktree}\n  - {name: b, branch: x, isolation: worktree}\n")
    assert "branch 'x' is also used by agents[0] (a)" in msg


def test_container_needs_image_and_unknown_service() -> None:
    msg = errors("agents:\n  - {name: a, isolation: container, services: [db]}\n")
    assert "needs an 'image'" in msg
    msg = errors("agents:\n  - {name: a, services: [db]}\n")
    assert "unknown service 'db'" in msg


@pytest.mark.parametrize(
    ("agent", "why"),
    [
        ("{name: a, resources: {cpus: 1}}", "sets resources:"),
        ("{name: a, workload: {needs: [untrusted-code]}}", "needs untrusted-code"),
        ("{name: a, services: [cache]}", "uses service 'cache'"),
        ('{name: a, healthcheck: {test: ["true"]}}', "sets healthcheck:"),
    ],
)
def test_an_agent_the_rules_make_a_container_needs_an_image(agent: str, why: str) -> None:
    msg = errors(f"services: {{cache: {{kind: redis}}}}\nagents:\n  - {agent}\n")
    assert "line 3: agents[0].image: this agent gets a container" in msg and why in msg and "needs an 'image'" in msg


def test_healthcheck() -> None:
    m = parse_manifest('agents:\n  - {name: a, image: x, healthcheck: {test: "curl -f localhost", interval: 1m30s}}\n', P)
    hc = m.agents[0].healthcheck
    assert hc is not None and hc.test == "curl -f localhost" and hc.interval == "1m30s" and hc.retries == 30
    bad = errors('agents:\n  - {name: a, image: x, healthcheck: {test: ["true"], interval: 2 seconds}}\n')
    assert "agents[0].healthcheck.interval: '2 seconds' is not a duration (like 2s, 500ms, 1m30s)" in bad
    assert "healthcheck command is empty" in errors("agents:\n  - {name: a, image: x, healthcheck: {test: []}}\n")
    assert "retries" in errors('agents:\n  - {name: a, image: x, healthcheck: {test: ["true"], retries: 0}}\n')
    assert "unknown key" in errors('agents:\n  - {name: a, image: x, healthcheck: {test: ["true"], every: 1s}}\n')


def test_top_level_must_be_mapping_and_empty_is_fine() -> None:
    assert "must be a mapping" in errors("- a\n- b\n")
    assert parse_manifest("", P).agents == []


def test_ports_range_validation() -> None:
    assert "ports.range" in errors('ports: {range: "9-8"}\n')
    assert "ports.range" in errors('ports: {range: "abc"}\n')


def test_sizes() -> None:
    assert parse_size("1g") == 1 << 30
    assert parse_size("512m") == 512 << 20
    assert parse_size("10GiB") == 10 << 30
    with pytest.raises(ValueError):
        parse_size("lots")


def test_missing_manifest_says_how_to_make_one(tmp_path: Path) -> None:
    from hybridiso.errors import UserError

    with pytest.raises(UserError) as e:
        load_manifest(tmp_path / "hybridiso.yaml")
    assert "hybridiso init" in str(e.value)


def test_host_network_agent_cannot_reach_containerised_services() -> None:
    head = "services:\n  db: {kind: postgres}\n  shared: {kind: postgres, url: 'postgresql://u@127.0.0.1/x', template: t}\nagents:\n"
    msg = errors(head + "  - name: a\n    image: app:1\n    workload: {needs: [host-network]}\n    services: [db, shared]\n")
    assert "line 8: agents[0].services: db would run in containers" in msg
    assert "shared" not in msg  # it has a url: reachable from the host network
    # a service on a server the host reaches is fine with host networking
    m = parse_manifest(head + "  - name: a\n    image: app:1\n    workload: {needs: [host-network]}\n    services: [shared]\n", P)
    assert m.agents[0].services == ["shared"]
