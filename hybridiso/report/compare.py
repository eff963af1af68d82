"""``report --compare N``: build N throwaway environments of each strategy side
by side, measure disk, fetch and startup in one run, and remove them all,
even when interrupted.

Nothing touches the user's repository: the comparison runs on a local
hard-linked copy of it (``upstream.git`` + ``main``) in a temporary directory
beside it (same filesystem, so hard links behave as they would for real), and
the upstream is moved by a synthetic commit to measure fetches.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hybridiso import git, output, strategies
from hybridiso.envs import includes
from hybridiso.errors import job_problem
from hybridiso.envs import lifecycle
from hybridiso.report import measure
from hybridiso.manifest import Agent, Manifest
from hybridiso.project import Project
from hybridiso.state import AgentRecord, StateStore, lock_is_free
from hybridiso.env_context import EnvContext

COMPARE_LABEL = "dev.hybridiso.compare"
RUN_LOCK = "running.lock"  # held (flock) for the whole run: a killed run lets go of it
STALE_WITHOUT_LOCK = 600  # seconds: a workdir without its lock file (it is made first thing)


def workdirs(root: Path) -> list[Path]:
    """The comparison workdirs beside the repository at ``root``."""
    return sorted(p for p in root.parent.glob(f".{root.name}.hybridiso-compare-*") if p.is_dir())


def run_is_over(workdir: Path) -> bool:
    """True when no ``report --compare`` works in ``workdir`` any more (it
    was killed before its cleanup: SIGKILL, a power cut)."""
    lock = workdir / RUN_LOCK
    if not lock.exists():
        try:
            return time.time() - workdir.stat().st_mtime > STALE_WITHOUT_LOCK
        except OSError:
            return False
    try:
        return lock_is_free(lock)
    except OSError:  # unreadable: not ours to judge
        return False


@dataclass
class StrategyResult:
    strategy: str
    envs: list[str] = field(default_factory=list)
    startup_seconds: list[float] = field(default_factory=list)
    unique_bytes: list[int] = field(default_factory=list)
    shared_bytes: list[int] = field(default_factory=list)
    fetches: int = 0
    fetch_seconds: float = 0.0
    fetch_bytes: int = 0
    fetch_note: str = ""

    @property
    def startup_median(self) -> float | None:
        return statistics.median(self.startup_seconds) if self.startup_seconds else None

    @property
    def unique_median(self) -> int | None:
        return int(statistics.median(self.unique_bytes)) if self.unique_bytes else None


@dataclass
class Comparison:
    n: int
    results: dict[str, StrategyResult]
    skipped: dict[str, str]
    store_bytes: int
    total_bytes: int
    files: int
    tree_bytes: int
    seconds: float
    base: str = ""


def _git_env(path: Path, *args: str) -> None:
    git.run(path, "-c", "user.name=hybridiso report", "-c", "user.email=report@hybridiso.invalid", *args)


def _move_upstream(workdir: Path, upstream: Path, base: str, files: int = 20) -> None:
    """A commit on the upstream that changes ``files`` files, like a day of work."""
    mover = workdir / "mover"
    git.run(workdir, "clone", "-q", "--local", "--branch", base, "--", str(upstream), str(mover))
    tracked = [p for p in git.out(mover, "ls-files", "-z").split("\0") if p][:files]
    for i, rel in enumerate(tracked):
        with open(mover / rel, "ab") as f:
            f.write(b"\n# upstream change %d\n" % i + os.urandom(2048).hex().encode())
    _git_env(mover, "commit", "-q", "-a", "-m", "upstream moves")
    git.run(mover, "push", "-q", "origin", f"HEAD:refs/heads/{base}")
    shutil.rmtree(mover)


def compare(
    user: Project,
    n: int,
    wanted: Sequence[str],
    *,
    image: str | None = None,
    progress: Callable[[str], None] = lambda s: None,
) -> Comparison:
    """The phases, in order: copy the repository, plan the agents, build
    them, measure disk and fetches, and tear everything down (always)."""
    started = time.perf_counter()
    base = git.current_branch(user.root) if git.resolve_commit(user.root, user.manifest.base) is None else user.manifest.base
    base = base or "HEAD"
    workdir = Path(tempfile.mkdtemp(prefix=f".{user.root.name}.hybridiso-compare-", dir=user.root.parent))
    running = os.open(workdir / RUN_LOCK, os.O_CREAT | os.O_RDWR, 0o600)
    fcntl.flock(running, fcntl.LOCK_EX)  # `gc` leaves this run alone while it is held
    contexts: list[EnvContext] = []
    try:
        upstream, main = _copy_repository(user, workdir, base)
        project, plan, skipped = _plan(user, workdir, main, base, n, wanted, image)
        results = {s: StrategyResult(s) for s in wanted if s not in skipped}
        _build(project, plan, results, contexts, progress)
        disk = _measure_disk(project, results, contexts)
        progress("moving the upstream and measuring fetches")
        _move_upstream(workdir, upstream, base)
        _measure_fetches(main, results, contexts)
        return Comparison(
            n, results, skipped, disk.store_bytes, disk.total_bytes, *measure.tree_stats(main, base), round(time.perf_counter() - started, 2), base
        )
    finally:
        _tear_down(workdir, running, contexts, progress)


def _copy_repository(user: Project, workdir: Path, base: str) -> tuple[Path, Path]:
    """A bare copy of the user's repository as the upstream, and a checkout of
    it (with the includes) as the repository the agents come from."""
    upstream = workdir / "upstream.git"
    main = workdir / "main"
    git.run(workdir, "clone", "-q", "--bare", "--local", "--", str(user.root), str(upstream))
    git.run(workdir, "clone", "-q", "--local", "--branch", base, "--", str(upstream), str(main))
    for rel in includes.ignored_files_matching(user.checkout, includes.patterns_for(user.checkout, user.manifest.defaults.include)):
        includes.copy_file(user.checkout, rel, main)
    return upstream, main


def _plan(
    user: Project, workdir: Path, main: Path, base: str, n: int, wanted: Sequence[str], image: str | None
) -> tuple[Project, list[tuple[str, str]], dict[str, str]]:
    """The throwaway project: ``n`` agents of every strategy that can run
    here, as ``(strategy, agent)`` in build order; the others, with why not."""
    skipped: dict[str, str] = {}
    usable = []
    for strategy in wanted:
        why = _container_unavailable(image) if strategies.get(strategy).USES_DOCKER else None
        if why:
            skipped[strategy] = why
        else:
            usable.append(strategy)
    agents: list[Agent] = []
    plan: list[tuple[str, str]] = []
    # round-robin (work0, clon0, cont0, work1, ...): warm caches and a
    # machine whose speed drifts during the run weigh on every strategy alike
    for i in range(n):
        for strategy in usable:
            name = f"{strategy[:4]}{i}"
            extra: dict[str, object] = {"isolation": strategy}
            if strategies.get(strategy).USES_DOCKER:
                extra.update(image=image, command=["sh", "-c", "sleep 3600"])
            agents.append(Agent.model_validate({"name": name, **extra}))
            plan.append((strategy, name))
    manifest = Manifest.model_validate(
        {
            **user.manifest.model_dump(exclude={"agents", "workspace", "base", "labels"}),
            "base": base,
            # this run's id: a comparison running beside it keeps its own
            "labels": {**user.manifest.labels, COMPARE_LABEL: workdir.name},
            "agents": [a.model_dump(exclude_defaults=True) for a in agents],
        }
    )
    repo = git.discover(main)
    project = Project(repo, manifest, main / "hybridiso.yaml", workdir / "ws", StateStore(repo.common_dir))
    return project, plan, skipped


def _build(
    project: Project, plan: list[tuple[str, str]], results: dict[str, StrategyResult], contexts: list[EnvContext], progress: Callable[[str], None]
) -> None:
    """Create every planned environment, one at a time, timing each; each
    joins ``contexts`` before it is made, so the teardown finds it."""
    base = project.manifest.base
    base_commit = git.resolve_commit(project.root, base)
    for strategy, name in plan:
        agent = project.manifest.agent(name)
        record = AgentRecord(name=name, strategy=strategy, branch=agent.branch_name, path=str(project.env_path(agent)), base=base, base_commit=base_commit)
        ctx = EnvContext(project, agent, record)
        lifecycle.prepare(ctx)
        contexts.append(ctx)
        t = time.perf_counter()
        lifecycle.create(ctx)
        results[strategy].startup_seconds.append(round(time.perf_counter() - t, 3))
        results[strategy].envs.append(name)
        progress(f"built {strategy} {name} in {results[strategy].startup_seconds[-1]:.2f}s")


def _measure_disk(project: Project, results: dict[str, StrategyResult], contexts: list[EnvContext]) -> measure.DiskReport:
    os.sync()
    disk = measure.disk_report(project.repo.common_dir, {c.name: c.path for c in contexts}, exclude=[project.store.dir])
    for c in contexts:
        share = disk.envs[c.name]
        results[c.record.strategy].unique_bytes.append(share.unique_bytes)
        results[c.record.strategy].shared_bytes.append(share.shared_bytes)
    return disk


def _measure_fetches(main: Path, results: dict[str, StrategyResult], contexts: list[EnvContext]) -> None:
    """After the upstream moved: what bringing each strategy's environments
    up to date costs."""
    shared_fetch: measure.Fetch | None = None
    for strategy, result in results.items():
        if strategies.get(strategy).SHARES_REFS:
            if shared_fetch is None:
                shared_fetch = measure.timed_fetch(main, "origin")
            # the same single fetch of the shared object store serves
            # every worktree and container env: count it for each group
            result.fetches, result.fetch_seconds, result.fetch_bytes = 1, shared_fetch.seconds, shared_fetch.bytes
            result.fetch_note = "one fetch of the shared object store serves every worktree and container"
        else:  # a repository of its own fetches on its own
            for c in (c for c in contexts if c.record.strategy == strategy):
                f = measure.timed_fetch(c.path, "origin")
                result.fetches += 1
                result.fetch_seconds += f.seconds
                result.fetch_bytes += f.bytes
            result.fetch_seconds = round(result.fetch_seconds, 4)
            result.fetch_note = "each clone fetches the upstream on its own"


def _tear_down(workdir: Path, running: int, contexts: list[EnvContext], progress: Callable[[str], None]) -> None:
    """Remove every environment made (even after a failure or Ctrl-C), what
    Docker kept of them, and the workdir; then let go of the run's lock."""
    progress("removing the throwaway environments")
    for c in contexts:
        try:
            strategies.get(c.record.strategy).remove(c)
        except Exception as e:  # noqa: BLE001 - removal must go on for the others; said, never dropped
            output.warn(f"report --compare: {c.record.strategy} environment {c.name} was not removed cleanly ({job_problem(e)[0]}); `hybridiso gc` finds what is left")
    _remove_labelled(workdir.name)
    shutil.rmtree(workdir, ignore_errors=True)
    os.close(running)


def _container_unavailable(image: str | None) -> str | None:
    if not image:
        return "no image to run: pass --image (or declare a container agent in the manifest)"
    from hybridiso.containers import docker_client

    ok, why = docker_client.reachable()
    if not ok:
        return why
    if not docker_client.image_present(image):
        return f"image {image} is not on this machine"
    return None


def _remove_labelled(run: str) -> None:
    """Docker resources this run made and compose left (only this run's)."""
    from hybridiso.containers import docker_client

    ok, _ = docker_client.reachable()
    if ok:
        docker_client.remove_labelled({COMPARE_LABEL: run})
