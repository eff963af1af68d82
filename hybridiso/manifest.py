"""The manifest, ``hybridiso.yaml``: pydantic models and a loader whose errors
name the file, the line and the field, sorted, like compose's
"The manifest 'x' is invalid because:" (STYLE.md #4, FAULTS #1-#4).
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from hybridiso.errors import UserError
from hybridiso.names import agent_name_problem, branch_name_problem, port_name_problem

MANIFEST_NAME = "hybridiso.yaml"

Isolation = Literal["auto", "worktree", "clone", "container"]
Need = Literal[
    "network-isolation",
    "resource-limits",
    "untrusted-code",
    "own-refs",
    "host-network",
]
# capabilities(7), without the CAP_ prefix, as Docker's cap_add takes them
CAPABILITIES = frozenset(
    """AUDIT_CONTROL AUDIT_READ AUDIT_WRITE BLOCK_SUSPEND BPF CHECKPOINT_RESTORE CHOWN DAC_OVERRIDE
    DAC_READ_SEARCH FOWNER FSETID IPC_LOCK IPC_OWNER KILL LEASE LINUX_IMMUTABLE MAC_ADMIN MAC_OVERRIDE
    MKNOD NET_ADMIN NET_BIND_SERVICE NET_BROADCAST NET_RAW PERFMON SETFCAP SETGID SETPCAP SETUID
    SYSLOG SYS_ADMIN SYS_BOOT SYS_CHROOT SYS_MODULE SYS_NICE SYS_PACCT SYS_PTRACE SYS_RAWIO
    SYS_RESOURCE SYS_TIME SYS_TTY_CONFIG WAKE_ALARM""".split()
) | {"ALL"}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)


def parse_size(text: str | int) -> int:
    """'1g', '512m', '10GiB', 2048 -> bytes."""
    if isinstance(text, int):
        return text
    m = _SIZE_RE.match(text)
    if not m:
        raise ValueError(f"{text!r} is not a size like '512m' or '10g'")
    scale = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[m.group(2).lower()]
    return int(float(m.group(1)) * scale)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PortRange(_Model):
    range: str = "20000-20999"

    @field_validator("range")
    @classmethod
    def _range(cls, v: str) -> str:
        m = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", v)
        if not m:
            raise ValueError("must look like '20000-20999'")
        lo, hi = int(m.group(1)), int(m.group(2))
        if not (1024 <= lo <= hi <= 65535):
            raise ValueError("must be within 1024-65535, low end first")
        return f"{lo}-{hi}"

    def bounds(self) -> tuple[int, int]:
        lo, hi = self.range.split("-")
        return int(lo), int(hi)


Command = str | list[str]
_KEY_RE = re.compile(r"^[^\s=$]+$")


def _plain_key(key: str) -> str:
    # a key goes into a container's environment (KEY=value) and Docker labels
    # as written: Compose never interpolates keys, so a '$' could not be escaped
    if not _KEY_RE.match(key):
        raise ValueError(f"{key!r} cannot be a name here: it must be non-empty, without spaces, '=' or '$'")
    return key


PlainKey = Annotated[str, AfterValidator(_plain_key)]


class Defaults(_Model):
    setup: list[Command] = Field(default_factory=list)
    include: list[str] = Field(default_factory=list)
    env: dict[PlainKey, str] = Field(default_factory=dict)


class Service(_Model):
    kind: Literal["postgres", "redis"]
    # With a url, the service is an existing server and each agent gets a
    # database branch on it; without one it runs in the agent's compose project.
    url: str | None = None
    template: str | None = None
    image: str | None = None

    @property
    def runs_in_container(self) -> bool:
        return self.url is None


class Resources(_Model):
    cpus: float | None = Field(default=None, gt=0)
    memory: str | None = None
    pids: int | None = Field(default=None, gt=0)

    @field_validator("memory")
    @classmethod
    def _memory(cls, v: str | None) -> str | None:
        if v is not None:
            parse_size(v)
        return v


_DURATION_RE = re.compile(r"^(\d+(\.\d+)?(us|ms|s|m|h))+$")


class Healthcheck(_Model):
    """When the agent's container is ready.  ``test`` as a list is run as is
    (``CMD``); as a string, by the container's shell (``CMD-SHELL``).
    ``${PORT_<NAME>}`` is filled in, as in ``command``."""

    test: Command
    interval: str = "2s"
    timeout: str = "5s"
    retries: int = Field(default=30, gt=0)
    start_period: str = "1s"

    @field_validator("interval", "timeout", "start_period")
    @classmethod
    def _duration(cls, v: str) -> str:
        if not _DURATION_RE.match(v):
            raise ValueError(f"{v!r} is not a duration (like 2s, 500ms, 1m30s)")
        return v

    @field_validator("test")
    @classmethod
    def _test(cls, v: Command) -> Command:
        if not v or (isinstance(v, list) and not v[0]):
            raise ValueError("the healthcheck command is empty")
        return v


class Workload(_Model):
    kind: Literal["edit", "compute", "io", "build", "test"] = "edit"
    needs: list[Need] = Field(default_factory=list)


class Agent(_Model):
    name: str
    branch: str | None = None
    isolation: Isolation = "auto"
    image: str | None = None
    command: list[str] | None = None
    ports: list[str] = Field(default_factory=list)
    services: list[str] = Field(default_factory=list)
    resources: Resources | None = None
    healthcheck: Healthcheck | None = None
    workload: Workload = Field(default_factory=Workload)
    setup: list[Command] | None = None
    include: list[str] | None = None
    env: dict[PlainKey, str] = Field(default_factory=dict)
    # container agents' boundary (issue 12; docs/containers.md)
    egress: list[str] = Field(default_factory=list)
    read_only: bool = False
    cap_add: list[str] = Field(default_factory=list)
    setup_on: Literal["container", "host"] = "container"
    network_fallback: Literal["refuse", "none", "internal"] = "refuse"

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        problem = agent_name_problem(v)
        if problem:
            raise ValueError(problem)
        return v

    @field_validator("branch")
    @classmethod
    def _branch(cls, v: str | None) -> str | None:
        if v is not None:
            problem = branch_name_problem(v)
            if problem:
                raise ValueError(problem)
        return v

    @field_validator("ports")
    @classmethod
    def _ports(cls, v: list[str]) -> list[str]:
        for name in v:
            problem = port_name_problem(name)
            if problem:
                raise ValueError(problem)
        if len(set(v)) != len(v):
            raise ValueError("port names must be unique")
        return v

    @model_validator(mode="after")
    def _container_needs_image(self) -> Agent:
        if self.isolation == "container" and not self.image:
            raise ValueError("isolation: container needs an 'image' (for example python:3.12-slim)")
        return self

    @property
    def branch_name(self) -> str:
        return self.branch or f"hybridiso/{self.name}"

    @field_validator("egress")
    @classmethod
    def _egress(cls, v: list[str]) -> list[str]:
        from hybridiso.netguard import parse_egress

        return [str(parse_egress(entry)) for entry in v]

    @field_validator("cap_add")
    @classmethod
    def _cap_add(cls, v: list[str]) -> list[str]:
        names = [c.upper().removeprefix("CAP_") for c in v]
        unknown = [c for c in names if c not in CAPABILITIES]
        if unknown:
            raise ValueError(f"unknown capabilities {', '.join(unknown)} (Linux names, e.g. NET_BIND_SERVICE; see capabilities(7))")
        if "ALL" in names:
            raise ValueError("ALL would give back every capability: name the few the agent needs")
        return sorted(set(names))

    @property
    def network_isolated(self) -> bool:
        """No route to the host or outside except ``egress`` (issue 12)."""
        return bool({"network-isolation", "untrusted-code"} & set(self.workload.needs))

    @model_validator(mode="after")
    def _boundary_fits(self) -> Agent:
        if self.network_isolated and "host-network" in self.workload.needs:
            raise ValueError("host-network shares the host's network, so network-isolation/untrusted-code cannot hold: drop one of them")
        if self.egress and not self.network_isolated:
            raise ValueError("egress lists what a network-isolated agent may still reach: add network-isolation (or untrusted-code) to workload.needs, or drop egress")
        if self.network_fallback != "refuse" and not self.network_isolated:
            raise ValueError("network_fallback applies to network-isolated agents (workload.needs: network-isolation or untrusted-code)")
        container_only = [k for k, on in (("egress", self.egress), ("read_only", self.read_only), ("cap_add", self.cap_add)) if on]
        if container_only and not self.image:
            raise ValueError(f"{', '.join(container_only)} shape{'s' if len(container_only) == 1 else ''} a container: give the agent an 'image'")
        return self


class Manifest(_Model):
    version: Literal[1] = 1
    base: str = "main"
    workspace: str | None = None
    ports: PortRange = Field(default_factory=PortRange)
    disk_budget: str | None = None
    # extra labels on every container, network and volume (e.g. team, cost centre)
    labels: dict[PlainKey, str] = Field(default_factory=dict)
    defaults: Defaults = Field(default_factory=Defaults)
    services: dict[str, Service] = Field(default_factory=dict)
    agents: list[Agent] = Field(default_factory=list)

    @field_validator("base")
    @classmethod
    def _base(cls, v: str) -> str:
        if not v.strip() or v.startswith("-"):
            raise ValueError("must name a branch, tag or commit")
        return v

    @field_validator("disk_budget")
    @classmethod
    def _budget(cls, v: str | None) -> str | None:
        if v is not None:
            parse_size(v)
        return v

    def agent(self, name: str) -> Agent:
        for a in self.agents:
            if a.name == name:
                return a
        known = ", ".join(a.name for a in self.agents) or "none"
        raise UserError(f"no agent named {name!r} in the manifest (agents: {known})")

    def setup_for(self, agent: Agent) -> list[Command]:
        return list(agent.setup if agent.setup is not None else self.defaults.setup)

    def include_for(self, agent: Agent) -> list[str]:
        return list(agent.include if agent.include is not None else self.defaults.include)

    def runs_services_in_containers(self, agent: Agent) -> bool:
        """The agent lists a service that runs in its compose project (not a
        server with a url): Compose v2 starts such a project."""
        return any(self.services[s].runs_in_container for s in agent.services if s in self.services)

    def env_for(self, agent: Agent) -> dict[str, str]:
        return {**self.defaults.env, **agent.env}


# --- loading, with line numbers -------------------------------------------------

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class Problem:
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"  line {self.line}: {self.field}: {self.message}" if self.field else f"  line {self.line}: {self.message}"


def _line_index(node: yaml.Node, loc: Loc = (), out: dict[Loc, int] | None = None) -> dict[Loc, int]:
    """Map each path in the YAML document to the (1-based) line where it starts."""
    out = {} if out is None else out
    out.setdefault(loc, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            child = loc + (str(key.value),)
            out[child] = key.start_mark.line + 1
            _line_index(value, child, out)
            out[child] = key.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _line_index(item, loc + (i,), out)
    return out


def _field_path(loc: Iterable[str | int]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _line_for(index: dict[Loc, int], loc: Loc) -> int:
    while loc not in index and loc:
        loc = loc[:-1]
    return index.get(loc, 1)


class ManifestError(UserError):
    def __init__(self, path: Path, problems: list[Problem]) -> None:
        problems = sorted(problems, key=lambda p: (p.line, p.field))
        body = "\n".join(str(p) for p in problems)
        super().__init__(
            f"The manifest '{path}' is invalid because:\n{body}",
            hint=f"fix the lines above in {path.name}; `hybridiso init --print` shows a commented example",
        )
        self.problems = problems


def _cross_checks(m: Manifest, index: dict[Loc, int]) -> list[Problem]:
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    for i, agent in enumerate(m.agents):
        if agent.name in seen:
            first = seen[agent.name]
            problems.append(
                Problem(
                    _line_for(index, ("agents", i, "name")),
                    f"agents[{i}].name",
                    f"duplicate agent name {agent.name!r}: agents[{first}] (line "
                    f"{_line_for(index, ('agents', first, 'name'))}) has the same name",
                )
            )
        else:
            seen[agent.name] = i
        for s in agent.services:
            if s not in m.services:
                known = ", ".join(sorted(m.services)) or "none declared"
                problems.append(
                    Problem(
                        _line_for(index, ("agents", i, "services")),
                        f"agents[{i}].services",
                        f"unknown service {s!r} (services: {known})",
                    )
                )
    from hybridiso.planner import Facts, decide  # the rules live there; they import this module

    container_services = frozenset(n for n, s in m.services.items() if s.runs_in_container)
    for i, agent in enumerate(m.agents):
        in_containers = [s for s in agent.services if s in m.services and m.services[s].runs_in_container]
        if not agent.image:
            decision = decide(agent, Facts(container_services))
            if decision.strategy == "container":
                problems.append(
                    Problem(
                        _line_for(index, ("agents", i)),
                        f"agents[{i}].image",
                        f"this agent gets a container ({decision.reason}), and a container needs an 'image' "
                        "(for example python:3.12-slim)",
                    )
                )
        if agent.healthcheck is not None and not agent.image:
            problems.append(
                Problem(
                    _line_for(index, ("agents", i, "healthcheck")),
                    f"agents[{i}].healthcheck",
                    "a healthcheck runs in the agent's container: give the agent an 'image'",
                )
            )
        if "host-network" in agent.workload.needs and agent.image and in_containers:
            problems.append(
                Problem(
                    _line_for(index, ("agents", i, "services")),
                    f"agents[{i}].services",
                    f"{', '.join(in_containers)} would run in containers on the agent's own network, which a "
                    "host-network container cannot reach: drop 'host-network' from workload.needs, or give "
                    "the service a 'url' on a server the host reaches",
                )
            )
    # FAULTS #2: two worktree agents on one branch is impossible in git; say so
    # before any git call.  (With isolation: auto the planner gives the second a clone.)
    by_branch: dict[str, int] = {}
    for i, agent in enumerate(m.agents):
        if agent.isolation not in ("worktree", "container"):
            continue
        first = by_branch.setdefault(agent.branch_name, i)
        if first != i:
            problems.append(
                Problem(
                    _line_for(index, ("agents", i, "branch")),
                    f"agents[{i}].branch",
                    f"branch {agent.branch_name!r} is also used by agents[{first}] "
                    f"({m.agents[first].name}); two worktrees cannot check out one branch: "
                    "give one a different branch, or isolation: clone",
                )
            )
    for name, svc in m.services.items():
        if svc.kind == "postgres" and svc.url and not svc.template:
            problems.append(
                Problem(
                    _line_for(index, ("services", name)),
                    f"services.{name}.template",
                    "a postgres service with a url needs 'template': the database each agent's branch is copied from",
                )
            )
    return problems


def _is_type_tag(part: str | int) -> bool:
    # pydantic puts the union member or validator name into ``loc``
    # ("str", "list[str]", "function-after[...]"); they are not manifest fields.
    return isinstance(part, str) and (part in {"str", "int", "float", "bool"} or "[" in part)


def parse_manifest(text: str, path: Path) -> Manifest:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        what = getattr(e, "problem", None) or str(e)
        raise ManifestError(path, [Problem(line, "", f"YAML syntax error: {what}")]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ManifestError(path, [Problem(1, "", "the manifest must be a mapping (key: value) at the top")])
    index = _line_index(node) if node is not None else {}
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            loc = tuple(p for p in err["loc"] if not _is_type_tag(p))
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                msg = "unknown key (check the spelling; see docs/manifest.md)"
            msg = msg.removeprefix("Value error, ")
            problems.append(Problem(_line_for(index, loc), _field_path(loc), msg))
        raise ManifestError(path, problems) from None
    problems = _cross_checks(manifest, index)
    if problems:
        raise ManifestError(path, problems)
    return manifest


def load_manifest(path: Path) -> Manifest:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(
            f"no manifest at {path}",
            hint="run `hybridiso init` to write a starter hybridiso.yaml",
        ) from None
    except UnicodeDecodeError:
        raise UserError(f"the manifest {path} is not UTF-8 text") from None
    except IsADirectoryError:
        raise UserError(f"the manifest {path} is a directory", hint="give the YAML file itself, e.g. -f DIR/hybridiso.yaml") from None
    except OSError as e:
        raise UserError(f"cannot read the manifest {path}: {e.strerror}") from None
    return parse_manifest(text, path)


def read_yaml(text: str) -> Any:
    """Safe-load YAML text: hybridiso's one YAML reader (also for the compose
    files it renders and reads back)."""
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def load_manifest_data(value: Any) -> Manifest:
    """Validate already-parsed data (used by tests and ``init``)."""
    return Manifest.model_validate(value)
