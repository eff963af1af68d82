"""``container``: the agent's worktree bind-mounted into a Docker container.

The worktree is mounted at its host path with a git dir of the agent's own
(containers/git_dir.py): the repository's objects read-only, never its common git
dir, so ``git status``/``commit``/``stash``/``rebase`` work inside and nothing
the host's git reads (config, hooks, refs, the state dir) is in reach; what
the agent commits is collected into the agent branch by the host.  The
container runs as an unprivileged uid (containers/users.py) with every
capability dropped, ``no-new-privileges``, a pids limit, its own network
(firewalled by netguard.py when the agent needs network isolation), limits
from ``resources:``, leased ports published on 127.0.0.1, and labels
``dev.hybridiso.*``: Docker itself is the state for containers.  ``setup:``
runs in a one-off container of the same shape (``run_setup``).

Files and branches are the worktree strategy's; this module adds the compose
project around them.
"""
from __future__ import annotations

import collections
import contextlib
import os
import re
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from hybridiso import git, output, port_holders, safe_files
from hybridiso.containers import compose_cli
from hybridiso.containers import git_dir as container_git
from hybridiso.containers import users as container_user
from hybridiso.containers import docker_client
from hybridiso.containers.docker_client import StartAction
from hybridiso.containers import engine_apply
from hybridiso.containers import netguard
from hybridiso.envfile import ENV_FILE
from hybridiso.errors import Cancelled, UserError
from hybridiso.process import CommandError
from hybridiso.manifest import Command
from hybridiso.project import Project
from hybridiso.state import GIT_IN_CONTAINER_MISSING, GIT_IN_CONTAINER_OK, PHASE_READY, ProcessGroup
from hybridiso.strategies import worktree
from hybridiso.setup_runner import LogFile
from hybridiso.env_context import EnvContext
from hybridiso.strategies import base
from hybridiso.strategies.base import Observation, host_setup
from hybridiso.work.inventory import MainRepo, WorkReport

NAME = "container"
SHARES_REFS = True
USES_DOCKER = True
UNTRUSTED_FILES = True  # its processes write the worktree and its git dir
REMOVES: tuple[str, ...] = ("worktree metadata", "containers, networks and volumes labelled for it")
AGENT_SERVICE = "agent"


def compose_project(ctx: EnvContext) -> str:
    return ctx.project.compose_project(ctx.name)


def compose_file(ctx: EnvContext) -> Path:
    return ctx.project.store.compose_dir / ctx.name / "compose.yaml"


def agent_labels(ctx: EnvContext) -> dict[str, str]:
    """Every Docker object of the agent (``down`` and ``gc`` remove them all)."""
    return {docker_client.LABEL_PROJECT: ctx.project.id, docker_client.LABEL_AGENT: ctx.name}


def project_containers(ctx: EnvContext) -> list[docker_client.ContainerInfo]:
    """The agent's project's own containers: not the one-off ones a user
    starts with `docker compose run`, which carry the same labels."""
    return docker_client.containers({**agent_labels(ctx), docker_client.COMPOSE_ONEOFF: "False"})


def render(ctx: EnvContext) -> Path:
    """Write the agent's compose file (``hybridiso render`` and ``up``)."""
    from hybridiso.containers.build import build_spec
    from hybridiso.containers.compose_file import write_compose

    return write_compose(build_spec(ctx), compose_file(ctx), ctx.project.store.anchor)


def planned_boundary(ctx: EnvContext) -> dict[str, object]:
    """What the agent's container will get (issue 12: ``plan`` says it)."""
    from hybridiso.containers.build import planned_boundary as planned

    return planned(ctx)


def adopt(path: Path, worktree_entry: git.Worktree | None, env: Mapping[str, str], branch_name: str, finished: bool) -> str | None:
    """A worktree whose env file says it is a container agent's (its
    containers are never recorded: Docker's labels find them)."""
    if env.get("HYBRIDISO_STRATEGY") != NAME:
        return None
    return worktree.adopt(path, worktree_entry, env, branch_name, finished)


def create(ctx: EnvContext) -> None:
    _refuse_if_unguarded(ctx)  # before anything of it exists
    # the file first: the agent's network depends on nothing else, so Docker
    # makes it while git checks the worktree out (and setup runs)
    path = render(ctx)
    _make_network_early(ctx, path)
    try:
        worktree.create(ctx)
        from hybridiso.containers.build import agent_user

        t = time.monotonic()
        container_git.create(ctx)  # before anything of the agent runs
        _hand_over(ctx, *agent_user(ctx))
        ctx.record.timings["handover"] = round(time.monotonic() - t, 3)
    except BaseException:
        _await_network(ctx, wait_only=True)  # a rollback must not race it
        raise


def _hand_over(ctx: EnvContext, uid: int, gid: int) -> None:
    """The worktree and the agent's own git dir become what its uid writes
    (root only; otherwise the container runs as the user who made them)."""
    if not container_user.needs_grants(uid):
        return
    container_user.hand_over(ctx, uid, gid)
    container_git.hand_over(ctx, uid, gid)


@contextlib.contextmanager
def frozen(ctx: EnvContext) -> Iterator[None]:
    """Every running container of the agent that mounts its git dir (its
    own, a setup's) paused while the host reads that git dir, so nothing
    the host checked there changes before git has read it."""
    paused: list[str] = []
    if docker_client.reachable()[0]:
        for info in docker_client.containers(agent_labels(ctx)):
            if info.role in ("agent", "setup") and info.status == "running" and docker_client.pause(info.id):
                paused.append(info.id)
    try:
        yield
    finally:
        for cid in paused:
            docker_client.unpause(cid)


def collect(ctx: EnvContext) -> bool:
    """What the agent did in its own repository, brought into the main one
    (container_git.collect); True when its branch moved."""
    return container_git.collect(ctx, lambda: frozen(ctx))


def _refuse_if_unguarded(ctx: EnvContext) -> str:
    """The agent's network mode; an isolated agent this machine cannot
    isolate fails here, never starts unisolated (docs/faults.md row 33)."""
    from hybridiso.containers.build import network_mode

    mode = network_mode(ctx)
    if mode.refused:
        raise netguard.Unavailable(
            f"agent {ctx.name} needs network isolation ({', '.join(n for n in ctx.agent.workload.needs if n in ('network-isolation', 'untrusted-code')) if ctx.agent else 'network-isolation'}), "
            f"which hybridiso enforces with firewall rules on the Docker host, and {mode.refused}",
            hint=netguard._HINT,
        )
    return mode.name


_network_maker = ThreadPoolExecutor(max_workers=4, thread_name_prefix="hybridiso-network")
_networks_pending: dict[str, Future[bool]] = {}
_pending_lock = threading.Lock()


def _engine_plan(ctx: EnvContext, path: Path, image_id: str = "", *, agent_only: bool = False) -> docker_client.ContainerPlan | None:
    """The rendered file as an Engine API body; with ``agent_only``, the
    agent service's even when the project has services (its network and the
    setup container)."""
    from hybridiso.manifest import read_yaml

    doc = read_yaml(path.read_text(encoding="utf-8"))
    return (engine_apply.translate_agent if agent_only else engine_apply.translate)(doc, path, image_id)


def one_off_plan(ctx: EnvContext, path: Path, reshape: Callable[[Any], Any]) -> docker_client.ContainerPlan:
    """A one-off container of the agent that is not its setup (land's check,
    land/container_check.py): the agent's spec changed by ``reshape``, rendered
    to ``path`` (never the agent's own file), on the agent's own network,
    isolated as the agent is and checked to be (docs/faults.md row 33), as
    ``_prepare`` makes it for setup.  The agent's environment (its worktree,
    git dir, compose file, containers) is not touched: a network of another
    shape is refused, never made anew; ``ctx.record`` may be a copy."""
    from hybridiso.containers.build import build_spec
    from hybridiso.containers.compose_file import write_compose

    assert ctx.agent is not None and ctx.agent.image
    docker_client.client()  # Docker unreachable: say so first (docs/faults.md row 12)
    docker_client.ensure_image(ctx.agent.image)  # docs/faults.md row 13
    while True:
        mode = _refuse_if_unguarded(ctx)
        spec = reshape(build_spec(ctx))
        write_compose(spec, path, ctx.project.store.anchor)
        shape = _engine_plan(ctx, path, agent_only=True)
        if shape is not None and shape.network and docker_client.network_differs(shape.network, shape.network_options, shape.network_internal):
            # up would make it anew, removing the agent's containers: not land's to do
            raise UserError(
                f"agent {ctx.name}'s network was made for another isolation than the manifest gives it now",
                hint=f"`hybridiso up {ctx.name}` makes it anew; then land again",
            )
        if _network_ready(ctx, path, mode):
            break  # else: the engine's networks are out of reach, the manifest's weaker mode is rendered anew
    image_id, _ = docker_client.image_facts(spec.image)
    plan = _engine_plan(ctx, path, image_id, agent_only=True)
    if plan is None:
        raise UserError(f"agent {ctx.name}'s compose file has settings a one-off container cannot take")
    return plan


def _make_network_early(ctx: EnvContext, path: Path) -> None:
    # also for a project Compose starts: it adopts a network that carries its labels
    plan = _engine_plan(ctx, path, agent_only=True)
    if plan is None or plan.network is None:
        return
    future = _network_maker.submit(docker_client.ensure_network, plan.network, plan.network_labels, plan.network_options, plan.network_internal)
    with _pending_lock:
        _networks_pending[ctx.name] = future


def _await_network(ctx: EnvContext, *, wait_only: bool = False) -> bool:
    """Wait for the network create() started, if any, raising its error;
    True when it made the network just now (so it has the file's shape).
    With ``wait_only``, its error is not ours to raise (the caller is failing)."""
    with _pending_lock:
        future = _networks_pending.pop(ctx.name, None)
    if future is None:
        return False
    if wait_only:
        wait([future])
        return False
    return bool(future.result())


def start(ctx: EnvContext) -> StartAction:
    """Render the file and make Docker match it: created, recreated (the
    config changed), started (it had stopped) or unchanged."""
    assert ctx.agent is not None and ctx.agent.image
    docker_client.client()  # Docker unreachable: say so before anything else (docs/faults.md row 12)
    docker_client.ensure_image(ctx.agent.image)
    ctx.record.image = ctx.agent.image  # down fixes ownership with it, even once the manifest forgets the agent
    spec, path = _prepare(ctx)
    # ready means healthy where anything has a healthcheck: the manifest's,
    # the image's own HEALTHCHECK, or the services'
    image_id, image_healthcheck = docker_client.image_facts(spec.image)
    healthchecks = spec.healthcheck is not None or bool(spec.services) or image_healthcheck
    try:
        action = _apply_through_engine(ctx, path, image_id, healthchecks)
        if action is None:
            before = {c.id: c.status for c in project_containers(ctx)}
            try:
                compose_cli.up(compose_project(ctx), path, wait=healthchecks)
            except UserError:
                _explain_unhealthy(ctx)
                raise
            action = _what_compose_did(before, {c.id: c.status for c in project_containers(ctx)})
    except UserError as e:
        raise _port_taken(ctx, e) or e from None
    if healthchecks:
        _explain_unhealthy(ctx)  # the engine path's wait ends on unhealthy or exited too
    info = _agent_container(ctx)
    if not healthchecks:
        _require_running(ctx, info)
    check_git_inside(ctx, info)
    return action


def _prepare(ctx: EnvContext) -> tuple[Any, Path]:
    """Everything the agent's containers (its own, and setup's) need before
    one of them starts: the rendered file, its uid's access to the files
    the host wrote, and its network -- isolated, and checked to be (docs/faults.md row 33)."""
    from hybridiso.containers.build import build_spec
    from hybridiso.containers.compose_file import write_compose

    mode = _refuse_if_unguarded(ctx)
    spec = build_spec(ctx)
    path = write_compose(spec, compose_file(ctx), ctx.project.store.anchor)
    uid, gid = container_user.parse_user(spec.user or "") or (os.getuid(), os.getgid())
    if not container_git.exists(ctx):
        # made by a hybridiso that mounted the common git dir: its commits are
        # on its branch already; its container is recreated with the new mounts
        container_git.create(ctx)
        ctx.record.container_grants = [g for g in ctx.record.container_grants if g == container_user.HANDED_OVER]
    if any(g != container_user.HANDED_OVER for g in ctx.record.container_grants):
        container_user.take_back(ctx)  # an older hybridiso's ACL entries in the common dir: not needed any more
    if container_user.needs_grants(uid) and not ctx.record.container_grants:
        # made by a hybridiso that ran containers as root, or a record rebuilt from reality
        _hand_over(ctx, uid, gid)
    container_git.publish_base(ctx)
    container_user.refresh(ctx, uid, gid, [ENV_FILE, *ctx.record.included])
    t = time.monotonic()
    if not _network_ready(ctx, path, mode):
        return _prepare(ctx)  # the engine's networks are out of reach: the manifest's weaker mode, rendered anew
    ctx.record.timings["network"] = round(time.monotonic() - t, 3)  # waiting for it, its rules, its checks
    ctx.record.network_guard = mode
    return spec, path


def _network_ready(ctx: EnvContext, path: Path, mode: str) -> bool:
    """The agent's network exists in the shape the file says and, isolated,
    has its rules in force and its bridge in this machine's namespace.
    False when it turned out the engine's networks are elsewhere and the
    manifest chose a weaker mode (recorded: render again)."""
    from hybridiso.containers.build import ISOLATED, guard_for

    plan = _engine_plan(ctx, path, agent_only=True)
    guard = guard_for(ctx) if mode == ISOLATED else None
    if guard is not None:
        netguard.apply(guard)  # before any container of the agent can send a packet
    elif ctx.record.network_guard == ISOLATED:
        netguard.remove({netguard.bridge_name(ctx.project.id, ctx.name)})  # the manifest dropped the isolation
    made = _await_network(ctx)  # its error (Docker refused the network) is this agent's
    if plan is None or plan.network is None:
        return True
    if not made:  # it was there (an earlier up), or pruned since
        if docker_client.network_differs(plan.network, plan.network_options, plan.network_internal):
            # made before the agent was isolated (or the other way round): its
            # containers go (named volumes stay), the network is made anew
            for info in project_containers(ctx):
                docker_client.remove_container(info.id)
            docker_client.remove_network(plan.network)
        docker_client.ensure_network(plan.network, plan.network_labels, plan.network_options, plan.network_internal)
    if guard is None:
        return True
    bridge = docker_client.network_bridge(plan.network)
    if bridge == guard.bridge and netguard.bridge_visible(bridge):
        return True
    # rootless Docker, Docker Desktop, a remote DOCKER_HOST: its networks
    # are not this machine's, and rules here would not see their traffic
    netguard.remove({guard.bridge})
    docker_client.remove_network(plan.network)
    assert ctx.agent is not None
    where = f"its bridge {bridge} is not in this machine's network namespace" if bridge else "Docker did not make its network"
    if ctx.agent.network_fallback == "refuse":
        raise netguard.Unavailable(
            f"agent {ctx.name} needs network isolation, and the Docker engine's networks are not this machine's ({where}: "
            "rootless Docker, Docker Desktop or a remote DOCKER_HOST), so firewall rules here cannot isolate it",
            hint=netguard._HINT,
        )
    output.warn(f"{ctx.name}: the Docker engine's networks are not this machine's ({where}); using network_fallback: {ctx.agent.network_fallback}")
    ctx.record.network_guard = ctx.agent.network_fallback
    return False


_PORT_ERROR = re.compile(r"(?:Bind for [0-9.:\[\]]*?:|listen tcp[46]? [0-9.:\[\]]*?:)(\d+)(?: failed: port is already allocated|: bind: address already in use)")


def _port_taken(ctx: EnvContext, error: UserError) -> UserError | None:
    """Docker could not publish a leased port: name the port, the agent and
    the program holding it, and what the next ``up`` does about it (issue 11)."""
    m = _PORT_ERROR.search(error.message)
    if m is None:
        return None
    port = int(m.group(1))
    name = next((n for n, p in ctx.record.ports.items() if p == port), "?")
    holder = port_holders.describe(port)
    return UserError(
        f"agent {ctx.name}'s port {name}={port} is taken by another program ({holder}), so its container cannot publish it",
        hint=f"`hybridiso up {ctx.name}` leases it another port (or stop that program first to keep {port})",
    )


def ports_taken_by_others(project: Project, leases: Mapping[str, Mapping[str, int]]) -> dict[str, dict[str, str]]:
    """For container agents' leases (``{agent: {name: port}}``): the ports
    another program holds -- not the agent's own running container, whose
    docker-proxy holds its ports -- with who holds them.  ``up`` leases those
    again (issue 11)."""
    busy = {agent: {n: p for n, p in ports.items() if not port_holders.free(p)} for agent, ports in leases.items()}
    busy = {a: ps for a, ps in busy.items() if ps}
    if not busy or not docker_client.reachable()[0]:
        return {}
    published = docker_client.published_ports({docker_client.LABEL_PROJECT: project.id})
    taken: dict[str, dict[str, str]] = {}
    for agent, ports in busy.items():
        for name, port in ports.items():
            if published.get(port) != agent:
                taken.setdefault(agent, {})[name] = port_holders.describe(port)
    return taken


def _what_compose_did(before: dict[str, str], after: dict[str, str]) -> StartAction:
    if not before:
        return "created"
    if set(after) != set(before):
        return "recreated"
    return "started" if any(status != "running" for status in before.values()) else "unchanged"


READY_TIMEOUT = 120  # seconds for every healthcheck to pass


def _apply_through_engine(ctx: EnvContext, path: Path, image_id: str, healthchecks: bool) -> StartAction | None:
    """A project of one container starts through the Engine API (see
    engine_apply.py): what was done; None when the file needs Compose."""
    plan = _engine_plan(ctx, path, image_id)
    if plan is None:
        return None
    action = docker_client.apply_container(plan)
    if action is None:
        return None
    if healthchecks:
        final = docker_client.wait_ready(plan.container_name, timeout=READY_TIMEOUT, cancel=ctx.cancel)
        if final.result == "cancelled":
            raise Cancelled(ctx.name)
        if final.result == "stopped":
            raise UserError(
                f"container {plan.container_name} is {final.docker_state}, not running",
                hint=f"`docker inspect {plan.container_name}` and `docker logs {plan.container_name}` show why",
            )
        if final.result == "timeout":
            stopped = docker_client.stop_container(plan.container_name)  # issue 16: not left running unready
            raise UserError(
                f"container {plan.container_name} was not healthy after {READY_TIMEOUT}s" + ("; hybridiso stopped it (kept, with its logs)" if stopped else ""),
                hint=f"`docker inspect {plan.container_name}` shows its healthcheck's runs",
            )
    return action


def _explain_unhealthy(ctx: EnvContext) -> None:
    """compose says only "is unhealthy": name the check's own last words."""
    for info in project_containers(ctx):
        if info.status == "exited":
            raise UserError(
                f"container {info.name} exited (code {info.exit_code}) before it was healthy{_last_words(info.id)}",
                hint=f"`docker logs {info.name}` shows all it printed",
            )
        if info.health == "unhealthy":
            # issue 16: never left running unhealthy beside a record still
            # 'creating': stopped (kept, with its logs), and said so
            stopped = docker_client.stop_container(info.id)
            raise UserError(
                f"container {info.name} is unhealthy; its healthcheck's last run: {info.last_probe or '(none recorded)'}"
                + ("; hybridiso stopped it (kept, with its logs)" if stopped else ""),
                hint=f"fix the healthcheck in hybridiso.yaml or the program; `docker logs {info.name}` shows its output; `hybridiso up {ctx.name}` tries again",
            )


def _require_running(ctx: EnvContext, info: docker_client.ContainerInfo | None) -> None:
    """Without a healthcheck, ready means running: a command that exits at
    once is reported now, with its exit code, not found later by status."""
    if info is None or info.status not in ("running", "restarting"):
        state = info.describe() if info else "no container"
        raise UserError(
            f"agent {ctx.name}'s container is not running after start: {state}{_last_words(info.id) if info else ''}",
            hint=f"`docker logs {info.name}` shows all it printed" if info else "check the image and command",
        )


def _last_words(container_id: str) -> str:
    text = docker_client.logs_tail(container_id)
    return "; its last output:\n" + "\n".join(f"    {line}" for line in text.splitlines()) if text else "; it printed nothing"


_no_git_lock = threading.Lock()
_no_git_said: set[str] = set()  # images this run found without git (several agents may start on one)


def check_git_inside(ctx: EnvContext, info: docker_client.ContainerInfo | None) -> None:
    """docs/faults.md row 21: git in the container (``info``, the agent's) must see the
    repository, or we say why."""
    if info is None or info.status != "running":
        return
    image = ctx.agent.image if ctx.agent else "?"
    # an image that had no git has none the next time either (an id names
    # fixed content): skip the probe's exec, but still say so
    known = f"{info.image_id} {ctx.project.manifest.env_for(ctx.agent).get('PATH', '') if ctx.agent else ''}"
    without_git = ctx.project.store.images_without_git
    remembered = known in _read_lines(ctx.project.store.anchor, without_git)
    if remembered:
        code, text = 127, ""
    else:
        probe = "command -v git >/dev/null 2>&1 || exit 127; git status --porcelain >/dev/null"
        code, text = docker_client.exec_in(info.id, ["sh", "-c", probe], user=_exec_user(ctx), workdir=str(ctx.path), environment={"HOME": "/tmp"})
    if code == 0:
        ctx.record.git_in_container = GIT_IN_CONTAINER_OK
        return
    if code in (126, 127):
        ctx.record.git_in_container = GIT_IN_CONTAINER_MISSING
        with _no_git_lock:  # issue 16: said once per image id, not on every up (nor per agent)
            first = not remembered and known not in _no_git_said
            _no_git_said.add(known)
        if first:
            output.warn(f"{ctx.name}: image {image} has no git; the agent cannot run git inside its container")
        if info.image_id and first:
            _remember_line(ctx.project.store.anchor, without_git, known)
        return
    if "unknown repository extension" in text:
        hint = (
            "the image's git is older than this repository's format needs (see the extension named above): "
            "use an image with a newer git, or an agent without git inside"
        )
    else:
        hint = (
            f"the worktree ({ctx.path}), the agent's own git dir ({container_git.agent_git_dir(ctx)}) and the repository's "
            f"objects ({container_git.objects_dir(ctx)}) must be mounted at their host paths, and the container's uid "
            f"({_exec_user(ctx)}) must be able to read them"
        )
    raise UserError(f"git inside agent {ctx.name}'s container cannot see the repository: {text.strip()[:400]}", hint=hint)


def _exec_user(ctx: EnvContext) -> str:
    """The uid:gid the agent's container runs as (never root: a record
    rebuilt from reality gets the same uid again)."""
    from hybridiso.containers.build import agent_user

    uid, gid = agent_user(ctx)
    return f"{uid}:{gid}"


def _read_lines(anchor: Path, path: Path) -> set[str]:
    """The lines of a cache file under the state dir; nothing when it is
    missing, unreadable, or not a regular file (never followed: docs/faults.md
    row 31)."""
    try:
        return set((safe_files.read_text(anchor, path.relative_to(anchor)) or "").splitlines())
    except OSError:  # UnsafePath is a UserError, not an OSError
        return set()
    except safe_files.UnsafePath:
        return set()


def _remember_line(anchor: Path, path: Path, line: str) -> None:
    """Append ``line`` to a cache file under the state dir; a symlink or FIFO
    there is left alone (only a cache: it is asked again next time)."""
    try:
        fd = safe_files.open_regular(anchor, path.relative_to(anchor), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    except (OSError, safe_files.UnsafePath):
        return
    try:
        os.write(fd, (line + "\n").encode("utf-8"))
    except OSError:
        pass
    finally:
        os.close(fd)


def _agent_container(ctx: EnvContext) -> docker_client.ContainerInfo | None:
    found = [c for c in project_containers(ctx) if c.role == "agent"]
    return found[0] if found else None


def remove(ctx: EnvContext) -> None:
    _await_network(ctx, wait_only=True)  # a rollback right after create(): let it land, then remove it
    ok, _ = docker_client.reachable()
    if ok:
        inherited = docker_client.anonymous_volumes(agent_labels(ctx))
        path = compose_file(ctx)
        if path.exists():
            try:
                compose_cli.down(compose_project(ctx), path)
            except UserError:
                pass  # labels below catch what compose could not
        docker_client.remove_labelled(agent_labels(ctx))
        docker_client.remove_volumes(inherited)
        image = ctx.agent.image if ctx.agent is not None else (ctx.record.image or None)
        fix_ownership(ctx.path, image=image, labels={**ctx.project.manifest.labels, **agent_labels(ctx)})
        fix_ownership(container_git.area(ctx), image=image, labels={**ctx.project.manifest.labels, **agent_labels(ctx)})
    elif ctx.path.exists():
        output.warn(f"{ctx.name}: Docker is not reachable; its containers (if any) are left for `hybridiso gc`")
    # its firewall rules go with its network (whatever the record says: a
    # lost state file must not leave them); nothing happens without root
    if netguard.unavailable() is not None and ctx.record.network_guard == "iptables":
        output.warn(f"{ctx.name}: its network-isolation rules are left ({netguard.unavailable()}): `hybridiso gc --yes` as root removes them")
    netguard.remove({netguard.bridge_name(ctx.project.id, ctx.name)})
    from hybridiso.containers.build import agent_user

    agent_user(ctx)  # a record rebuilt from reality: the uid it was given
    container_user.take_back(ctx)
    worktree.remove(ctx)
    container_git.remove(ctx)  # its work was judged (or saved) with the worktree's
    compose_file(ctx).unlink(missing_ok=True)


def foreign_files(path: Path) -> list[str]:
    uid = os.getuid()
    foreign: list[str] = []
    for root, dirs, files in os.walk(path):
        for name in [*dirs, *files]:
            p = os.path.join(root, name)
            try:
                if os.lstat(p).st_uid != uid:
                    foreign.append(p)
            except OSError:
                continue
    return foreign


def fix_ownership(path: Path, *, image: str | None = None, labels: dict[str, str] | None = None) -> list[str]:
    """Give back to the host user anything a container left owned by another
    uid (docs/faults.md row 8), so removal cannot fail half-way.  Returns what it fixed.

    Root chowns directly.  Anyone else cannot, so a throwaway container of
    the agent's own ``image`` does it as root, with only ``path`` mounted --
    the same power that made the files."""
    uid, gid = os.getuid(), os.getgid()
    if not path.exists():
        return []
    foreign = foreign_files(path)
    if not foreign:
        return foreign
    refused = []
    for p in foreign:
        try:
            os.lchown(p, uid, gid)
        except PermissionError:
            refused.append(p)
    if refused and image and docker_client.image_present(image):
        code, out = docker_client.run_once(
            image, ["chown", "-R", "-h", f"{uid}:{gid}", str(path)], binds=[str(path)], user="0:0", labels=labels or {}
        )
        refused = foreign_files(path)
        if refused and code != 0:
            output.warn(f"chown in a helper container of {image} failed (exit {code}): {out.strip()[:200]}")
    if refused:
        raise UserError(
            f"{output.plural(len(refused), 'file')} in {path} belong{'s' if len(refused) == 1 else ''} to another user (written by a container), e.g. {refused[0]}",
            hint=f"sudo chown -R {uid}:{gid} '{path}'",
        )
    return foreign


def observe(ctx: EnvContext) -> Observation:
    ok, _why = docker_client.reachable()
    if ctx.path.is_dir():
        collect(ctx)  # its branch as the agent left it (status, sync, gc)
    files = worktree.observe(ctx)
    if not ok:
        return Observation(files.exists, files.registered, files.branch, files.head, "docker unreachable", files.problems, docker_reachable=False)
    info = _agent_container(ctx)
    process = info.describe() if info is not None else "no container"
    problems = files.problems
    if info is None and ctx.record.phase == PHASE_READY and files.exists:
        problems = (*problems, "its container is gone: `hybridiso up` starts it again")
    boundary = None
    if info is not None:
        network, in_force = _network_observed(ctx, info)
        boundary = {**info.boundary, "network": network}
        if not in_force:
            problems = (*problems, f"network isolation is not in force ({network}): `hybridiso up {ctx.name}` restores it")
    return Observation(files.exists, files.registered, files.branch, files.head, process, problems, boundary, info)


def _network_observed(ctx: EnvContext, info: docker_client.ContainerInfo) -> tuple[str, bool]:
    """What the container's network is, read from Docker and the firewall,
    and False when the isolation it was given is not in force."""
    mode = str(info.boundary.get("network_mode", ""))
    if mode in ("host", "none"):
        return f"{mode} network", True
    if ctx.record.network_guard == "internal":
        return "internal network (no outside traffic; the host is reachable)", True
    isolated = ctx.record.network_guard == "iptables" or (ctx.agent is not None and ctx.agent.network_isolated)
    if not isolated:
        return "its own network", True
    from hybridiso.containers.build import guard_for

    if netguard.unavailable() is not None:
        return f"isolated, not verifiable here ({netguard.unavailable()})", True
    guard = guard_for(ctx, resolve=False)  # status never waits for DNS
    try:
        table = _firewall_table()
    except netguard.Unavailable as e:
        return f"isolated, not verifiable here ({e.message})", True
    if not netguard.hooked(guard, table):
        return "NOT ISOLATED: its firewall rules are missing", False
    allowed = ", ".join(ctx.agent.egress) if ctx.agent and ctx.agent.egress else "nothing"
    if not netguard.in_force(guard, table):
        return f"isolated, with the egress rules of an earlier manifest (`hybridiso up` applies egress: {allowed})", True
    return f"isolated: no route to the host or outside; egress: {allowed}", True


_table_cache: dict[str, tuple[float, netguard.Table]] = {}


def _firewall_table() -> netguard.Table:
    """One read of the firewall for all agents of a status (it runs them in parallel)."""
    with _pending_lock:
        hit = _table_cache.get("v4")
        if hit is not None and time.monotonic() - hit[0] < 2:
            return hit[1]
        table = netguard.read()
        _table_cache["v4"] = (time.monotonic(), table)
        return table


def inventory(ctx: EnvContext, main: MainRepo) -> WorkReport:
    """A worktree's (its files, its branch), after what the agent did in its
    own repository was collected; plus the refs it made there.  Submodules
    are not entered: their git dirs are the agent's."""
    collect(ctx)
    # the collected refs; what the caller's refs said will go (down of many
    # agents at once, issue 15) still holds nothing safe
    main = MainRepo.load(main.root, main.common_dir).without_refs(set(main.leaving))
    report = worktree.inventory(ctx, main, submodules=False)
    container_git.add_work(ctx, main, report)
    return report


def after_exec(ctx: EnvContext, argv: Sequence[str], code: int) -> int:
    """What the agent committed is on its branch when ``exec`` returns."""
    if code == 126:
        # older engines (20.10) say 126 for a command that is not there at all
        code = exec_failure_code(ctx, argv[0])
    try:
        collect(ctx)
    except (UserError, CommandError) as e:
        output.warn(f"{ctx.name}: its commits were not brought to its branch ({str(e).splitlines()[0][:200]}); `hybridiso status` tries again")
    return code


def rebase_by_hand(agent: str, base_name: str) -> str:
    """Inside its container, onto the base as it sees it there."""
    return f"`hybridiso exec {agent} -- git rebase host/{base_name}`"


def exec_failure_code(ctx: EnvContext, program: str) -> int:
    """`docker exec` failed to start ``program`` (exit 126): 127 when the
    container has no such command, as a shell says, else 126."""
    info = _agent_container(ctx)
    if info is None or info.status != "running":
        return 126
    code, _ = docker_client.exec_in(info.id, ["sh", "-c", 'command -v -- "$1" >/dev/null', "sh", program], workdir=str(ctx.path))
    return 127 if code in (1, 127) else 126  # command -v: 1 (POSIX) or 127 (busybox) when not found; 126: no sh


def exec_argv(ctx: EnvContext, argv: Sequence[str], env: dict[str, str], tty: bool | None = None) -> tuple[list[str], Path | None]:
    info = _agent_container(ctx)
    if info is None or info.status != "running":
        raise UserError(
            f"agent {ctx.name}'s container is not running ({info.describe() if info else 'none'})",
            hint=f"hybridiso up {ctx.name}",
        )
    if tty is None:
        tty = sys.stdin.isatty() and sys.stdout.isatty()
    args = ["docker", "exec", "-i"]
    if tty:
        args.append("-t")
    args += ["-w", str(ctx.path), "-u", _exec_user(ctx)]
    # names only: the docker CLI takes each value from its own environment,
    # which exec passes it, so no secret is in argv for `ps` to show (docs/faults.md row 34)
    for key in env:
        args += ["-e", key]
    return [*args, info.id, *argv], None


# --- setup, in the image (issue 12, part 4) -------------------------------------------

SETUP_TAIL_BYTES = 16 << 10
SETUP_TAIL_LINES = 20


def run_setup(
    ctx: EnvContext,
    commands: Sequence[Command],
    env: Mapping[str, str],
    log: LogFile,
    *,
    run_label: str = "up",
    on_start: Callable[[ProcessGroup], None] | None = None,
) -> None:
    """Run ``setup:`` where the agent runs: a one-off container per command
    from the agent's own file (same image, mounts, uid, capabilities, limits,
    network and variables; no published ports), labelled
    ``dev.hybridiso.role=setup`` so rollback, ``down`` and ``gc`` remove a
    survivor; output appended to ``log`` (0600).  ``setup_on: host`` runs it
    on the host instead."""
    assert ctx.agent is not None and ctx.agent.image
    if ctx.agent.setup_on == "host":
        host_setup(ctx, commands, env, log, run_label=run_label, on_start=on_start)
        return
    from hybridiso.setup_runner import argv_for, describe, open_log

    docker_client.client()
    docker_client.ensure_image(ctx.agent.image)
    spec, path = _prepare(ctx)
    image_id, _ = docker_client.image_facts(spec.image)
    plan = _engine_plan(ctx, path, image_id, agent_only=True)
    if plan is None:
        raise UserError(f"agent {ctx.name}'s compose file has settings a setup container cannot take", hint="setup_on: host runs setup on the host")
    fd = open_log(log)  # 0600: it may hold secrets setup printed; never through a symlink
    try:
        os.write(fd, f"=== {run_label} {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} pid {os.getpid()} (in the image) ===\n".encode())
        for command in commands:
            _one_setup(ctx, plan, argv_for(command), describe(command), fd, log.path)
    finally:
        os.close(fd)


def _setup_config(ctx: EnvContext, plan: docker_client.ContainerPlan, argv: list[str]) -> dict[str, Any]:
    return one_off_config(plan, argv, "setup")


def one_off_config(plan: docker_client.ContainerPlan, argv: list[str], role: str, labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The Engine API body of a one-off container of the agent (setup's,
    land's check) running ``argv``: the agent's container without its
    published ports, Compose's labels or healthcheck, labelled ``role``."""
    config = {k: v for k, v in plan.config.items() if k not in ("ExposedPorts", "NetworkingConfig")}
    own = {k: v for k, v in (config.get("Labels") or {}).items() if not k.startswith("com.docker.compose.")}
    labels = {**own, **(labels or {}), docker_client.LABEL_ROLE: role}
    host = {**config["HostConfig"], "PortBindings": {}}  # the agent's own container publishes them
    config.update(Cmd=argv, Entrypoint=[], Labels=labels, HostConfig=host, Healthcheck={"Test": ["NONE"]}, AttachStdout=True, AttachStderr=True)
    if plan.network:
        config["NetworkingConfig"] = {"EndpointsConfig": {plan.network: {}}}
    return config


def _one_setup(ctx: EnvContext, plan: docker_client.ContainerPlan, argv: list[str], shown: str, fd: int, log: Path) -> None:
    tail: collections.deque[bytes] = collections.deque()
    size = 0

    def sink(chunk: bytes) -> None:
        nonlocal size
        os.write(fd, chunk)
        tail.append(chunk)
        size += len(chunk)
        while size > SETUP_TAIL_BYTES and len(tail) > 1:
            size -= len(tail.popleft())

    os.write(fd, f"$ {shown}  (in a container of {plan.config['Image']})\n".encode())
    started = time.monotonic()
    code = docker_client.run_streaming(_setup_config(ctx, plan, argv), sink=sink, cancel=ctx.cancel)
    if code is None:
        os.write(fd, b"# interrupted: the setup container was removed\n")
        raise Cancelled(ctx.name)
    os.write(fd, f"# exit {code} after {time.monotonic() - started:.2f}s\n".encode())
    if code != 0:
        text = b"".join(tail).decode("utf-8", "replace").splitlines()[-SETUP_TAIL_LINES:]
        shown_tail = "\n".join("    " + (line if len(line) <= 300 else line[:300] + " ...") for line in text) or "    (no output)"
        what = "the command is not in the image" if code == 127 else f"exit {code}"
        raise UserError(
            f"setup command failed for agent {ctx.name} in its container ({what}): {shown}\n  last output:\n{shown_tail}",
            hint=f"full log: {log}; fix the command in hybridiso.yaml (or `setup_on: host` to run setup on the host) and run `hybridiso up` again",
        )


# --- sync: the rebase runs inside (issue 12, part 1) ------------------------------------------


def rebase_inside(ctx: EnvContext, onto: str, upstream: str | None) -> git.RebaseResult:
    """``sync`` for a container agent: ``git rebase --onto ONTO UPSTREAM`` by
    the agent's own git in its container, as its uid (the new base is in the
    repository's objects, which it reads), then collected into the agent
    branch.  The host never runs git in the agent's repository, nor writes
    it: its config and hooks are the agent's.  A conflict is aborted there,
    as on the host."""
    info = _agent_container(ctx)
    if info is None or info.status != "running":
        return git.RebaseResult(False, error=f"its container is not running; `hybridiso up {ctx.name}` starts it, then sync again")
    if ctx.record.git_in_container == GIT_IN_CONTAINER_MISSING:
        return git.RebaseResult(False, error="its image has no git, and the host never rebases in the agent's own repository")
    user, where = _exec_user(ctx), str(ctx.path)
    container_git.publish_base(ctx, onto)
    argv = ["git", "-c", "core.editor=true", "rebase", "-q", "--no-autostash"]
    argv += ["--onto", onto, upstream] if upstream is not None else [onto]
    code, text = docker_client.exec_in(info.id, argv, user=user, workdir=where)
    if code == 0:
        collect(ctx)
        return git.RebaseResult(True)
    _, names = docker_client.exec_in(info.id, ["git", "diff", "--name-only", "--diff-filter=U", "-z"], user=user, workdir=where)
    aborted, _ = docker_client.exec_in(info.id, ["git", "rebase", "--abort"], user=user, workdir=where)
    conflicts = tuple(n for n in names.split("\0") if n.strip()) if aborted == 0 else ()
    last = text.strip().splitlines()[-1] if text.strip() else f"exit {code}"
    return git.RebaseResult(False, conflicts, last[:300])


rebase = rebase_inside
# the files are the worktree strategy's, and sync reads base where it does
before_sync = base.nothing_to_refresh
take_base = base.base_as_is
