"""The small interface every isolation strategy implements.

Like pre-commit's languages, a strategy is a *module* with these attributes,
registered in ``hybridiso/strategies/__init__.py``.  Adding one is one module,
its name in ``names.STRATEGY_NAMES``, one registry line and one test
(docs/architecture.md, "Adding a strategy").  Each module defines
``NAME``, ``SHARES_REFS``, ``create``, ``remove``, ``observe`` and
``inventory``, and assigns every other member, from the shared defaults
below where it does nothing special (as pre-commit's languages assign
``lang_base.basic_*``).  Whatever differs between strategies is a member
here: code outside ``strategies/`` asks the strategy, never its name.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from hybridiso import git
from hybridiso.manifest import Command
from hybridiso.env_context import EnvContext
from hybridiso.project import Project
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
    # what runs in it, e.g. a container's "running (healthy)", "exited (1)";
    # None for an environment that runs nothing (a plain directory)
    process: str | None = None
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


# --- the shared defaults a strategy module assigns --------------------------------------


def start_nothing(ctx: EnvContext) -> StartAction | None:
    """A plain directory runs nothing."""
    return None


def exec_in_directory(ctx: EnvContext, argv: Sequence[str], env: dict[str, str]) -> tuple[list[str], Path | None]:
    """The command as given, run on the host in the environment's directory."""
    return list(argv), ctx.path


def exit_code_as_is(ctx: EnvContext, argv: Sequence[str], code: int) -> int:
    """Nothing to do after ``exec``: its exit code is the command's."""
    return code


def adopt_nothing(path: Path, worktree: git.Worktree | None, env: Mapping[str, str], branch_name: str, finished: bool) -> str | None:
    """An environment this strategy cannot recognise from what git shows."""
    return None


def nothing_to_refresh(ctx: EnvContext) -> None:
    """Nothing to bring up to date before ``sync`` looks at the files."""


def base_as_is(ctx: EnvContext, base_commit: str, base_ref: str | None) -> str | None:
    """The environment reads the repository's own refs: base is already
    where it sees it, under the repository's name for it."""
    return base_ref


def host_rebase(ctx: EnvContext, onto: str, upstream: str | None) -> git.RebaseResult:
    """``git rebase --onto ONTO UPSTREAM`` by the host's git, in the environment."""
    return git.rebase(ctx.path, onto, upstream)


def rebase_in_directory(agent: str, base: str) -> str:
    return f"in {agent}'s environment `git rebase {base}`"


def no_ports_taken(project: Project, leases: Mapping[str, Mapping[str, int]]) -> dict[str, dict[str, str]]:
    """A leased port in use is most likely the agent's own server: it keeps it."""
    return {}


def no_compose_file(ctx: EnvContext) -> Path | None:
    return None


def no_boundary(ctx: EnvContext) -> dict[str, object] | None:
    return None


class Strategy(Protocol):
    # --- what every strategy defines ---------------------------------------------------
    NAME: str
    # True when the env's branch lives in the main repository (worktree,
    # container); False when the env is a repository of its own (clone),
    # which has its own refs, git dir and objects
    SHARES_REFS: bool

    def create(self, ctx: EnvContext) -> None:
        """Lay down the environment's files and branch at ``ctx.path``."""

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

    # --- what a strategy assigns, from the defaults above when it has nothing special ---
    # it runs under Docker: `up` needs the engine and its image, gc looks for
    # its labelled resources, `report --compare` skips it without Docker
    USES_DOCKER: bool
    # something the host must not trust writes its files (a container's
    # processes): the host's git never runs their hooks, config or fsmonitor
    # there (git.distrust; names.UNTRUSTED_FILES says the same to the core)
    UNTRUSTED_FILES: bool
    # what removing it takes besides its directory, branch, ports and
    # database branches, as `gc` lists it ("worktree metadata", ...)
    REMOVES: tuple[str, ...]

    def start(self, ctx: EnvContext) -> StartAction | None:
        """Make what should run match its config and run (containers): returns
        what it did (created, recreated, started, unchanged); None for plain
        directories, which run nothing (``start_nothing``)."""

    def exec_argv(self, ctx: EnvContext, argv: Sequence[str], env: dict[str, str]) -> tuple[list[str], Path | None]:
        """argv and cwd that run ``argv`` inside the environment (``exec_in_directory``)."""

    def after_exec(self, ctx: EnvContext, argv: Sequence[str], code: int) -> int:
        """What ``exec`` does once the command ended; returns its exit code
        (``exit_code_as_is``; a container brings its commits to its branch)."""

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

    def adopt(self, path: Path, worktree: git.Worktree | None, env: Mapping[str, str], branch_name: str, finished: bool) -> str | None:
        """The branch of the environment git shows at ``path`` when it is one
        of this strategy's, for a record lost with the state file
        (envs/reconcile.py); None when it is not (``adopt_nothing``).
        ``worktree`` is git's entry for ``path``, ``env`` its env file,
        ``finished`` whether its creation provably finished."""

    def before_sync(self, ctx: EnvContext) -> None:
        """What ``sync`` refreshes before it judges the files clean (``nothing_to_refresh``)."""

    def take_base(self, ctx: EnvContext, base_commit: str, base_ref: str | None) -> str | None:
        """Bring the moved base into the environment's view (``base_as_is``;
        a clone fetches it from the local repository); returns the
        environment's name for base's ref (None for a commit id)."""

    def rebase(self, ctx: EnvContext, onto: str, upstream: str | None) -> git.RebaseResult:
        """``sync``'s rebase of the environment's branch (``host_rebase``; a
        container rebases inside, by its own git)."""

    def rebase_by_hand(self, agent: str, base: str) -> str:
        """How a user resolves a conflicting sync by hand (``rebase_in_directory``)."""

    def ports_taken_by_others(self, project: Project, leases: Mapping[str, Mapping[str, int]]) -> dict[str, dict[str, str]]:
        """Of ``leases`` (agent -> port name -> port), the ports another
        program holds, by agent: leased again by ``up`` (``no_ports_taken``)."""

    def render(self, ctx: EnvContext) -> Path | None:
        """Write the environment's compose file and return it (``hybridiso
        render``); None when it has none (``no_compose_file``)."""

    def planned_boundary(self, ctx: EnvContext) -> dict[str, object] | None:
        """What its container will get, for ``plan`` (``no_boundary``)."""
