"""The manifest, ``hybridiso.yaml``: pydantic models and a loader whose errors
name the file, the line and the field, sorted, like compose's
"The manifest 'x' is invalid because:" (docs/faults.md rows 1-4, 39).

Every problem is reported in one message: field errors, the checks across
fields (manifest_checks.py) and, when the repository is known, the
workspace's place (docs/faults.md row 29), all sorted by line.
"""
from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, ValidationError, ValidationInfo, field_validator, model_validator

from hybridiso import egress, names, yaml_loader
from hybridiso.errors import UserError
from hybridiso.names import agent_name_problem, branch_name_problem, port_name_problem, service_name_problem

MANIFEST_NAME = "hybridiso.yaml"



def _isolation(value: Any) -> Any:
    """``auto`` or a strategy's name, read from the one table of them
    (``names.STRATEGY_NAMES``, which the registry is checked against) when
    the manifest is read, so a strategy added there is accepted here."""
    accepted = ("auto", *names.STRATEGY_NAMES)
    if value not in accepted:
        quoted = [repr(a) for a in accepted]
        raise ValueError(f"Input should be {', '.join(quoted[:-1])} or {quoted[-1]}")
    return value


Isolation = Annotated[str, BeforeValidator(_isolation)]
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
_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*", re.IGNORECASE)
# Bounds a host can plausibly honour; past them Docker overflows its int64
# nanoseconds or bytes (docs/faults.md row 39: numbers out of range are manifest errors).
MAX_BYTES = 1 << 50  # 1 PiB
MIN_MEMORY = 6 << 20  # Docker refuses a memory limit below 6 MiB
MAX_CPUS = 1024
MAX_PIDS = 4_194_304  # Linux's PID_MAX_LIMIT
MAX_RETRIES = 10_000
MAX_DURATION_SECONDS = 24 * 3600


def parse_size(text: str | int) -> int:
    """'1g', '512m', '10GiB', 2048 -> bytes; at most MAX_BYTES."""
    if isinstance(text, bool) or not isinstance(text, (str, int)):
        raise ValueError(f"{text!r} is not a size like '512m' or '10g'")
    if isinstance(text, int):
        size = text
    else:
        m = _SIZE_RE.fullmatch(text)
        if not m:
            raise ValueError(f"{text!r} is not a size like '512m' or '10g'")
        scale = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[m.group(2).lower()]
        size = int(Fraction(m.group(1)) * scale)  # exact: a float of 400 digits is inf
    if not 0 <= size <= MAX_BYTES:
        raise ValueError(f"{text!r} is out of range (0 to 1 PiB)")
    return size


class _Model(BaseModel):
    # allow_inf_nan: `.inf` and `.nan` are never a limit (docs/faults.md row 39)
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class PortRange(_Model):
    range: str = "20000-20999"

    @field_validator("range")
    @classmethod
    def _range(cls, v: str) -> str:
        m = re.fullmatch(r"\s*(\d{1,5})\s*-\s*(\d{1,5})\s*", v)
        if not m:
            raise ValueError("must look like '20000-20999'")
        lo, hi = int(m.group(1)), int(m.group(2))
        if not (1024 <= lo <= hi <= 65535):
            raise ValueError("must be within 1024-65535, low end first")
        return f"{lo}-{hi}"

    def bounds(self) -> tuple[int, int]:
        lo, hi = self.range.split("-")
        return int(lo), int(hi)


def _command(v: str | list[str]) -> str | list[str]:
    # an empty command would run nothing ("") or crash the runner ([])
    if isinstance(v, str):
        if not v.strip():
            raise ValueError("the command is empty")
    elif not v or not v[0]:
        raise ValueError("the command is empty: a list needs the program first, e.g. [\"npm\", \"ci\"]")
    return v


Command = Annotated[str | list[str], AfterValidator(_command)]
_KEY_RE = re.compile(r"[^\s=$]+")


def _plain_key(key: str) -> str:
    # a key goes into a container's environment (KEY=value) and Docker labels
    # as written: Compose never interpolates keys, so a '$' could not be escaped
    if not _KEY_RE.fullmatch(key):
        raise ValueError(f"{key!r} cannot be a name here: it must be non-empty, without spaces, '=' or '$'")
    return key


def _env_key(key: str) -> str:
    _plain_key(key)
    if key.upper().startswith("HYBRIDISO_"):
        raise ValueError(f"{key!r}: names starting with HYBRIDISO_ are hybridiso's own (HYBRIDISO_AGENT, ...)")
    return key


def _pattern(v: str) -> str:
    if not v.strip():
        raise ValueError("an include pattern is empty")
    return v


PlainKey = Annotated[str, AfterValidator(_plain_key)]
EnvKey = Annotated[str, AfterValidator(_env_key)]
IncludePattern = Annotated[str, AfterValidator(_pattern)]


def _refusing(problem_of: Callable[[str], str | None]) -> AfterValidator:
    """A name's validator: what ``problem_of`` finds wrong with it is the error."""

    def check(name: str) -> str:
        problem = problem_of(name)
        if problem:
            raise ValueError(problem)
        return name

    return AfterValidator(check)


ServiceName = Annotated[str, _refusing(service_name_problem)]
BranchName = Annotated[str, _refusing(branch_name_problem)]  # what `git check-ref-format --branch` accepts
AgentName = Annotated[str, _refusing(agent_name_problem)]  # the compose project-name rule, and a directory name


class Defaults(_Model):
    setup: list[Command] = Field(default_factory=list)
    include: list[IncludePattern] = Field(default_factory=list)
    env: dict[EnvKey, str] = Field(default_factory=dict)


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
    cpus: float | None = Field(default=None, ge=0.01, le=MAX_CPUS)
    memory: str | None = None
    pids: int | None = Field(default=None, gt=0, le=MAX_PIDS)

    @field_validator("memory")
    @classmethod
    def _memory(cls, v: str | None) -> str | None:
        if v is not None and parse_size(v) < MIN_MEMORY:
            raise ValueError(f"{v!r} is below Docker's minimum memory limit of 6 MiB")
        return v


_DURATION_RE = re.compile(r"(\d+(\.\d+)?(us|ms|s|m|h))+")
_DURATION_PART_RE = re.compile(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)")
_DURATION_UNITS = {"us": Fraction(1, 10**6), "ms": Fraction(1, 1000), "s": Fraction(1), "m": Fraction(60), "h": Fraction(3600)}


def duration_seconds(text: str) -> Fraction:
    """'1m30s' -> 90 (exact: Docker takes nanoseconds in an int64)."""
    return sum((Fraction(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART_RE.findall(text)), Fraction(0))


class Healthcheck(_Model):
    """When the agent's container is ready.  ``test`` as a list is run as is
    (``CMD``); as a string, by the container's shell (``CMD-SHELL``).
    ``${PORT_<NAME>}`` is filled in, as in ``command``."""

    test: str | list[str]
    interval: str = "2s"
    timeout: str = "5s"
    retries: int = Field(default=30, gt=0, le=MAX_RETRIES)
    start_period: str = "1s"

    @field_validator("interval", "timeout", "start_period")
    @classmethod
    def _duration(cls, v: str, info: ValidationInfo) -> str:
        if not _DURATION_RE.fullmatch(v):
            raise ValueError(f"{v!r} is not a duration (like 2s, 500ms, 1m30s)")
        seconds = duration_seconds(v)
        if seconds > MAX_DURATION_SECONDS:
            raise ValueError(f"{v!r} is longer than 24h")
        if info.field_name != "start_period" and seconds < Fraction(1, 1000):
            raise ValueError(f"{v!r} is shorter than 1ms (Docker's minimum)")
        return v

    @field_validator("test")
    @classmethod
    def _test(cls, v: str | list[str]) -> str | list[str]:
        if not v or (isinstance(v, list) and not v[0]):
            raise ValueError("the healthcheck command is empty")
        return v


WorkloadKind = Literal["edit", "compute", "io", "build", "test"]
# the kinds whose setup is compute-bound: admitted one per core (issue 15)
COMPUTE_KINDS = frozenset({"compute", "build", "test"})


class Workload(_Model):
    kind: WorkloadKind = "edit"
    needs: list[Need] = Field(default_factory=list)

    @property
    def compute_bound(self) -> bool:
        return self.kind in COMPUTE_KINDS


MAX_SETUP_JOBS = 256  # like up -j


class Limits(_Model):
    """How much `up` runs at once (issue 15; docs/manifest.md).  Unset: what
    the machine sustains (hybridiso.machine)."""

    # compute-bound setups at once; strict: `true` or "2" is not a number
    setup_jobs: int | None = Field(default=None, ge=1, le=MAX_SETUP_JOBS, strict=True)
    # setups of agents with workload.kind: io at once
    io_setup_jobs: int | None = Field(default=None, ge=1, le=MAX_SETUP_JOBS, strict=True)


LandMethod = Literal["rebase", "merge", "squash"]
DEFAULT_LAND_TIMEOUT = "30m"


def _land_timeout(v: str | None) -> str | None:
    if v is None:
        return v
    if not _DURATION_RE.fullmatch(v):
        raise ValueError(f"{v!r} is not a duration (like 90s, 10m, 1h30m)")
    seconds = duration_seconds(v)
    if seconds > MAX_DURATION_SECONDS:
        raise ValueError(f"{v!r} is longer than 24h")
    if seconds < 1:
        raise ValueError(f"{v!r} is shorter than 1s")
    return v


LandTimeout = Annotated[str | None, AfterValidator(_land_timeout)]


class AgentLand(_Model):
    """What one agent may change of ``land:`` (issue 14): its own check, how
    its work is applied, and how long its check may take.  Where it lands
    and where that is pushed are the repository's, one for all."""

    check: list[Command] | None = None
    method: LandMethod | None = None
    timeout: LandTimeout = None


class Land(_Model):
    """``hybridiso land`` (issue 14; docs/land.md)."""

    check: list[Command] = Field(default_factory=list)
    method: LandMethod = "rebase"
    target: BranchName | None = None  # default: base's branch
    push: str | None = None  # a remote the target is pushed to after each landing
    timeout: LandTimeout = DEFAULT_LAND_TIMEOUT

    @field_validator("push")
    @classmethod
    def _push(cls, v: str | None) -> str | None:
        if v is not None and (not v.strip() or v.startswith("-") or any(c.isspace() for c in v)):
            raise ValueError(f"{v!r} is not a remote name (like origin)")
        return v


# Docker's reference grammar (distribution/reference): [domain/]path[:tag][@digest],
# path components lowercase; refused here, not after a pull that cannot work
_DOMAIN = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*(?::[0-9]+)?"
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_IMAGE_RE = re.compile(
    rf"(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*(?::[\w][\w.-]{{0,127}})?"
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?"
)


class Agent(_Model):
    name: AgentName
    branch: BranchName | None = None
    isolation: Isolation = "auto"
    image: str | None = None
    command: list[str] | None = None
    ports: list[str] = Field(default_factory=list)
    services: list[str] = Field(default_factory=list)
    resources: Resources | None = None
    healthcheck: Healthcheck | None = None
    workload: Workload = Field(default_factory=Workload)
    setup: list[Command] | None = None
    include: list[IncludePattern] | None = None
    env: dict[EnvKey, str] = Field(default_factory=dict)
    # container agents' boundary (issue 12; docs/containers.md)
    egress: list[str] = Field(default_factory=list)
    read_only: bool = False
    cap_add: list[str] = Field(default_factory=list)
    setup_on: Literal["container", "host"] = "container"
    network_fallback: Literal["refuse", "none", "internal"] = "refuse"
    land: AgentLand | None = None

    @field_validator("image")
    @classmethod
    def _image(cls, v: str | None) -> str | None:
        if v is not None and (not _IMAGE_RE.fullmatch(v) or len(v.split("@")[0].rsplit(":", 1)[0]) > 255):
            raise ValueError(
                f"{v!r} is not an image reference: like python:3.12-slim or registry.example.com:5000/team/app:1 "
                "(the name in lowercase letters, digits and . _ -, then an optional :tag)"
            )
        return v

    @field_validator("command")
    @classmethod
    def _command(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and (not v or not v[0]):
            raise ValueError("the command is empty: leave `command:` out to run the image's own")
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
        return [str(egress.parse_egress(entry)) for entry in v]

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
    services: dict[ServiceName, Service] = Field(default_factory=dict)
    agents: list[Agent] = Field(default_factory=list)
    land: Land = Field(default_factory=Land)
    limits: Limits = Field(default_factory=Limits)
    # where each part is in the file, for problems found later (plan time)
    _lines: dict[tuple[str | int, ...], int] = PrivateAttr(default_factory=dict)

    @field_validator("base")
    @classmethod
    def _base(cls, v: str) -> str:
        if not v.strip() or v.startswith("-"):
            raise ValueError("must name a branch, tag or commit")
        return v

    @field_validator("workspace")
    @classmethod
    def _workspace(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not v.strip():
            raise ValueError("is empty: leave it out for the default (../<repo>.agents)")
        if "\x00" in v:
            raise ValueError("contains a NUL character")
        if v.startswith("~") and os.path.expanduser(v).startswith("~"):
            user = v[1:].split("/", 1)[0]
            raise ValueError(f"{v!r}: there is no user {user!r} on this machine (for your own home, write ~/...)" if user else f"{v!r}: no home directory is known ($HOME is not set)")
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

    def land_check_for(self, agent: Agent) -> list[Command]:
        own = agent.land.check if agent.land is not None else None
        return list(own if own is not None else self.land.check)

    def land_method_for(self, agent: Agent) -> LandMethod:
        own = agent.land.method if agent.land is not None else None
        return own or self.land.method

    def land_timeout_for(self, agent: Agent) -> float:
        """Seconds one check command of ``agent`` may run."""
        own = agent.land.timeout if agent.land is not None else None
        return float(duration_seconds(own or self.land.timeout or DEFAULT_LAND_TIMEOUT))

    def land_target(self) -> str:
        """The branch ``land`` moves: ``land.target``, else ``base`` (which
        must then be a local branch: the queue says so)."""
        return self.land.target or self.base.removeprefix("refs/heads/")

    def env_for(self, agent: Agent) -> dict[str, str]:
        return {**self.defaults.env, **agent.env}

    def line_of(self, *loc: str | int) -> int:
        """The line in the file where ``loc`` (like "agents", 2, "branch") is."""
        return line_for(self._lines, loc)

    def workspace_path(self, repo: RepoContext) -> Path:
        """Where environments live: ``workspace:`` (``~`` expanded, relative
        to the repository root), else the default; resolved."""
        if not self.workspace:
            return repo.default_workspace.resolve()
        ws = Path(self.workspace).expanduser()
        return (ws if ws.is_absolute() else repo.root / ws).resolve()


@dataclass(frozen=True)
class RepoContext:
    """What the manifest check needs to know about the repository it is for:
    the workspace must not be the repository, hold it, or hold the home
    directory (docs/faults.md row 29)."""

    root: Path  # the main worktree's root: a relative workspace starts here
    common_dir: Path  # the git dir every worktree shares
    default_workspace: Path
    worktrees: tuple[Path, ...] = ()  # every worktree's root (the user's own too)


# --- loading, with line numbers -------------------------------------------------

Loc = yaml_loader.Loc


@dataclass(frozen=True)
class Problem:
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"  line {self.line}: {self.field}: {self.message}" if self.field else f"  line {self.line}: {self.message}"


def field_path(loc: Iterable[str | int]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def line_for(index: dict[Loc, int], loc: Loc) -> int:
    while loc not in index and loc:
        loc = loc[:-1]
    return index.get(loc, 1)


class ManifestError(UserError):
    def __init__(self, path: Path, problems: list[Problem]) -> None:
        problems = sorted(set(problems), key=lambda p: (p.line, p.field, p.message))
        body = "\n".join(str(p) for p in problems)
        super().__init__(
            f"The manifest '{path}' is invalid because:\n{body}",
            hint=f"fix the lines above in {path.name}; `hybridiso init --print` shows a commented example",
        )
        self.problems = problems
        self.path = path


@dataclass
class Checked:
    """The manifest as far as it is valid, for the checks across fields:
    parts with field errors are left out (``pruned``, in the file's own
    positions), so every other problem is still found in the same run."""

    manifest: Manifest
    lines: dict[Loc, int]
    agent_pos: list[int]  # manifest.agents[i] is agents[agent_pos[i]] in the file
    pruned: set[Loc]

    def line(self, loc: Loc) -> int:
        return line_for(self.lines, loc)

    def agent_loc(self, i: int, *rest: str | int) -> Loc:
        return ("agents", self.agent_pos[i], *rest)

    def clean(self, *locs: Loc) -> bool:
        """None of ``locs`` (nor anything above or below them) was left out."""
        for loc in locs:
            for p in self.pruned:
                n = min(len(p), len(loc))
                if p[:n] == loc[:n]:
                    return False
        return True

    def agent_clean(self, i: int, *fields: str) -> bool:
        return self.clean(*(self.agent_loc(i, f) for f in fields))


def _is_type_tag(part: str | int) -> bool:
    # pydantic puts the union member or validator name into ``loc``
    # ("str", "list[str]", "function-after[...]"); they are not manifest fields.
    return isinstance(part, str) and (part in {"str", "int", "float", "bool"} or "[" in part)


def _error_loc(err: Any) -> Loc:
    return tuple(p for p in err["loc"] if not _is_type_tag(p))


def _problem(err: Any, lines: dict[Loc, int]) -> Problem:
    loc = _error_loc(err)
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown key (check the spelling; see docs/manifest.md)"
    msg = msg.removeprefix("Value error, ")
    return Problem(line_for(lines, loc), field_path(loc), msg)


def _prune_depth(loc: Loc) -> int:
    """How much of the file a field error takes out of the cross-checks: an
    agent's field, a service, one entry of a top-level mapping, or a key."""
    if loc[0] == "agents" and len(loc) >= 4 and loc[2] == "env":
        return 4  # one env: key, so the others are still checked
    if loc[:2] == ("defaults", "env") and len(loc) >= 3:
        return 3
    if loc[0] == "agents" and len(loc) >= 3:
        return 3
    if len(loc) >= 2:
        return 2
    return 1


def _drop_in(mapping: dict[Any, Any], loc: Loc) -> None:
    """Take ``loc`` out of ``mapping`` (copying the mappings on the way)."""
    if len(loc) > 1 and isinstance(mapping.get(loc[0]), dict):
        mapping[loc[0]] = dict(mapping[loc[0]])
        _drop_in(mapping[loc[0]], loc[1:])
    else:
        mapping.pop(loc[0], None)


class _Pruner:
    """A copy of the data with invalid parts taken out (never the caller's)."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.top = dict(data)
        raw = data.get("agents")
        self.agents: list[Any] | None = [dict(a) if isinstance(a, dict) else a for a in raw] if isinstance(raw, list) else None
        self.removed: set[int] = set()
        self.pruned: set[Loc] = set()
        self.agent_pos: list[int] = list(range(len(self.agents or [])))

    def original(self, loc: Loc) -> Loc:
        """``loc`` of an error in ``data()`` as a position in the file."""
        if len(loc) >= 2 and loc[0] == "agents" and isinstance(loc[1], int) and loc[1] < len(self.agent_pos):
            return ("agents", self.agent_pos[loc[1]], *loc[2:])
        return loc

    def drop(self, loc: Loc, coarser: int) -> bool:
        if not loc:
            return False
        loc = loc[: max(1, _prune_depth(loc) - coarser)]
        self.pruned.add(loc)
        key: Any = loc[0]  # a YAML key may be an int
        if key == "agents" and self.agents is not None and len(loc) >= 2 and isinstance(loc[1], int):
            i = loc[1]
            if len(loc) == 2:
                self.removed.add(i)
            elif isinstance(self.agents[i], dict):
                _drop_in(self.agents[i], loc[2:])
        elif len(loc) >= 2 and isinstance(self.top.get(key), dict):
            self.top[key] = dict(self.top[key])
            _drop_in(self.top[key], loc[1:])
        else:
            self.top.pop(key, None)
            if key == "agents":
                self.agents = None
        return True

    def data(self) -> dict[str, Any]:
        out = dict(self.top)
        if self.agents is not None:
            self.agent_pos = [i for i in range(len(self.agents)) if i not in self.removed]
            out["agents"] = [self.agents[i] for i in self.agent_pos]
        return out


def _validate(data: dict[str, Any], lines: dict[Loc, int]) -> tuple[Checked | None, list[Problem]]:
    """Field errors, and the manifest without the parts they are in (None
    when even that does not validate)."""
    try:
        manifest = Manifest.model_validate(data)
        count = len(manifest.agents)
        return Checked(manifest, lines, list(range(count)), set()), []
    except ValidationError as e:
        errors = e.errors()
    problems = [_problem(err, lines) for err in errors]
    pruner = _Pruner(data)
    bad = [_error_loc(err) for err in errors]
    # what is left may fail on what was taken out (a required field): take
    # out a level more each pass; these errors are not the user's, so not shown
    for coarser in range(3):
        if not all([pruner.drop(loc, coarser) for loc in bad]):
            break
        try:
            manifest = Manifest.model_validate(pruner.data())
        except ValidationError as e:
            bad = [pruner.original(_error_loc(err)) for err in e.errors()]
            continue
        return Checked(manifest, lines, pruner.agent_pos, pruner.pruned), problems
    return None, problems


def _nul_problems(data: Any, lines: dict[Loc, int], loc: Loc = ()) -> list[Problem]:
    """A NUL cannot reach a path, an argument or an environment variable
    (Python refuses it there, mid-run): refuse it in the file."""
    found: list[Problem] = []
    if isinstance(data, str):
        if "\x00" in data:
            found.append(Problem(line_for(lines, loc), field_path(loc), "contains a NUL character (\\0)"))
    elif isinstance(data, dict):
        for k, v in data.items():
            if isinstance(k, str) and "\x00" in k:
                found.append(Problem(line_for(lines, (*loc, k)), field_path((*loc, k)), "the key contains a NUL character (\\0)"))
            found += _nul_problems(v, lines, (*loc, str(k)))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            found += _nul_problems(v, lines, (*loc, i))
    return found


def _duplicate_problems(doc: yaml_loader.Document) -> list[Problem]:
    return [
        Problem(
            d.line,
            field_path((*d.loc, d.key)),
            f"duplicate key {d.key!r}: line {d.first_line} has it already (YAML keys are unique; the last one would win silently)",
        )
        for d in doc.duplicates
    ]


def check_fields(text: str, path: Path) -> tuple[Checked | None, list[Problem]]:
    """Parse ``text`` and check every field on its own: the manifest (None
    when it is unusable) and every problem found.  The checks across fields
    and against the repository are manifest_file's."""
    try:
        doc = yaml_loader.load(text)
    except yaml_loader.Refused as e:
        raise ManifestError(path, [Problem(e.line, "", e.message)]) from None
    except yaml.YAMLError as e:
        what = getattr(e, "problem", None) or str(e)
        raise ManifestError(path, [Problem(yaml_loader.error_line(e, text), "", f"YAML syntax error: {what}")]) from None
    data = {} if doc.data is None else doc.data
    if not isinstance(data, dict):
        raise ManifestError(path, [Problem(1, "", "the manifest must be a mapping (key: value) at the top")])
    checked, problems = _validate(data, doc.lines)
    reported = {p.field for p in problems}
    problems += [p for p in _nul_problems(data, doc.lines) if p.field not in reported]
    problems += _duplicate_problems(doc)
    return checked, problems


def read_yaml(text: str) -> Any:
    """Safe-load YAML text that hybridiso wrote itself (the compose files it
    renders and reads back): the fast C loader, no bounds needed."""
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
