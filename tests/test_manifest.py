from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from hybridiso.git import discover as git_discover
from hybridiso.manifest import ManifestError, parse_size
from hybridiso.manifest_file import load_manifest, parse_manifest
from hybridiso.project import repo_context
from tests.support.cli import hybridiso
from tests.support.gitrepo import git, make_repo

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


# --- docs/faults.md row 39: hostile YAML, names, numbers, all problems at once ------------------

def billion_laughs(levels: int = 9) -> str:
    text = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    prev = "a"
    for i in range(levels):
        name = chr(ord("b") + i)
        text += f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]\n"
        prev = name
    return text


def test_a_billion_laughs_is_refused_before_it_is_built() -> None:
    started = time.monotonic()
    msg = errors(billion_laughs())
    assert time.monotonic() - started < 2  # it ran 36 s, then MemoryError
    assert "aliases expand to more than 100000 values" in msg and "line " in msg


def test_aliases_are_bounded_and_may_not_contain_themselves() -> None:
    many = "x: &x 1\nl: [" + ", ".join(["*x"] * 101) + "]\n"
    assert "more than 100 aliases" in errors(many)
    assert "line 2:" in errors("a: 1\nb: &b [*b]\n") and "cycle" in errors("a: &a [*a]\n")
    # a few aliases and merge keys are ordinary YAML: allowed, and a key after
    # a merge overrides it as YAML says (it is no duplicate)
    m = parse_manifest("defaults: {setup: &s [make, [npm, ci]]}\nagents:\n  - {name: a, setup: *s}\n", P)
    assert m.setup_for(m.agents[0]) == m.defaults.setup == ["make", ["npm", "ci"]]
    m = parse_manifest(
        "services:\n  db: &pg {kind: postgres, url: 'postgresql://h/x', template: t}\n  db2:\n    <<: *pg\n    template: u\n", P
    )
    assert m.services["db2"].template == "u" and m.services["db2"].url == "postgresql://h/x"


@pytest.mark.parametrize(
    "text",
    [
        "x: " + "[" * 5000 + "]" * 5000,  # was a RecursionError
        "x: " + "{a: " * 5000,
        "x:\n" + "- " * 5000 + "1\n",
        "".join("  " * i + "a:\n" for i in range(100)),
    ],
)
def test_deep_nesting_is_refused_at_its_line(text: str) -> None:
    started = time.monotonic()
    msg = errors(text)
    assert "nested too deeply (more than 64 levels" in msg and time.monotonic() - started < 2


def test_nesting_up_to_the_bound_is_fine() -> None:
    from hybridiso import yaml_loader

    assert yaml_loader.load("x: " + "[" * 63 + "]" * 63).data is not None
    with pytest.raises(yaml_loader.Refused):
        yaml_loader.load("x: " + "[" * 64 + "]" * 64)  # the mapping is one level too


def test_duplicate_keys_are_refused_with_both_lines() -> None:
    msg = errors("base: main\nagents:\n  - name: a\n    ports: [web]\n    name: b\nbase: dev\n")
    assert "line 5: agents[0].name: duplicate key 'name': line 3 has it already" in msg
    assert "line 6: base: duplicate key 'base': line 1 has it already" in msg
    assert "duplicate key 'x'" in errors("labels: {x: '1', x: '2'}\n")


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("name", '"ui\\n"', "agent name 'ui\\n' is invalid"),
        ("branch", '"feature\\n"', "branch name 'feature\\n' is invalid"),
        ("ports", '["web\\n"]', "port name 'web\\n' is invalid"),
        ("env", '{"A\\n": x}', "'A\\n' cannot be a name here"),
        ("healthcheck", '{test: ["true"], interval: "2s\\n"}', "is not a duration"),
    ],
)
def test_names_ending_in_a_newline_are_refused(field: str, value: str, says: str) -> None:
    name = "" if field == "name" else "name: a, image: x, "
    msg = errors(f"agents:\n  - {{{name}{field}: {value}}}\n")
    assert says in msg and "line 2:" in msg


def test_branches_git_refuses_or_cannot_store() -> None:
    assert "'HEAD' names the checked-out commit" in errors("agents:\n  - {name: a, branch: HEAD}\n")
    assert "251 bytes" in errors(f"agents:\n  - {{name: a, branch: {'x' * 251}}}\n")
    msg = errors("agents:\n  - {name: a, branch: feat}\n  - {name: b, branch: feat/x}\n  - {name: c}\n  - {name: d, branch: hybridiso}\n")
    assert "line 3: agents[1].branch: branch 'feat/x' cannot exist beside branch 'feat' of agents[0] (a)" in msg
    # hybridiso/c, the default branch of c, sits below 'hybridiso'
    assert "line 5: agents[3].branch: branch 'hybridiso' cannot exist beside branch 'hybridiso/c' of agents[2] (c)" in msg


def test_variables_that_collide_after_mapping_name_both_entries() -> None:
    msg = errors("services:\n  my-db: {kind: redis}\n  my_db: {kind: redis}\nagents: []\n")
    assert "line 3: services.my_db: services 'my-db' (line 2) and 'my_db' would both be the variable MY_DB_URL" in msg
    head = "services:\n  db: {kind: postgres}\n  port_a: {kind: redis}\nagents:\n"
    msg = errors(head + "  - name: a\n    image: x\n    ports: [web, a_url]\n    services: [db, port_a]\n    env: {PORT_WEB: '1', DB_URL: x, DATABASE_URL: y}\n")
    assert "agents[0].env.PORT_WEB: PORT_WEB is set by hybridiso for port 'web'" in msg
    assert "agents[0].env.DB_URL: DB_URL is set by hybridiso for service 'db'" in msg
    assert "agents[0].env.DATABASE_URL: DATABASE_URL is set by hybridiso for service 'db'" in msg
    assert "service 'port_a' sets PORT_A_URL, which port 'a_url' sets too" in msg
    msg = errors("defaults:\n  env: {PORT_WEB: '1'}\nagents:\n  - {name: a, ports: [web]}\n")
    assert "line 2: defaults.env.PORT_WEB: PORT_WEB is set by hybridiso for agent a's port 'web'" in msg
    assert "HYBRIDISO_ are hybridiso's own" in errors("agents:\n  - {name: a, env: {HYBRIDISO_AGENT: x}}\n")
    # a service named after the default variable of another kind
    msg = errors("services:\n  database: {kind: redis}\n  pg: {kind: postgres}\nagents:\n  - {name: a, image: x, services: [database, pg]}\n")
    assert "DATABASE_URL is the URL of postgres service 'pg', but service 'database' sets it too" in msg


@pytest.mark.parametrize(
    ("resources", "says"),
    [
        ("{cpus: 1e308}", "less than or equal to 1024"),
        ("{cpus: .inf}", "finite number"),
        ("{cpus: .nan}", "finite number"),
        ("{cpus: 0.001}", "greater than or equal to 0.01"),
        ("{pids: 99999999999999999999999}", "less than or equal to 4194304"),
        ("{memory: " + "9" * 400 + "t}", "out of range"),
        ("{memory: 1m}", "below Docker's minimum memory limit of 6 MiB"),
    ],
)
def test_numbers_out_of_range(resources: str, says: str) -> None:
    msg = errors(f"agents:\n  - name: a\n    image: x\n    resources: {resources}\n")
    assert says in msg and "line 4: agents[0].resources." in msg


def test_other_numbers_and_empty_commands() -> None:
    assert "longer than 24h" in errors('agents:\n  - {name: a, image: x, healthcheck: {test: ["true"], interval: 99999999h}}\n')
    assert "shorter than 1ms" in errors('agents:\n  - {name: a, image: x, healthcheck: {test: ["true"], timeout: 0s}}\n')
    assert "less than or equal to 10000" in errors('agents:\n  - {name: a, image: x, healthcheck: {test: ["true"], retries: 99999999999999999999}}\n')
    assert "disk_budget: '" in errors("disk_budget: " + "9" * 400 + "t\n")
    assert "line 2: defaults.setup[0]: the command is empty" in errors("defaults:\n  setup: [[]]\n")
    assert "defaults.setup[1]: the command is empty" in errors("defaults:\n  setup: [make, '  ']\n")
    assert "agents[0].command: the command is empty" in errors("agents:\n  - {name: a, image: x, command: []}\n")
    assert "include pattern is empty" in errors("defaults:\n  include: ['']\n")
    assert "is not an image reference" in errors("agents:\n  - {name: a, image: 'python 3'}\n")
    assert "is not an image reference" in errors("agents:\n  - {name: a, image: UPPER}\n")  # Docker: names are lowercase
    assert "is not an image reference" in errors("agents:\n  - {name: a, image: 'app:'}\n")
    parse_manifest("agents:\n  - {name: a, image: 'registry.example.com:5000/team/app:1.2'}\n", P)
    assert "ports.range" in errors('ports: {range: "1024-99999999999999999999999"}\n')


def test_service_names_compose_forbids() -> None:
    msg = errors("services:\n  My.DB: {kind: redis}\n  agent: {kind: redis}\nagents: []\n")
    assert "line 2: services.My.DB: service name 'My.DB' is invalid" in msg
    assert "line 3: services.agent: service name 'agent' is reserved" in msg


def test_a_nul_anywhere_is_refused() -> None:
    msg = errors('base: "ma\\0in"\nagents:\n  - name: a\n    env: {X: "a\\0b"}\n    setup: ["make \\0"]\n')
    assert "line 1: base: contains a NUL character" in msg
    assert "line 4: agents[0].env.X: contains a NUL character" in msg
    assert "line 5: agents[0].setup[0]: contains a NUL character" in msg
    assert "line 1: workspace: contains a NUL character" in errors('workspace: "../x\\0"\n')


def test_unknown_user_in_the_workspace() -> None:
    msg = errors("workspace: ~no-such-user-hybridiso/x\n")
    assert "line 1: workspace: '~no-such-user-hybridiso/x': there is no user 'no-such-user-hybridiso'" in msg


def test_every_problem_at_once_sorted_by_line(tmp_path: Path) -> None:
    # field errors, checks across fields and the workspace used to come in
    # passes: fix one, run again, see the next
    repo = make_repo(tmp_path / "r")
    text = (
        "workspace: ..\n"  # 1: the workspace check (needs the repository)
        "agents:\n"
        "  - {name: a, ports: [Web]}\n"  # 3: a field error
        "  - {name: b}\n"
        "  - {name: b, colour: red}\n"  # 5: a duplicate (cross-check) and an unknown key
        "  - {name: c, branch: b/x, services: [nope]}\n"  # 6: unknown service
        "  - {name: d, branch: b}\n"  # 7: 'b' is a directory of c's branch
    )
    with pytest.raises(ManifestError) as e:
        parse_manifest(text, P, repo_context(git_discover(repo)))
    lines = [str(p).strip() for p in e.value.problems]
    assert [line.split(":")[0] for line in lines] == ["line 1", "line 3", "line 5", "line 5", "line 6", "line 7"]
    assert "workspace: '..' (" in lines[0] and "the repository's parent directory" in lines[0]
    assert "agents[0].ports" in lines[1]
    assert any("duplicate agent name 'b'" in x for x in lines) and any("colour: unknown key" in x for x in lines)
    assert "unknown service 'nope'" in lines[4] and "branch 'b' cannot exist beside branch 'b/x'" in lines[5]


def test_field_errors_do_not_hide_cross_checks_or_invent_them() -> None:
    # agents[0] is left out of the checks across fields (its isolation is
    # invalid), so no 'needs an image' is made up for it; the others are checked
    msg = errors("agents:\n  - {name: a, isolation: vm}\n  - {name: b}\n  - {name: b}\n")
    assert "agents[0].isolation" in msg and "duplicate agent name 'b'" in msg and "image" not in msg
    # a required field missing: that agent drops out, the others are checked
    msg = errors("agents:\n  - {branch: x}\n  - {name: b, isolation: worktree, branch: y}\n  - {name: c, isolation: worktree, branch: y}\n")
    assert "agents[0].name: Field required" in msg and "branch 'y' is also used by agents[1] (b)" in msg


@pytest.mark.parametrize(
    ("workspace", "says"),
    [
        ("..", "is the repository's parent directory"),
        ("/", "is the file system's root"),
        ("'~'", "is your home directory"),  # quoted: a bare ~ is YAML's null
        ("../..", "holds"),  # the repository (and here the test's home too)
        (".", "is inside the repository's working tree"),
        ("sub/dir", "is inside the repository's working tree"),
        ("notes.txt-outside", "exists and is not a directory"),
    ],
)
def test_workspaces_that_are_refused(tmp_path: Path, isolated_home: Path, workspace: str, says: str) -> None:
    repo = make_repo(tmp_path / "r")
    (tmp_path / "notes.txt-outside").write_text("mine\n")
    if workspace == "notes.txt-outside":
        workspace = "../notes.txt-outside"
    with pytest.raises(ManifestError) as e:
        parse_manifest(f"workspace: {workspace}\n", P, repo_context(git_discover(repo)))
    assert says in str(e.value) and "line 1: workspace:" in str(e.value)


def test_workspace_inside_the_git_dir_of_a_separate_git_dir(tmp_path: Path) -> None:
    repo = tmp_path / "r"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main", f"--separate-git-dir={tmp_path / 'store.git'}")
    git(repo, "commit", "-q", "--allow-empty", "-m", "init")
    context = repo_context(git_discover(repo))
    assert "inside the repository's git directory" in str(_workspace_error(f"workspace: {tmp_path / 'store.git' / 'envs'}\n", context))
    parse_manifest(f"workspace: {tmp_path / 'elsewhere'}\n", P, context)  # beside both: fine


def _workspace_error(text: str, context):  # type: ignore[no-untyped-def]
    with pytest.raises(ManifestError) as e:
        parse_manifest(text, P, context)
    return e.value


def test_auto_with_an_image_is_a_container_and_command_needs_an_image() -> None:
    m = parse_manifest("agents:\n  - {name: a, image: 'python:3.12-slim'}\n", P)
    assert m.agents[0].image == "python:3.12-slim"
    msg = errors("agents:\n  - {name: a, command: [sleep, '1']}\n")
    assert "this agent gets a container (sets command:" in msg and "needs an 'image'" in msg


# --- through the CLI: exit 1, one message, nothing created (docs/faults.md rows 4, 39) -------

def _snapshot(repo: Path) -> tuple[str, str, bool, bool]:
    return (
        git(repo, "for-each-ref", "--format=%(refname) %(objectname)"),
        git(repo, "worktree", "list", "--porcelain"),
        (repo.parent / f"{repo.name}.agents").exists(),
        (repo / ".git" / "hybridiso" / "state.json").exists(),
    )


BAD_MANIFESTS = {
    "billion laughs": (billion_laughs(), "aliases expand to more than"),
    "deep nesting": ("agents: " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
    "duplicate key": ("agents:\n  - name: a\n    name: b\n", "line 3: agents[0].name: duplicate key 'name': line 2"),
    "newline in a name": ('agents:\n  - name: "a\\n"\n', "line 2: agents[0].name: agent name 'a\\n' is invalid"),
    "branch HEAD": ("agents:\n  - {name: a, branch: HEAD}\n", "'HEAD' names the checked-out commit"),
    "256-byte component": (f"agents:\n  - {{name: a, branch: {'x' * 256}}}\n", "256 bytes"),
    "feat beside feat/x": ("agents:\n  - {name: a, branch: feat}\n  - {name: b, branch: feat/x}\n", "cannot exist beside branch 'feat'"),
    "variables collide": ("services:\n  my-db: {kind: redis}\n  my_db: {kind: redis}\n", "would both be the variable MY_DB_URL"),
    "cpus 1e308": ("agents:\n  - {name: a, image: x, resources: {cpus: 1e308}}\n", "less than or equal to 1024"),
    "int past int64": ("agents:\n  - {name: a, image: x, resources: {pids: 9223372036854775808}}\n", "less than or equal to 4194304"),
    "setup [[]]": ("defaults: {setup: [[]]}\nagents: [{name: a}]\n", "the command is empty"),
    "service name": ("services:\n  My.DB: {kind: redis}\n", "service name 'My.DB' is invalid"),
    "workspace is a file": ("workspace: ../afile\nagents: [{name: a}]\n", "exists and is not a directory"),
    "workspace ~nosuchuser": ("workspace: ~nosuchuser-hybridiso\nagents: [{name: a}]\n", "there is no user 'nosuchuser-hybridiso'"),
    "workspace NUL": ('workspace: "../ws\\0"\nagents: [{name: a}]\n', "contains a NUL character"),
    "workspace ..": ("workspace: ..\nagents: [{name: a}]\n", "is the repository's parent directory"),
    "workspace /": ("workspace: /\nagents: [{name: a}]\n", "is the file system's root"),
    "not UTF-8": (b"agents:\n  - name: caf\xe9\n", "is not UTF-8 text (line 2"),
}


@pytest.mark.parametrize("case", sorted(BAD_MANIFESTS))
def test_bad_manifests_fail_cleanly_and_create_nothing(tmp_path: Path, case: str) -> None:
    text, says = BAD_MANIFESTS[case]
    repo = make_repo(tmp_path / "r")
    (tmp_path / "afile").write_text("not a directory\n")
    manifest = repo / "hybridiso.yaml"
    manifest.write_bytes(text if isinstance(text, bytes) else text.encode())
    before = _snapshot(repo)
    for verb in ("plan", "up", "status"):
        started = time.monotonic()
        r = hybridiso(repo, verb, ok=False)
        assert r.returncode == 1, (verb, r.stderr)
        assert says in r.stderr, (verb, r.stderr)
        assert time.monotonic() - started < 20
    assert _snapshot(repo) == before
    assert (tmp_path / "afile").read_text() == "not a directory\n"


def test_branch_beside_an_existing_branch_is_refused_at_plan_time(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r")
    git(repo, "branch", "feat/x")
    git(repo, "branch", "team")
    git(repo, "branch", "other/y")
    (repo / "hybridiso.yaml").write_text(
        "agents:\n  - name: a\n  - name: b\n    branch: feat\n  - name: c\n    branch: team/c\n  - name: d\n    branch: other/y\n"
    )
    before = _snapshot(repo)
    for verb in ("plan", "up"):
        r = hybridiso(repo, verb, ok=False)
        assert r.returncode == 1 and "is invalid because" in r.stderr
        assert "line 4: agents[1].branch: branch 'feat' cannot be created: the repository has branch 'feat/x'" in r.stderr
        assert "line 6: agents[2].branch: branch 'team/c' cannot be created: the repository has branch 'team'" in r.stderr
        assert "agents[3]" not in r.stderr  # 'other/y' exists: the agent uses it as it is
    assert _snapshot(repo) == before  # agent a was not created either: nothing is, before the manifest is right
    doctor = hybridiso(repo, "doctor", ok=False)
    assert "fail" in doctor.stdout and "cannot be created" in doctor.stdout and "1 check failed: manifest" in doctor.stderr


def test_auto_with_an_image_gets_a_container_and_unused_settings_are_said(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r")
    (repo / "hybridiso.yaml").write_text(
        "agents:\n"
        "  - {name: web, image: 'busybox:latest'}\n"
        "  - {name: plain, isolation: worktree, image: 'busybox:latest', command: [sleep, '9']}\n"
        "  - {name: refs, image: 'busybox:latest', workload: {needs: [own-refs]}}\n"
    )
    rows = {a["agent"]: a for a in json.loads(hybridiso(repo, "plan", "--json").stdout)["agents"]}
    assert rows["web"]["strategy"] == "container" and "has an image (busybox:latest)" in rows["web"]["reason"]
    assert rows["plain"]["strategy"] == "worktree"
    assert any("image and command are not used: it gets a worktree" in w for w in rows["plain"]["warnings"])
    assert rows["refs"]["strategy"] == "container"
    assert any("needs own-refs, but a container shares the repository's refs" in w for w in rows["refs"]["warnings"])
    text = hybridiso(repo, "plan")
    assert "plain: image and command are not used" in text.stderr


@pytest.mark.parametrize("kind", ["fifo", "device", "huge", "directory"])
def test_a_manifest_that_is_not_a_file_is_refused_not_read(tmp_path: Path, kind: str) -> None:
    repo = make_repo(tmp_path / "r")
    manifest = repo / "hybridiso.yaml"
    if kind == "fifo":
        os.mkfifo(manifest)  # reading it would block forever
    elif kind == "device":
        manifest.symlink_to("/dev/zero")  # reading it would never end
    elif kind == "huge":
        with manifest.open("wb") as f:
            f.truncate(17 << 20)
    else:
        manifest.mkdir()
    says = {"fifo": "is not a regular file", "device": "is not a regular file", "huge": "is over 16 MiB", "directory": "is a directory"}[kind]
    r = hybridiso(repo, "plan", ok=False, timeout=30)
    assert r.returncode == 1 and says in r.stderr


def test_a_manifest_symlinked_to_a_file_is_read(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r")
    (tmp_path / "shared.yaml").write_text("agents:\n  - {name: a}\n")
    (repo / "hybridiso.yaml").symlink_to(tmp_path / "shared.yaml")
    rows = json.loads(hybridiso(repo, "plan", "--json").stdout)["agents"]
    assert [r["agent"] for r in rows] == ["a"]


def test_init_force_replaces_a_symlink_instead_of_writing_through_it(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r")
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (repo / "hybridiso.yaml").symlink_to(victim)
    assert "already exists" in hybridiso(repo, "init", ok=False).stderr
    hybridiso(repo, "init", "--force")
    assert victim.read_text() == "precious\n"
    assert not (repo / "hybridiso.yaml").is_symlink() and "agents:" in (repo / "hybridiso.yaml").read_text()


def test_a_workspace_inside_another_worktree_is_refused(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r")
    git(repo, "worktree", "add", "-q", str(tmp_path / "side"), "-b", "side")
    (repo / "hybridiso.yaml").write_text("workspace: ../side/envs\nagents: [{name: a}]\n")
    r = hybridiso(repo, "up", ok=False)
    assert f"is inside the worktree at {tmp_path / 'side'}" in r.stderr and not (tmp_path / "side" / "envs").exists()
    # the agents' own worktrees live inside the workspace: that is no reason to refuse it
    (repo / "hybridiso.yaml").write_text("workspace: ../ws\nagents: [{name: a}]\n")
    hybridiso(repo, "up")
    hybridiso(repo, "plan")


def test_keys_that_are_not_strings_do_not_stop_the_other_checks() -> None:
    msg = errors("1: x\nagents:\n  - {name: a, 5: y}\n  - {name: a}\n")
    assert "line 1: [1]: Keys should be strings" in msg and "agents[0][5]: Keys should be strings" in msg
    assert "duplicate agent name 'a'" in msg


def test_sizes_in_every_unit_and_their_limits() -> None:
    from hybridiso.manifest import MAX_BYTES

    assert [parse_size(s) for s in ("0", "7", "1k", "1K", "2kb", "1.5m", "1t", "3T")] == [0, 7, 1 << 10, 1 << 10, 2 << 10, 3 << 19, 1 << 40, 3 << 40]
    assert parse_size(4096) == 4096 and parse_size(MAX_BYTES) == MAX_BYTES and parse_size(0) == 0
    for bad, says in (
        (True, "is not a size like '512m' or '10g'"),
        (1.5, "is not a size like '512m' or '10g'"),
        ("1x", "is not a size like '512m' or '10g'"),
        (-1, "is out of range (0 to 1 PiB)"),
        (MAX_BYTES + 1, "is out of range (0 to 1 PiB)"),
        ("2000t", "is out of range (0 to 1 PiB)"),
    ):
        with pytest.raises(ValueError) as e:
            parse_size(bad)  # type: ignore[arg-type]
        assert str(e.value) == f"{bad!r} {says}", bad


def test_durations_add_up_exactly() -> None:
    from fractions import Fraction

    from hybridiso.manifest import duration_seconds

    assert duration_seconds("1m30s") == 90 and duration_seconds("500ms") == Fraction(1, 2) and duration_seconds("") == 0
    assert duration_seconds("1h2m3s") == 3723
