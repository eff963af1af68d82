"""The small interface every isolation strategy implements.

Like pre-commit's languages, a strategy is a *module* with these attributes,
registered in ``hybridiso/strategies/__init__.py``.  Adding one is one module,
one registry line and one test.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from hybridiso.manifest import Command
from hybridiso.env_context import EnvContext
from hybridiso.state import ProcessGroup
from hybridiso.work.inventory import MainRepo, WorkReport

if TYPE_CHECKING:
    from hybridiso.containers.docker_client import ContainerInfo, StartAction
    from hybridiso.setup_runner import LogFile


@dataclass(frozen=True)
class Observation:
    exists: bool  # the directory is there
    registered: bool  # git knows it (worktree list / a .git dir)
    branch: str | None
    head: str | None
    process: str | None = None  # container state, e.g. "running (healthy)", "exited (1)"
    problems: tuple[str, ...] = ()
    # what a container agent gets, read from Docker (user, capabilities, ...): status shows it
    boundary: Mapping[str, Any] | None = None
    # a container agent's container as Docker lists it (None: none, or Docker
    # was not asked): what ``process`` says in words, for code to read
    container: ContainerInfo | None = None
    docker_reachable: bool = True


def host_setup(
    ctx: EnvContext,
    commands: Sequence[Command],
    env: Mapping[str, str],
    log: LogFile,
    *,
    run_label: str = "up",
    on_start: Callable[[ProcessGroup], None] | None = None,
) -> None:
    """``setup:`` on the host, in the environment's directory: the default
    ``run_setup`` of a strategy (worktree, clone; a container agent with
    ``setup_on: host``).  Each command's process group goes to ``on_start``
    before it runs (docs/faults.md row 38)."""
    from hybridiso import setup_runner

    setup_runner.run_setup(commands, ctx.path, env, log, ctx.cancel, ctx.name, run=run_label, on_start=on_start)


class Strategy(Protocol):
    NAME: str
    # True when the env's branch lives in the main repository (worktree,
    # container); False when it lives in the env's own repository (clone).
    SHARES_REFS: bool

    def create(self, ctx: EnvContext) -> None:
        """Lay down the environment's files and branch at ``ctx.path``."""

    def start(self, ctx: EnvContext) -> StartAction | None:
        """Make what should run match its config and run (containers): returns
        what it did (created, recreated, started, unchanged); None for plain
        directories, which run nothing."""

    def remove(self, ctx: EnvContext) -> None:
        """Remove the environment; the caller has already saved or checked work."""

    def observe(self, ctx: EnvContext) -> Observation: ...

    def inventory(self, ctx: EnvContext, main: MainRepo) -> WorkReport:
        """Everything git holds only in this environment (hybridiso/work/inventory.py):
        commits on its branch not in base, other refs, stash entries, HEAD
        reflog commits no ref holds, a HEAD on another branch, submodule
        work, and whether git can read it at all -- each piece that
        ``--force`` must save as a ``Tip`` naming the object store that has
        it.  ``lifecycle`` adds the files.  Works on a missing directory too
        (what is left of the environment elsewhere, e.g. a worktree's admin
        dir)."""

    def exec_argv(self, ctx: EnvContext, argv: Sequence[str], env: dict[str, str]) -> tuple[list[str], Path | None]:
        """argv and cwd that run ``argv`` inside the environment."""

    def run_setup(
        self,
        ctx: EnvContext,
        commands: Sequence[Command],
        env: Mapping[str, str],
        log: LogFile,
        *,
        run_label: str = "up",
        on_start: Callable[[ProcessGroup], None] | None = None,
    ) -> None:
        """Run ``setup:`` where the environment's work runs (``host_setup``
        for plain directories; a container agent in its image)."""
