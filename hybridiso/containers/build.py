"""Build a container agent's ``ContainerSpec`` from the manifest and its record.

Every container agent gets least privilege (issue 12, part 3): an
unprivileged uid (containers/users.py), every capability dropped but what
``cap_add`` names, ``no-new-privileges``, Docker's default seccomp profile
(never switched off), a pids limit (``resources.pids`` or ``DEFAULT_PIDS``),
a read-only root file system with a tmpfs ``/tmp`` when ``read_only: true``,
and no Docker socket (nothing but the worktree, the agent's own git dir and the
repository's objects, read-only, are mounted: containers/git_dir.py).
A network-isolated agent's network has a bridge named for its firewall rules
(containers/netguard.py), or the weaker mode its manifest chose.
"""
from __future__ import annotations

import os
from collections.abc import Mapping

from hybridiso import egress, git
from hybridiso.containers import git_dir as container_git
from hybridiso.containers import users as container_user
from hybridiso.containers import docker_client
from hybridiso.containers import netguard
from hybridiso.containers.spec import SERVICE_IMAGES, ContainerSpec, Healthcheck, Mount, PortMapping, ServiceSpec
from hybridiso.render import expand_vars
from hybridiso.env_context import EnvContext, environment_for

DEFAULT_PIDS = 4096  # processes and threads; a fork bomb stops here, a parallel build does not
# the agent's scratch space on a read-only root: executable, as /tmp is on a host
TMP_TMPFS = "/tmp:rw,nosuid,nodev,exec,mode=1777"

# network modes of a container agent (ContainerSpec and record.network_guard)
OWN_NETWORK = ""  # its own bridge, Docker's rules only
ISOLATED = "iptables"  # its own bridge, hybridiso's rules (containers/netguard.py)
NO_NETWORK = "none"  # network_fallback: none
INTERNAL = "internal"  # network_fallback: internal
HOST = "host"  # needs: host-network

# what a containerised service looks like from the agent, by kind
SERVICE_URLS = {
    "postgres": "postgresql://hybridiso:hybridiso@{host}:5432/app",
    "redis": "redis://{host}:6379/0",
}


def _git_identity(ctx: EnvContext) -> dict[str, str]:
    """The host user's git identity, so `git commit` works in the container
    (its HOME has no .gitconfig)."""
    env: dict[str, str] = {}
    for key, names in (("user.name", ("GIT_AUTHOR_NAME", "GIT_COMMITTER_NAME")), ("user.email", ("GIT_AUTHOR_EMAIL", "GIT_COMMITTER_EMAIL"))):
        r = git.run(ctx.project.root, "config", "--get", key, check=False)
        value = r.stdout.strip()
        if value:
            for n in names:
                env[n] = os.environ.get(n, value)
    return env


def network_mode(ctx: EnvContext) -> str:
    """How the agent's network is shaped: one of the modes above, or
    ``refused: <why>`` for an isolated agent this machine cannot isolate
    and whose manifest chose no weaker mode (``up`` fails it then)."""
    agent = ctx.agent
    assert agent is not None
    if "host-network" in agent.workload.needs:
        return HOST
    if not agent.network_isolated:
        return OWN_NETWORK
    if ctx.record.network_guard in (NO_NETWORK, INTERNAL) and ctx.record.network_guard == agent.network_fallback:
        return ctx.record.network_guard  # the engine's networks were found out of reach before
    why = netguard.unavailable()
    if why is None:
        return ISOLATED
    if agent.network_fallback == NO_NETWORK and ctx.project.manifest.runs_services_in_containers(agent):
        return f"refused: {why}, and network_fallback: none cannot reach its containerised services (internal can)"
    if agent.network_fallback != "refuse":
        return agent.network_fallback
    return f"refused: {why}"


def agent_user(ctx: EnvContext) -> tuple[int, int]:
    return container_user.choose(ctx, ctx.project.id)


def egress_allowed(ctx: EnvContext, *, resolve: bool = True) -> tuple[tuple[str, int, str], ...]:
    """(address, port, protocol) for each egress entry; host names resolved
    once and pinned in the record, so a later up does not change the rules
    (or recreate the container) because DNS answered otherwise.  Without
    ``resolve`` (status), a name not pinned yet allows nothing."""
    assert ctx.agent is not None
    allowed: list[tuple[str, int, str]] = []
    pinned = {}
    for text in ctx.agent.egress:
        entry = egress.parse_egress(text)
        addresses = ctx.record.egress_addresses.get(entry.host) if entry.is_name else None
        if addresses is None:
            if not resolve:
                continue
            addresses = netguard.resolve(entry)
        if entry.is_name:
            pinned[entry.host] = addresses
        allowed += [(a, entry.port, entry.protocol) for a in addresses]
    ctx.record.egress_addresses = pinned
    return tuple(dict.fromkeys(allowed))


def guard_for(ctx: EnvContext, *, resolve: bool = True) -> netguard.Guard:
    project = ctx.project.id
    return netguard.Guard(project, ctx.name, netguard.bridge_name(project, ctx.name), egress_allowed(ctx, resolve=resolve))


def build_spec(ctx: EnvContext) -> ContainerSpec:
    agent, record, project = ctx.agent, ctx.record, ctx.project
    assert agent is not None and agent.image, "container agents have an image (manifest validation)"
    uid, gid = agent_user(ctx)
    services = []
    service_env: dict[str, str] = {}
    for name in agent.services:
        svc = project.manifest.services.get(name)
        if svc is None or not svc.runs_in_container:
            continue
        services.append(ServiceSpec(name, svc.kind, svc.image or SERVICE_IMAGES[svc.kind]))
        url = SERVICE_URLS[svc.kind].format(host=name)
        service_env[f"{name.upper().replace('-', '_')}_URL"] = url
        service_env.setdefault("DATABASE_URL" if svc.kind == "postgres" else "REDIS_URL", url)
    env = {
        **environment_for(project, agent, record),
        **service_env,
        # taken once, when the agent is made: a later shell with other
        # GIT_AUTHOR_* must not change the config (and recreate a running agent)
        **ctx.record.extra.setdefault("git_identity", _git_identity(ctx)),
        "HOME": "/tmp",  # the agent's uid has no home in the image
    }
    if container_user.needs_grants(uid) and "GIT_CONFIG_COUNT" not in env:
        # the worktree and its git dir stay root's (the host's git checks its
        # ownership of them): tell the agent's git they are its to use
        env.update({"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "safe.directory", "GIT_CONFIG_VALUE_0": "*"})
    command = tuple(expand_vars(part, env) for part in agent.command) if agent.command else None
    healthcheck = None
    if agent.healthcheck is not None:
        hc = agent.healthcheck
        test = ("CMD-SHELL", hc.test) if isinstance(hc.test, str) else ("CMD", *hc.test)
        healthcheck = Healthcheck(
            tuple(expand_vars(part, env) for part in test), hc.interval, hc.timeout, hc.retries, hc.start_period
        )
    # the worktree, its own git dir, the repository's objects to read, and a
    # .git that names its own git dir: never the common dir (containers/git_dir.py)
    mounts = [
        Mount(str(ctx.path), str(ctx.path)),
        Mount(str(container_git.objects_dir(ctx)), str(container_git.objects_dir(ctx)), read_only=True),
        Mount(str(container_git.agent_git_dir(ctx)), str(container_git.agent_git_dir(ctx))),
        Mount(str(container_git.dotgit_file(ctx)), str(ctx.path / ".git"), read_only=True),
    ]
    mode = network_mode(ctx)
    resources = agent.resources
    extra_hosts: tuple[str, ...] = ()
    if mode == ISOLATED or mode.startswith("refused"):
        # egress host names, as the host resolved them: DNS itself is outbound traffic
        extra_hosts = tuple(f"{name}:{a}" for name, addresses in sorted(egress_pins(ctx).items()) for a in addresses)
    labels = {
        **project.manifest.labels,
        docker_client.LABEL_PROJECT: ctx.project.id,
        docker_client.LABEL_AGENT: record.name,
        docker_client.LABEL_ROLE: "agent",
        docker_client.LABEL_COMPOSE_PROJECT: project.compose_project(record.name),
    }
    return ContainerSpec(
        project=project.compose_project(record.name),
        agent=record.name,
        image=agent.image,
        workdir=str(ctx.path),
        command=command,
        mounts=tuple(mounts),
        environment=tuple(sorted(env.items())),
        ports=tuple(PortMapping(n, p, p) for n, p in sorted(record.ports.items())),
        user=f"{uid}:{gid}",
        cpus=resources.cpus if resources else None,
        memory=resources.memory if resources else None,
        pids=resources.pids if resources and resources.pids else DEFAULT_PIDS,
        network_mode=mode if mode in (HOST, NO_NETWORK) else None,
        labels=tuple(sorted(labels.items())),
        services=tuple(services),
        healthcheck=healthcheck,
        extra_hosts=extra_hosts,
        cap_add=tuple(agent.cap_add),
        read_only=agent.read_only,
        tmpfs=(TMP_TMPFS,) if agent.read_only else (),
        # refused here (no root): the file still has the isolated shape up gives it as root
        bridge_name=guard_for(ctx).bridge if mode == ISOLATED or mode.startswith("refused") else None,
        network_internal=mode == INTERNAL,
    )


def egress_pins(ctx: EnvContext) -> dict[str, list[str]]:
    egress_allowed(ctx)  # resolves what is not pinned yet
    return dict(ctx.record.egress_addresses)


def planned_boundary(ctx: EnvContext) -> dict[str, object]:
    """What the agent's container will get (``plan``), in the same keys as
    what Docker reports for a running one (``status``: docker_client._boundary)."""
    agent = ctx.agent
    assert agent is not None
    uid, gid = agent_user(ctx)
    mode = network_mode(ctx)
    network = {
        HOST: "host network",
        NO_NETWORK: "none network",
        INTERNAL: "internal network (no outside traffic; the host is reachable)",
        OWN_NETWORK: "its own network",
        ISOLATED: f"isolated: no route to the host or outside; egress: {', '.join(agent.egress) or 'nothing'}",
    }.get(mode, f"up refuses it: {mode.removeprefix('refused: ')}")
    resources = agent.resources
    return {
        "user": f"{uid}:{gid}",
        "cap_drop": ["ALL"],
        "cap_add": list(agent.cap_add),
        "no_new_privileges": True,
        "seccomp": "default",
        "privileged": False,
        "read_only": agent.read_only,
        "pids_limit": resources.pids if resources and resources.pids else DEFAULT_PIDS,
        "network": network,
        "docker_socket": False,
        "setup": "on the host" if agent.setup_on == "host" else "in its image",
    }


def describe_boundary(b: Mapping[str, object]) -> str:
    """One line for people: what the container runs as and may do."""
    user = str(b.get("user", "?"))
    parts = [f"uid {user.split(':')[0]}" + (" (ROOT)" if user.split(":")[0] in ("0", "root", "root (image default)") else "")]
    dropped = list(b.get("cap_drop") or [])  # type: ignore[call-overload]
    added = [str(c).removeprefix("CAP_") for c in b.get("cap_add") or []]  # type: ignore[attr-defined]
    if dropped == ["ALL"]:
        parts.append("capabilities: " + (", ".join(added) if added else "none"))
    else:
        parts.append("Docker's default capabilities" + (f" + {', '.join(added)}" if added else ""))
    if b.get("privileged"):
        parts.append("PRIVILEGED")
    parts.append("no-new-privileges" if b.get("no_new_privileges") else "new privileges allowed")
    parts.append(f"seccomp {b.get('seccomp', 'default')}")
    parts.append(f"pids {b.get('pids_limit') or 'unlimited'}")
    parts.append("read-only root" if b.get("read_only") else "writable root")
    if b.get("docker_socket"):
        parts.append("DOCKER SOCKET MOUNTED")
    if b.get("network"):
        parts.append(f"network: {b['network']}")
    if b.get("setup"):
        parts.append(f"setup {b['setup']}")
    return ", ".join(parts)
