"""One agent's environment as every layer above sees it: the project, the
manifest's agent and the state record, and how a command gets one from a
record it has checked (docs/faults.md row 30).  Strategies, containers and
services take an ``EnvContext``; lifecycle and the commands make them."""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hybridiso import envfile, names
from hybridiso.errors import UserError
from hybridiso.manifest import Agent
from hybridiso.project import Project
from hybridiso.state import AgentRecord, State


class Steps:
    """Told where one agent's job is (``job``, then ``step("create")``,
    ``"includes"``, ``"setup"``, ``"start"``): `up`'s admission
    (envs/admission.py) waits there for room and shows the step (issue 15).
    Everywhere else, these do nothing."""

    def job(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def step(self, name: str) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()


@dataclass
class EnvContext:
    project: Project
    agent: Agent | None  # None for an env whose agent left the manifest
    record: AgentRecord
    cancel: threading.Event = field(default_factory=threading.Event)
    # saves the state this record is part of (under the repository lock; or,
    # while `up` has let it go, merged into the file: StateStore.save):
    # what must be on disk before a step that can outlive a kill -9 starts
    # (a setup's process group, docs/faults.md row 38)
    persist: Callable[[], None] = field(default=lambda: None, repr=False, compare=False)
    steps: Steps = field(default_factory=Steps, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.record.strategy in names.UNTRUSTED_FILES and self.record.path.startswith("/"):
            # a container wrote its files: the host's git never runs what they say (git.distrust)
            from hybridiso import git

            git.distrust(self.record.path)

    @property
    def path(self) -> Path:
        return Path(self.record.path)

    @property
    def name(self) -> str:
        return self.record.name


def environment_for(project: Project, agent: Agent | None, record: AgentRecord) -> dict[str, str]:
    extra = project.manifest.env_for(agent) if agent is not None else {}
    extra = {**extra, **record.service_env}
    return envfile.agent_environment(
        record.name, record.strategy, record.branch, Path(record.path), record.ports, extra, project.id
    )


class UnsafeRecord(UserError):
    """A record hybridiso must not act on: its path is not the agent's own
    place in the workspace (a tampered or corrupt state.json, docs/faults.md row 30)."""


def unsafe_record(project: Project, problems: Sequence[tuple[str, str]]) -> UnsafeRecord:
    lines = "; ".join(f"agent {name}: {why}" for name, why in problems)
    return UnsafeRecord(
        f"refusing to act on {len(problems)} record{'s' if len(problems) > 1 else ''} of {project.store.path}, "
        f"nothing was touched: {lines}",
        hint=f"if the state file was edited by mistake, restore it; otherwise move it aside "
        f"(mv '{project.store.path}' '{project.store.path}.bad'): the next command rebuilds the records "
        "from git and the workspace",
    )


def context(project: Project, state: State, name: str) -> EnvContext:
    """The agent's environment, from a record whose path was checked: every
    command acts on a record through here (docs/faults.md row 30)."""
    record = state.agents[name]
    why = project.record_problem(name, record)
    if why:
        raise unsafe_record(project, [(name, why)])
    agent = next((a for a in project.manifest.agents if a.name == name), None)
    return EnvContext(project, agent, record, persist=lambda: project.store.save(state))
