"""A container agent's ``land.check``, run where the agent runs (issue 14 item 2).

Each check command runs in a one-off container of the agent's own shape
(strategies/container.py ``one_off_plan``, the same code that shapes its
setup containers): its image, its uid, every capability dropped,
``no-new-privileges``, its cpu/memory/pids limits, on its own network with
the same firewall rules (docs/faults.md row 33), no published ports.  What
differs from the agent's container: the candidate's scratch worktree is
mounted where the agent's worktree is (its ``.git`` read-only over itself,
naming a git dir that is not mounted: the check gets files, never the
repository), the variables are the check's (a fresh database's URL, never
the agent's own; the URLs of the agent's containerised services are left
out: those hold the agent's data), and the label
``dev.hybridiso.role=land-check``.

The container is started by a small supervisor process on the host
(``python -m hybridiso.land.container_check``), which check.py runs like
any host check command: in a session of its own, its process group in the
journal before it starts.  So the timeout, ``--parallel``'s cancelling and
the next ``land`` or ``gc`` after a ``kill -9`` stop it as they stop any
check (SIGTERM: the supervisor removes its container).  A container whose
supervisor was SIGKILLed carries the command's token as a label: check.py
removes it when the command ends, and ``gc`` finds any left by a killed run
(gc/land_leftovers.py, by the role label, while no ``land`` runs).
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
import secrets
import signal
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hybridiso import git, planner
from hybridiso.env_context import EnvContext
from hybridiso.errors import UserError
from hybridiso.manifest import Agent, Command
from hybridiso.project import Project
from hybridiso.setup_runner import LogFile, argv_for
from hybridiso.state import AgentRecord, State

ROLE = "land-check"
LABEL_TOKEN = "dev.hybridiso.land-check"  # the check command's token (process_groups.TOKEN_VAR)
CONFIG_VAR = "HYBRIDISO_LAND_CONTAINER"  # the supervisor's Engine API body: in its environment, never argv


def strategy_of(project: Project, state: State, agent: Agent) -> str:
    """The candidate's own strategy: its environment's, or (none made yet)
    what ``up`` would give it, so a container agent's work never runs on
    the host for want of an environment."""
    record = state.agents.get(agent.name)
    if record is not None:
        return record.strategy
    in_containers = frozenset(n for n, s in project.manifest.services.items() if s.runs_in_container)
    return planner.decide(agent, planner.Facts(in_containers)).strategy


def for_candidate(project: Project, state: State, agent: Agent) -> ImageCheck | None:
    """How the candidate's check runs in its image; None: on the host."""
    if not agent.image or strategy_of(project, state, agent) != "container":
        return None
    return ImageCheck(project, state, agent)


class ImageCheck:
    def __init__(self, project: Project, state: State, agent: Agent) -> None:
        record = state.agents.get(agent.name)
        # no environment yet: the agent's network exists for this check only
        self.own_network = record is None
        if record is None:
            record = AgentRecord(name=agent.name, strategy="container", branch=agent.branch_name, path="", base=project.manifest.base)
        else:
            record = copy.deepcopy(record)  # what shaping the container notes is not the agent's record
        record.path = str(project.env_path(agent))  # where its worktree is mounted (never a record's say)
        self.ctx = EnvContext(project, agent, record)
        self.plan: Any = None
        self.compose: Path | None = None

    @property
    def image(self) -> str:
        assert self.ctx.agent is not None
        return self.ctx.agent.image or ""

    def prepare(self, scratch: Path, env: Mapping[str, str], log: LogFile) -> None:
        """The container's shape, once per check; a UserError says why it
        cannot run (Docker unreachable, image missing, isolation impossible)."""
        from hybridiso.containers import users as container_user
        from hybridiso.containers.build import SERVICE_URLS, agent_user
        from hybridiso.containers.spec import ContainerSpec, Mount
        from hybridiso.strategies import container

        ctx = self.ctx
        git.distrust(scratch)  # a container writes there: the host's git never runs what it says
        agent = ctx.agent
        assert agent is not None
        theirs = set()
        for name in agent.services:
            svc = ctx.project.manifest.services.get(name)
            if svc is not None and svc.runs_in_container:
                theirs.add(SERVICE_URLS[svc.kind].format(host=name))

        own = {db.name for db in ctx.record.databases.values()}  # the agent's own branches: never the check's

        def reshape(spec: ContainerSpec) -> ContainerSpec:
            variables = {k: v for k, v in spec.environment if v not in theirs and v.rpartition("/")[2].partition("?")[0] not in own}
            variables.update(env)
            mounts = (Mount(str(scratch), str(ctx.path)), Mount(str(scratch / ".git"), str(ctx.path / ".git"), read_only=True))
            return dataclasses.replace(
                spec, mounts=mounts, ports=(), services=(), command=None, healthcheck=None, environment=tuple(sorted(variables.items()))
            )

        self.compose = log.path.with_name(f"{log.path.stem}-{secrets.token_hex(4)}.compose.yaml")
        self.plan = container.one_off_plan(ctx, self.compose, reshape)
        uid, gid = agent_user(ctx)
        if container_user.needs_grants(uid):
            # hybridiso runs as root and the agent does not: its uid gets the scratch files
            container_user.hand_over(EnvContext(ctx.project, agent, dataclasses.replace(ctx.record, path=str(scratch))), uid, gid)

    def command(self, command: Command, token: str) -> tuple[list[str], dict[str, str]]:
        """The supervisor's argv and the variables it gets for ``command``."""
        from hybridiso.strategies import container

        config = container.one_off_config(self.plan, argv_for(command), ROLE, {LABEL_TOKEN: token})
        package = str(Path(__file__).resolve().parents[2])  # this hybridiso, whatever else is installed
        path = os.pathsep.join(p for p in (package, os.environ.get("PYTHONPATH", "")) if p)
        return [sys.executable, "-m", "hybridiso.land.container_check"], {CONFIG_VAR: json.dumps(config), "PYTHONPATH": path}

    def sweep(self, token: str) -> None:
        """The command is over: its container is gone, also when its
        supervisor was SIGKILLed (the timeout's second signal)."""
        from hybridiso.containers import docker_client

        with contextlib.suppress(UserError):
            for info in docker_client.containers({docker_client.LABEL_PROJECT: self.ctx.project.id, LABEL_TOKEN: token}):
                docker_client.remove_container(info.id)

    def finish(self) -> None:
        """The check is over: its compose file goes (it holds the check's
        variables), and the network of an agent that has no environment."""
        if self.compose is not None:
            with contextlib.suppress(OSError):
                self.compose.unlink()
        if not self.own_network or self.plan is None or self.ctx.name in self.ctx.project.store.load().agents:
            return
        from hybridiso.containers import docker_client, netguard

        with contextlib.suppress(UserError):
            if self.plan.network:
                docker_client.remove_network(self.plan.network)
            netguard.remove({netguard.bridge_name(self.ctx.project.id, self.ctx.name)})  # nothing without root


def main() -> int:
    """The supervisor: one check command's container, its output on stdout
    (the candidate's log), its exit code; SIGTERM removes it."""
    from hybridiso.containers import docker_client

    config = json.loads(os.environ.pop(CONFIG_VAR))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())

    def sink(chunk: bytes) -> None:
        while chunk:
            chunk = chunk[os.write(1, chunk):]

    try:
        code = docker_client.run_streaming(config, sink=sink, cancel=stop)
    except UserError as e:
        sink(f"hybridiso: {e.message}\n".encode())
        return 125
    if code is None:
        sink(b"# stopped: its container was removed\n")
        return 128 + signal.SIGTERM
    return code


if __name__ == "__main__":
    sys.exit(main())
