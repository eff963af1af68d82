"""Rendered compose files: valid against the compose-spec schema, runnable by
`docker compose`, and impossible to break or inject from the manifest."""
from __future__ import annotations

import json
import os
import posixpath
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
import jsonschema
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hybridiso.containers import docker_client
from hybridiso.containers.engine_apply import unescape
from hybridiso.containers.spec import (
    SERVICE_IMAGES,
    ContainerSpec,
    Healthcheck,
    Mount,
    PortMapping,
    ServiceSpec,
)
from hybridiso.names import PROJECT_NAME_MAX, PROJECT_NAME_RE
from hybridiso.names import compose_project_name as project_name
from hybridiso.manifest import _KEY_RE
from hybridiso.containers.compose_file import compose_labels, render_compose, write_compose
from hybridiso.render import expand_vars, render_template
from hybridiso.resources import compose_dir, templates_dir
from tests.support.docker_fixtures import unavailable

# the official schema, copied unchanged so a clone alone runs the suite
SCHEMA_PATH = Path(__file__).resolve().parent / "data" / "compose-spec" / "compose-spec.json"
# the team's reference copy, beside the checkout in CI
REFERENCE_SCHEMA = Path(__file__).resolve().parents[2] / "shared" / "compose-spec" / "compose-spec.json"


def test_the_schema_copy_is_the_reference_schema() -> None:
    if not REFERENCE_SCHEMA.exists():
        pytest.skip(f"no reference copy at {REFERENCE_SCHEMA} to compare with (only CI has shared/ beside the checkout)")
    assert SCHEMA_PATH.read_bytes() == REFERENCE_SCHEMA.read_bytes()


@lru_cache(maxsize=1)
def validator() -> jsonschema.Draft7Validator:
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def validate(text: str) -> dict[str, Any]:
    doc = yaml.safe_load(text)
    errors = sorted(validator().iter_errors(doc), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors) + "\n" + text
    return doc




def spec(**kw: Any) -> ContainerSpec:
    base: dict[str, Any] = dict(
        project=project_name("/src/shop", "api"),
        agent="api",
        image="python:3.12-slim",
        workdir="/src/shop.agents/api",
        command=("python", "-m", "http.server", "20000"),
        mounts=(Mount("/src/shop.agents/api", "/src/shop.agents/api"), Mount("/src/shop/.git", "/src/shop/.git")),
        environment=(("PORT_WEB", "20000"), ("HYBRIDISO_AGENT", "api")),
        ports=(PortMapping("web", 20000, 20000),),
        user="1000:1000",
        labels=(("dev.hybridiso.project", "0123abcd"),),
    )
    base.update(kw)
    return ContainerSpec(**base)


SERVICES = (ServiceSpec("db", "postgres"), ServiceSpec("cache", "redis", "redis:7.2", (("REDIS_ARGS", "--save ''"),)))
VARIANTS = {
    "minimal": spec(command=None, ports=(), environment=(), mounts=(), user=None, labels=()),
    "full": spec(
        cpus=1.5,
        memory="1g",
        pids=128,
        healthcheck=Healthcheck(("CMD", "true")),
        services=SERVICES,
        extra_hosts=("host.docker.internal:host-gateway",),
    ),
    "host-network": spec(network_mode="host"),
    "host-network-with-services": spec(network_mode="host", services=SERVICES),
    "no-network": spec(network_mode="none", ports=()),
    "read-only-mount": spec(mounts=(Mount("/src/shop/.git", "/src/shop/.git", read_only=True),)),
    # issue 12: an isolated agent's bridge is named for its firewall rules
    "isolated": spec(bridge_name="hyb0123456789ab", read_only=True, tmpfs=("/tmp:rw,nosuid,nodev,exec,mode=1777",), cap_add=("NET_BIND_SERVICE",), services=SERVICES),
    "internal": spec(network_internal=True),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_variant_validates_against_compose_spec(variant: str) -> None:
    s = VARIANTS[variant]
    text = render_compose(s)
    doc = validate(text)
    agent = doc["services"]["agent"]
    assert doc["name"] == s.project
    assert agent["security_opt"] == ["no-new-privileges:true"] and agent["init"] is True
    assert agent["cap_drop"] == ["ALL"]  # least privilege for every agent (issue 12)
    assert "privileged" not in text and "docker.sock" not in text and "seccomp" not in text
    assert "container_name" not in text
    assert agent["labels"]["dev.hybridiso.role"] == "agent"
    for m in agent.get("volumes", []):
        assert m["type"] == "bind" and m["bind"] == {"create_host_path": False}
    for name in doc["services"]:
        if name != "agent":
            assert doc["services"][name]["networks"] == ["agent-net"]
            assert "agent-net" in doc["networks"]
            assert doc["services"][name]["cap_drop"] == ["ALL"] and doc["services"][name]["pids_limit"] == 1024


def test_full_variant_has_limits_ports_on_loopback_services_and_labels() -> None:
    doc = validate(render_compose(VARIANTS["full"]))
    agent = doc["services"]["agent"]
    assert (agent["cpus"], agent["mem_limit"], agent["pids_limit"]) == (1.5, "1g", 128)
    assert agent["ports"] == [{"name": "web", "target": 20000, "published": "20000", "host_ip": "127.0.0.1", "protocol": "tcp"}]
    assert agent["user"] == "1000:1000"
    assert agent["working_dir"] == "/src/shop.agents/api"
    assert "env_file" not in agent  # `environment` carries every value, escaped; an env file would be interpolated
    assert agent["healthcheck"]["test"] == ["CMD", "true"]
    assert agent["depends_on"] == {"db": {"condition": "service_healthy"}, "cache": {"condition": "service_healthy"}}
    db, cache = doc["services"]["db"], doc["services"]["cache"]
    assert db["image"] == SERVICE_IMAGES["postgres"] and cache["image"] == "redis:7.2"
    assert db["healthcheck"]["test"][0] == "CMD-SHELL" and "pg_isready" in db["healthcheck"]["test"][1]
    assert cache["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    assert cache["environment"] == {"REDIS_ARGS": "--save ''"}
    assert db["volumes"] == [{"type": "volume", "source": "db-data", "target": "/var/lib/postgresql/data"}]
    assert set(doc["volumes"]) == {"db-data", "cache-data"}
    for part, role in ((doc["networks"]["agent-net"], "network"), (doc["volumes"]["db-data"], "volume"), (db, "service"), (agent, "agent")):
        assert part["labels"]["dev.hybridiso.agent"] == "api"
        assert part["labels"]["dev.hybridiso.project"] == "0123abcd"
        assert part["labels"]["dev.hybridiso.role"] == role
    mounts = {(m["source"], m["target"]) for m in agent["volumes"]}
    assert ("/src/shop/.git", "/src/shop/.git") in mounts


def test_isolated_variant_names_its_bridge_and_keeps_the_root_read_only() -> None:
    doc = validate(render_compose(VARIANTS["isolated"]))
    agent = doc["services"]["agent"]
    assert agent["read_only"] is True and agent["tmpfs"] == ["/tmp:rw,nosuid,nodev,exec,mode=1777"]
    assert agent["cap_add"] == ["NET_BIND_SERVICE"] and agent["cap_drop"] == ["ALL"]
    assert doc["networks"]["agent-net"]["driver_opts"] == {"com.docker.network.bridge.name": "hyb0123456789ab"}
    assert "internal" not in doc["networks"]["agent-net"]
    assert validate(render_compose(VARIANTS["internal"]))["networks"]["agent-net"]["internal"] is True
    with pytest.raises(ValueError, match="interface name"):
        spec(bridge_name="much-too-long-a-bridge")


def test_postgres_healthcheck_reads_the_containers_own_variables() -> None:
    s = spec(services=(ServiceSpec("db", "postgres", environment=(("POSTGRES_USER", "me"),)),))
    db = validate(render_compose(s))["services"]["db"]
    assert db["environment"]["POSTGRES_USER"] == "me"
    # `$$` so compose leaves it alone and the shell in the container expands it
    assert '"$${POSTGRES_USER}"' in db["healthcheck"]["test"][1]


def test_labels_default_to_the_project_and_keep_hybridisos_roles() -> None:
    s = spec(labels=(("team", "x"), ("dev.hybridiso.role", "evil")), services=SERVICES)
    labels = compose_labels(s)
    assert labels["agent"] == {
        docker_client.LABEL_PROJECT: s.project,
        docker_client.LABEL_COMPOSE_PROJECT: s.project,
        docker_client.LABEL_AGENT: "api",
        docker_client.LABEL_ROLE: "agent",
        "dev.hybridiso.service": "agent",
        "team": "x",
    }
    assert labels["services"]["db"][docker_client.LABEL_ROLE] == "service"
    assert labels["volumes"]["cache"]["dev.hybridiso.service"] == "cache"


def test_service_spec_defaults_and_checks() -> None:
    assert ServiceSpec("db", "postgres").image == "postgres:16-alpine"
    assert ServiceSpec("cache", "redis").image == "redis:7-alpine"
    assert ServiceSpec("db", "postgres", "postgres:17").image == "postgres:17"
    for bad in (dict(name="db", kind="compose"), dict(name="agent", kind="redis"), dict(name="a b", kind="redis")):
        with pytest.raises(ValueError):
            ServiceSpec(**bad)
    with pytest.raises(ValueError):
        spec(project="Not Valid")
    with pytest.raises(ValueError):
        spec(services=(ServiceSpec("db", "redis"), ServiceSpec("db", "postgres")))
    with pytest.raises(ValueError):
        PortMapping("web", 0, 80)


# any text but lone surrogates (not encodable), biased towards YAML/Jinja/Compose syntax
NASTY = st.text(
    alphabet=st.one_of(
        st.characters(blacklist_categories=("Cs",)),
        st.sampled_from(list("\"'\n\r\t:#{}[]$-~&*!|>%@`\\,? \x00\x85\u2028\u2029\ufeff")),
    ),
    max_size=40,
)
KEYWORDS = st.sampled_from(
    ["yes", "no", "on", "null", "~", "true", "False", "0x10", "1e3", ".inf", "-", "- a", ": b", "{{ x }}", "{% if %}",
     "${HOME}", "$HOME", "$$", "$${X}", "'", '"', "#x", "a # b", "--- ", "...", "&a", "*a", "!!python/object", "é 😀 \u202e"]
)
VALUE = st.one_of(NASTY, KEYWORDS)
ENV_KEY = st.text(alphabet="ABCXYZ_019", max_size=12).map(lambda s: "K" + s)
# the keys a manifest lets through (hybridiso/manifest.py _KEY_RE: no
# whitespace, '=' or '$'); a bare "\n" never reaches the renderer, and the
# compose schema's ".+" key pattern would refuse it
LABEL_KEY = VALUE.filter(lambda k: _KEY_RE.fullmatch(k) is not None and not k.startswith("dev.hybridiso"))


def nasty_spec(env: dict[str, str], command: list[str], path: str, label: tuple[str, str], image: str, service_env: str) -> ContainerSpec:
    mount = "/work/" + path
    return spec(
        image=image,
        command=tuple(command),
        environment=tuple(env.items()),
        mounts=(Mount(mount, mount),),
        workdir=mount,
        labels=(label,),
        services=(ServiceSpec("db", "postgres", environment=(("POSTGRES_PASSWORD", service_env),)),),
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    env=st.dictionaries(ENV_KEY, VALUE, max_size=5),
    command=st.lists(VALUE, min_size=1, max_size=4),
    path=VALUE.filter(lambda p: p != ""),
    label=st.tuples(LABEL_KEY, VALUE),
    image=VALUE.filter(lambda p: p != ""),
    service_env=VALUE,
)
def test_manifest_values_cannot_break_or_inject(
    env: dict[str, str], command: list[str], path: str, label: tuple[str, str], image: str, service_env: str
) -> None:
    s = nasty_spec(env, command, path, label, image, service_env)
    doc = validate(render_compose(s))
    assert set(doc) == {"name", "services", "networks", "volumes"}
    assert set(doc["services"]) == {"agent", "db"}
    agent = doc["services"]["agent"]
    assert unescape(agent["image"]) == image
    assert unescape(agent["command"]) == command
    assert unescape(agent.get("environment", {})) == env
    assert unescape(agent["working_dir"]) == s.workdir
    assert unescape(agent["volumes"][0]["source"]) == s.workdir
    assert unescape(agent["labels"])[label[0]] == label[1]
    assert unescape(doc["services"]["db"]["environment"]["POSTGRES_PASSWORD"]) == service_env
    assert agent["security_opt"] == ["no-new-privileges:true"]
    assert agent["labels"]["dev.hybridiso.role"] == "agent"


def test_dollars_are_escaped_so_compose_never_interpolates() -> None:
    doc = validate(render_compose(spec(environment=(("A", "$HOME ${PATH} $$"),))))
    assert doc["services"]["agent"]["environment"]["A"] == "$$HOME $${PATH} $$$$"


def test_expand_vars_fills_known_names_only() -> None:
    v = {"PORT_WEB": "20001", "DATABASE_URL": "postgresql://h/$x"}
    assert expand_vars("serve ${PORT_WEB} $PORT_WEB ${OTHER} $OTHER $5 $", v) == "serve 20001 20001 ${OTHER} $OTHER $5 $"
    assert expand_vars("$PORT_WEBX ${PORT_WEB}x $PORT_WEB-1", v) == "$PORT_WEBX 20001x 20001-1"
    # a substituted value is not expanded again
    assert expand_vars("${DATABASE_URL}", {**v, "x": "no"}) == "postgresql://h/$x"


@given(st.text(max_size=30), st.text(max_size=30), st.text(max_size=30))
def test_project_names_follow_compose_rule_and_stay_distinct(repo: str, agent: str, other: str) -> None:
    name = project_name("/x/" + repo, agent)
    assert PROJECT_NAME_RE.match(name) and len(name) <= PROJECT_NAME_MAX
    assert name == project_name("/x/" + repo, agent) == project_name("/x/" + repo + "/", agent)
    if other != agent:
        assert project_name("/x/" + repo, other) != name
    if posixpath.normpath("/x/" + other) != posixpath.normpath("/x/" + repo):
        assert project_name("/x/" + other, agent) != name


def test_project_name_is_readable_and_collisions_are_split_by_the_hash() -> None:
    name = project_name("/home/me/My Shop", "Fix_Login")
    assert name.startswith("hybridiso-my-shop-fix-login-")
    assert project_name("/a/shop", "x") != project_name("/b/shop", "x")
    assert project_name("/a/shop", "a.b") != project_name("/a/shop", "a-b")


def test_write_compose_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "compose" / "api" / "compose.yaml"
    assert write_compose(VARIANTS["full"], str(target)) == target
    assert validate(target.read_text())
    assert [p.name for p in target.parent.iterdir()] == ["compose.yaml"]
    before = target.read_text()

    def crash(src: str, dst: str, **kwargs: object) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk gone"):
        write_compose(VARIANTS["minimal"], target)
    assert target.read_text() == before
    assert [p.name for p in target.parent.iterdir()] == ["compose.yaml"]


def test_templates_are_found_through_resources() -> None:
    assert (templates_dir() / "compose.yaml.j2").is_file()
    for kind in SERVICE_IMAGES:
        assert (compose_dir() / f"{kind}.yaml.j2").is_file()
    assert (compose_dir() / "README.md").is_file() and (templates_dir() / "README.md").is_file()


def test_strict_undefined_surfaces() -> None:
    with pytest.raises(jinja2.UndefinedError):
        render_template("compose.yaml.j2")
    with pytest.raises(jinja2.UndefinedError):
        render_template("compose.yaml.j2", spec=VARIANTS["full"], env={})  # no labels


@lru_cache(maxsize=1)
def compose_v2_cli() -> str:
    """`docker compose config` parses and validates without an engine."""
    if not shutil.which("docker"):
        unavailable("the docker CLI is not installed: run bash .ci/install-deps")
    r = subprocess.run(["docker", "compose", "version", "--short"], capture_output=True, text=True)
    if r.returncode != 0 or not r.stdout.strip().lstrip("v").startswith("2"):
        unavailable("Docker Compose v2 (`docker compose`) is not installed: run bash .ci/install-deps")
    return r.stdout.strip()


def compose_config(path: Path) -> dict[str, Any]:
    compose_v2_cli()
    r = subprocess.run(["docker", "compose", "-f", str(path), "config", "--format", "json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr + path.read_text()
    return json.loads(r.stdout)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_docker_compose_v2_accepts_rendered_file(tmp_path: Path, variant: str) -> None:
    compose_v2_cli()
    path = write_compose(VARIANTS[variant], tmp_path / "compose.yaml")
    r = subprocess.run(["docker", "compose", "-f", str(path), "config", "-q"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


# compose-go is a different YAML parser; NUL and raw C1/BOM are left to the schema test above
CLI_VALUE = st.one_of(
    KEYWORDS,
    st.text(alphabet=st.sampled_from(list("ab \"'\n\t:#{}[]$-~&*!|>%@`\\,?é😀\u2028\u0085")), max_size=20),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(
    env=st.dictionaries(ENV_KEY, CLI_VALUE, max_size=3),
    command=st.lists(CLI_VALUE, min_size=1, max_size=3),
    label=CLI_VALUE,
)
def test_docker_compose_sees_exactly_the_manifest_values(tmp_path: Path, env: dict[str, str], command: list[str], label: str) -> None:
    s = spec(environment=tuple(env.items()), command=tuple(command), labels=(("team", label),), services=SERVICES)
    doc = compose_config(write_compose(s, tmp_path / "compose.yaml"))
    agent = doc["services"]["agent"]
    # `config` prints the model with `$` escaped again as `$$`
    assert unescape(agent["command"]) == command
    assert unescape(agent.get("environment", {})) == env
    assert unescape(agent["labels"]["team"]) == label
