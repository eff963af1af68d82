"""Rendered compose files: valid against the compose-spec schema, runnable by
`docker compose`, and impossible to break or inject from the manifest."""
from __future__ import annotations

import json
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hybridiso.container_spec import (
    PROJECT_NAME_RE,
    ContainerSpec,
    Healthcheck,
    Mount,
    PortMapping,
    ServiceSpec,
    project_name,
)
from hybridiso.render import expand_vars, render_compose, render_template, write_compose

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "shared" / "compose-spec" / "compose-spec.json"


@lru_cache(maxsize=1)
def validator() -> jsonschema.Draft7Validator:
    if not SCHEMA_PATH.exists():
        pytest.fail(f"the compose-spec schema is missing at {SCHEMA_PATH} (shared/ must sit beside the repository)")
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def validate(text: str) -> dict[str, Any]:
    doc = yaml.safe_load(text)
    validator().validate(doc)
    return doc


def unescape(value: Any) -> Any:
    """What compose sees after its own `$$` -> `$` unescaping."""
    if isinstance(value, str):
        return value.replace("$$", "$")
    if isinstance(value, list):
        return [unescape(v) for v in value]
    if isinstance(value, dict):
        return {unescape(k): unescape(v) for k, v in value.items()}
    return value


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
        labels=(("dev.hybridiso.agent", "api"),),
    )
    base.update(kw)
    return ContainerSpec(**base)


VARIANTS = {
    "minimal": spec(command=None, ports=(), environment=(), mounts=()),
    "full": spec(
        cpus=1.5,
        memory="1g",
        pids=128,
        healthcheck=Healthcheck(("CMD", "true")),
        services=(ServiceSpec("db", "postgres", "postgres:16-alpine"), ServiceSpec("cache", "redis", "redis:7-alpine")),
        extra_hosts=("host.docker.internal:host-gateway",),
    ),
    "host-network": spec(network_mode="host"),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_variant_validates_against_compose_spec(variant: str) -> None:
    doc = validate(render_compose(VARIANTS[variant]))
    agent = doc["services"]["agent"]
    assert doc["name"] == VARIANTS[variant].project
    assert agent["security_opt"] == ["no-new-privileges:true"]
    assert "container_name" not in json.dumps(doc)


def test_full_variant_has_limits_ports_on_loopback_services_and_labels() -> None:
    doc = validate(render_compose(VARIANTS["full"]))
    agent = doc["services"]["agent"]
    assert (agent["cpus"], agent["mem_limit"], agent["pids_limit"]) == (1.5, "1g", 128)
    assert agent["ports"] == [{"name": "web", "target": 20000, "published": "20000", "host_ip": "127.0.0.1", "protocol": "tcp"}]
    assert agent["user"] == "1000:1000"
    assert agent["depends_on"] == {"db": {"condition": "service_healthy"}, "cache": {"condition": "service_healthy"}}
    assert doc["services"]["db"]["healthcheck"]["test"][0] == "CMD-SHELL"
    assert set(doc["volumes"]) == {"db-data", "cache-data"}
    for part in (doc["networks"]["agent-net"], doc["volumes"]["db-data"], doc["services"]["db"]):
        assert part["labels"]["dev.hybridiso.agent"] == "api"
    mounts = {(m["source"], m["target"]) for m in agent["volumes"]}
    assert ("/src/shop/.git", "/src/shop/.git") in mounts


NASTY = st.text(
    alphabet=st.one_of(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), st.sampled_from(list("\"'\n:#{}[]$-~&*!|>%@`\\"))),
    max_size=40,
)
KEYWORDS = st.sampled_from(["yes", "no", "null", "~", "true", "False", "0x10", "1e3", "-", "- a", ": b", "{{ x }}", "${HOME}", "$$", "'", '"', "#x"])
VALUE = st.one_of(NASTY, KEYWORDS)
ENV_KEY = st.text(alphabet="ABCXYZ_019", max_size=12).map(lambda s: "K" + s)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    env=st.dictionaries(ENV_KEY, VALUE, max_size=5),
    command=st.lists(VALUE, min_size=1, max_size=4),
    path=VALUE.filter(lambda p: p != ""),
    label=VALUE,
    image=VALUE.filter(lambda p: p != ""),
)
def test_manifest_values_cannot_break_or_inject(env: dict[str, str], command: list[str], path: str, label: str, image: str) -> None:
    mount = "/work/" + path
    s = spec(
        image=image,
        command=tuple(command),
        environment=tuple(env.items()),
        mounts=(Mount(mount, mount),),
        workdir=mount,
        labels=(("dev.hybridiso.agent", "api"), ("team", label)),
    )
    doc = validate(render_compose(s))
    assert set(doc) <= {"name", "services", "networks", "volumes"}
    agent = doc["services"]["agent"]
    assert set(doc["services"]) == {"agent"}
    assert unescape(agent["image"]) == image
    assert unescape(agent["command"]) == command
    assert unescape(agent.get("environment", {})) == env
    assert unescape(agent["working_dir"]) == mount
    assert unescape(agent["volumes"][0]["source"]) == mount
    assert unescape(agent["labels"]) == {"dev.hybridiso.agent": "api", "team": label}
    assert agent["security_opt"] == ["no-new-privileges:true"]


def test_dollars_are_escaped_so_compose_never_interpolates() -> None:
    doc = validate(render_compose(spec(environment=(("A", "$HOME ${PATH} $$"),))))
    assert doc["services"]["agent"]["environment"]["A"] == "$$HOME $${PATH} $$$$"


def test_expand_vars_fills_known_names_only() -> None:
    v = {"PORT_WEB": "20001"}
    assert expand_vars("serve ${PORT_WEB} $PORT_WEB ${OTHER} $OTHER $5", v) == "serve 20001 20001 ${OTHER} $OTHER $5"


@given(st.text(max_size=30), st.text(max_size=30))
def test_project_names_follow_compose_rule_and_stay_distinct(repo: str, agent: str) -> None:
    name = project_name("/x/" + repo, agent)
    assert PROJECT_NAME_RE.match(name) and name == project_name("/x/" + repo, agent)
    other = project_name("/x/" + repo, agent + "2")
    assert other != name


def test_write_compose_is_atomic(tmp_path: Path) -> None:
    target = tmp_path / "compose" / "api" / "compose.yaml"
    write_compose(VARIANTS["full"], target)
    assert validate(target.read_text())
    assert [p.name for p in target.parent.iterdir()] == ["compose.yaml"]


def test_strict_undefined_surfaces() -> None:
    import jinja2

    with pytest.raises(jinja2.UndefinedError):
        render_template("compose.yaml.j2")


@pytest.mark.docker
def test_docker_compose_v2_accepts_rendered_file(tmp_path: Path, compose_v2: str) -> None:
    path = write_compose(VARIANTS["full"], tmp_path / "compose.yaml")
    r = subprocess.run(["docker", "compose", "-f", str(path), "config", "-q"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
