"""``container``: the agent's worktree bind-mounted into a Docker container.

The worktree and the repository's common git dir are mounted at their host
paths, so the ``.git`` file of the linked worktree (an absolute path) resolves
inside the container and ``git status``/``git commit`` work there.  The
container runs as the host user's uid:gid with ``no-new-privileges``, its own
network, limits from ``resources:``, leased ports published on 127.0.0.1, and
labels ``dev.hybridiso.*``: Docker itself is the state for containers.

Files and branches are the worktree strategy's; this module adds the compose
project around them.
"""
from __future__ import annotations

import contextlib
import os
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor, wait
from collections.abc import Sequence
from pathlib import Path

from hybridiso import compose_cli, docker_client, engine_apply, output
from hybridiso.errors import Cancelled, UserError
from hybridiso.project import Project
from hybridiso.state import PHASE_READY
from hybridiso.strategies import worktree
from hybridiso.strategies.base import EnvContext, Observation
from hybridiso.work import MainRepo, WorkReport

NAME = "container"
SHARES_REFS = True
AGENT_SERVICE = "agent"


def project_label(project: Project) -> str:
    """The ``dev.hybridiso.project`` label: the project's one id
    (``Project.id``, from its common git dir: the same from every worktree,
    two checkouts never share it)."""
    return project.id


def repo_id(ctx: EnvContext) -> str:
    return ctx.project.id


def compose_project(ctx: EnvContext) -> str:
    return ctx.project.compose_project(ctx.name)


def compose_file(ctx: EnvContext) -> Path:
    return ctx.project.store.compose_dir / ctx.name / "compose.yaml"


def agent_labels(ctx: EnvContext) -> dict[str, str]:
    """Every Docker object of the agent (``down`` and ``gc`` remove them all)."""
    return {docker_client.LABEL_PROJECT: repo_id(ctx), docker_client.LABEL_AGENT: ctx.name}


def project_containers(ctx: EnvContext) -> list[docker_client.ContainerInfo]:
    """The agent's project's own containers: not the one-off ones a user
    starts with `docker compose run`, which carry the same labels."""
    return docker_client.containers({**agent_labels(ctx), docker_client.COMPOSE_ONEOFF: "False"})


def render(ctx: EnvContext) -> Path:
    """Write the agent's compose file (``hybridiso render`` and ``up``)."""
    from hybridiso.container_build import build_spec
    from hybridiso.render import write_compose

    return write_compose(build_spec(ctx), compose_file(ctx), ctx.project.store.anchor)


def create(ctx: EnvContext) -> None:
    # the file first: the agent's network depends on nothing else, so Docker
    # makes it while git checks the worktree out (and setup runs)
    path = render(ctx)
    _make_network_early(ctx, path)
    try:
        worktree.create(ctx)
    except BaseException:
        _await_network(ctx, wait_only=True)  # a rollback must not race it
        raise


_network_maker = ThreadPoolExecutor(max_workers=4, thread_name_prefix="hybridiso-network")
_networks_pending: dict[str, Future[None]] = {}
_pending_lock = threading.Lock()


def _engine_plan(ctx: EnvContext, path: Path, image_id: str = "") -> engine_apply.Plan | None:
    from hybridiso.manifest import read_yaml

    return engine_apply.translate(read_yaml(path.read_text(encoding="utf-8")), path, image_id)


def _make_network_early(ctx: EnvContext, path: Path) -> None:
    plan = _engine_plan(ctx, path)
    if plan is None or plan.network is None:
        return
    future = _network_maker.submit(docker_client.ensure_network, plan.network, plan.network_labels)
    with _pending_lock:
        _networks_pending[ctx.name] = future


def _await_network(ctx: EnvContext, *, wait_only: bool = False) -> None:
    """Wait for the network create() started, if any, raising its error;
    with ``wait_only``, its error is not ours to raise (the caller is failing)."""
    with _pending_lock:
        future = _networks_pending.pop(ctx.name, None)
    if future is None:
        return
    if wait_only:
        wait([future])
    else:
        future.result()


def start(ctx: EnvContext) -> str:
    """Render the file and make Docker match it: created, recreated (the
    config changed), started (it had stopped) or unchanged."""
    assert ctx.agent is not None and ctx.agent.image
    docker_client.client()  # Docker unreachable: say so before anything else (FAULTS #12)
    docker_client.ensure_image(ctx.agent.image)
    ctx.record.extra["image"] = ctx.agent.image  # down fixes ownership with it, even once the manifest forgets the agent
    from hybridiso.container_build import build_spec
    from hybridiso.render import write_compose

    spec = build_spec(ctx)
    path = write_compose(spec, compose_file(ctx), ctx.project.store.anchor)
    # ready means healthy where anything has a healthcheck: the manifest's,
    # the image's own HEALTHCHECK, or the services'
    image_id, image_healthcheck = docker_client.image_facts(spec.image)
    healthchecks = spec.healthcheck is not None or bool(spec.services) or image_healthcheck
    action = _apply_through_engine(ctx, path, image_id, healthchecks)
    if action is None:
        before = {c.id: c.status for c in project_containers(ctx)}
        try:
            compose_cli.up(compose_project(ctx), path, wait=healthchecks)
        except UserError:
            _explain_unhealthy(ctx)
            raise
        action = _what_compose_did(before, {c.id: c.status for c in project_containers(ctx)})
    if healthchecks:
        _explain_unhealthy(ctx)  # the engine path's wait ends on unhealthy or exited too
    info = _agent_container(ctx)
    if not healthchecks:
        _require_running(ctx, info)
    check_git_inside(ctx, info)
    return action


def _what_compose_did(before: dict[str, str], after: dict[str, str]) -> str:
    if not before:
        return "created"
    if set(after) != set(before):
        return "recreated"
    return "started" if any(status != "running" for status in before.values()) else "unchanged"


READY_TIMEOUT = 120  # seconds for every healthcheck to pass


def _apply_through_engine(ctx: EnvContext, path: Path, image_id: str, healthchecks: bool) -> str | None:
    """A project of one container starts through the Engine API (see
    engine_apply.py): what was done; None when the file needs Compose."""
    plan = _engine_plan(ctx, path, image_id)
    _await_network(ctx)  # its error (Docker refused the network) is this agent's
    action = docker_client.apply_container(plan) if plan is not None else None
    if action is None:
        return None
    if healthchecks:
        final = docker_client.wait_ready(plan.container_name, timeout=READY_TIMEOUT, cancel=ctx.cancel)
        if final == "cancelled":
            raise Cancelled(ctx.name)
        if final not in ("healthy", "running", "unhealthy", "exited", "timeout"):
            raise UserError(
                f"container {plan.container_name} is {final}, not running",
                hint=f"`docker inspect {plan.container_name}` and `docker logs {plan.container_name}` show why",
            )
        if final == "timeout":
            raise UserError(
                f"container {plan.container_name} was not healthy after {READY_TIMEOUT}s",
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
            raise UserError(
                f"container {info.name} is unhealthy; its healthcheck's last run: {info.last_probe or '(none recorded)'}",
                hint=f"fix the healthcheck in hybridiso.yaml or the program; `docker logs {info.name}` shows its output",
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


def check_git_inside(ctx: EnvContext, info: docker_client.ContainerInfo | None) -> None:
    """FAULTS #21: git in the container (``info``, the agent's) must see the
    repository, or we say why."""
    if info is None or info.status != "running":
        return
    image = ctx.agent.image if ctx.agent else "?"
    # an image that had no git has none the next time either (an id names
    # fixed content): skip the probe's exec, but still say so
    known = f"{info.image_id} {ctx.project.manifest.env_for(ctx.agent).get('PATH', '') if ctx.agent else ''}"
    without_git = ctx.project.store.images_without_git
    remembered = known in _read_lines(without_git)
    if remembered:
        code, text = 127, ""
    else:
        probe = "command -v git >/dev/null 2>&1 || exit 127; git status --porcelain >/dev/null"
        code, text = docker_client.exec_in(
            info.id, ["sh", "-c", probe], user=f"{os.getuid()}:{os.getgid()}", workdir=str(ctx.path), environment={"HOME": "/tmp"}
        )
    if code == 0:
        ctx.record.extra["git_in_container"] = "ok"
        return
    if code in (126, 127):
        ctx.record.extra["git_in_container"] = "image has no git"
        output.warn(f"{ctx.name}: image {image} has no git; the agent cannot run git inside its container")
        if info.image_id and not remembered:
            with contextlib.suppress(OSError):  # only a cache
                with without_git.open("a", encoding="utf-8") as f:
                    f.write(known + "\n")
        return
    if "unknown repository extension" in text:
        hint = (
            "the image's git is older than this repository's format needs (see the extension named above): "
            "use an image with a newer git, or an agent without git inside"
        )
    else:
        hint = (
            f"the worktree ({ctx.path}) and the common git dir ({ctx.project.repo.common_dir}) must be mounted at "
            "their host paths, and the container must run as the files' owner"
        )
    raise UserError(f"git inside agent {ctx.name}'s container cannot see the repository: {text.strip()[:400]}", hint=hint)


def _read_lines(path: Path) -> set[str]:
    try:
        return set(path.read_text(encoding="utf-8").splitlines())
    except (OSError, UnicodeDecodeError):
        return set()


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
        image = ctx.agent.image if ctx.agent is not None else ctx.record.extra.get("image")
        fix_ownership(ctx.path, image=image, labels={**ctx.project.manifest.labels, **agent_labels(ctx)})
    elif ctx.path.exists():
        output.warn(f"{ctx.name}: Docker is not reachable; its containers (if any) are left for `hybridiso gc`")
    worktree.remove(ctx)
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
    uid (FAULTS #8), so removal cannot fail half-way.  Returns what it fixed.

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
            f"{len(refused)} files in {path} belong to another user (written by a container), e.g. {refused[0]}",
            hint=f"sudo chown -R {uid}:{gid} '{path}'",
        )
    return foreign


def observe(ctx: EnvContext) -> Observation:
    base = worktree.observe(ctx)
    ok, why = docker_client.reachable()
    if not ok:
        return Observation(base.exists, base.registered, base.branch, base.head, "docker unreachable", base.problems)
    info = _agent_container(ctx)
    process = info.describe() if info is not None else "no container"
    problems = base.problems
    if info is None and ctx.record.phase == PHASE_READY and base.exists:
        problems = (*problems, "its container is gone: `hybridiso up` starts it again")
    return Observation(base.exists, base.registered, base.branch, base.head, process, problems)


def inventory(ctx: EnvContext, main: MainRepo) -> WorkReport:
    return worktree.inventory(ctx, main)  # its files and branch are a worktree's


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
    args += ["-w", str(ctx.path), "-u", f"{os.getuid()}:{os.getgid()}"]
    for key, value in env.items():
        args += ["-e", f"{key}={value}"]
    return [*args, info.id, *argv], None
