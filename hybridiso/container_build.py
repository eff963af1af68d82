"""Build a container agent's ``ContainerSpec`` from the manifest and its record."""
from __future__ import annotations

import os

from hybridiso import docker_client, git, lifecycle
from hybridiso.container_spec import SERVICE_IMAGES, ContainerSpec, Healthcheck, Mount, PortMapping, ServiceSpec
from hybridiso.render import expand_vars
from hybridiso.strategies.base import EnvContext

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


def build_spec(ctx: EnvContext) -> ContainerSpec:
    agent, record, project = ctx.agent, ctx.record, ctx.project
    assert agent is not None and agent.image, "container agents have an image (manifest validation)"
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
        **lifecycle.environment_for(project, agent, record),
        **service_env,
        # taken once, when the agent is made: a later shell with other
        # GIT_AUTHOR_* must not change the config (and recreate a running agent)
        **ctx.record.extra.setdefault("git_identity", _git_identity(ctx)),
        "HOME": "/tmp",  # the host uid usually has no home in the image
    }
    command = tuple(expand_vars(part, env) for part in agent.command) if agent.command else None
    healthcheck = None
    if agent.healthcheck is not None:
        hc = agent.healthcheck
        test = ("CMD-SHELL", hc.test) if isinstance(hc.test, str) else ("CMD", *hc.test)
        healthcheck = Healthcheck(
            tuple(expand_vars(part, env) for part in test), hc.interval, hc.timeout, hc.retries, hc.start_period
        )
    common = str(project.repo.common_dir)
    mounts = [Mount(str(ctx.path), str(ctx.path))]
    if not str(ctx.path).startswith(common + os.sep):
        # the worktree's .git file points into the common git dir by absolute path
        mounts.append(Mount(common, common))
    needs = set(agent.workload.needs)
    resources = agent.resources
    labels = {
        **project.manifest.labels,
        docker_client.LABEL_PROJECT: container_repo_id(ctx),
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
        user=f"{os.getuid()}:{os.getgid()}",
        cpus=resources.cpus if resources else None,
        memory=resources.memory if resources else None,
        pids=resources.pids if resources else None,
        network_mode="host" if "host-network" in needs else None,
        labels=tuple(sorted(labels.items())),
        services=tuple(services),
        healthcheck=healthcheck,
    )


def container_repo_id(ctx: EnvContext) -> str:
    from hybridiso.strategies.container import repo_id

    return repo_id(ctx)
