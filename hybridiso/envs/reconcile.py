"""Reality wins over the state file (compose's habit; docs/faults.md row 18).

Records are adopted from what git shows: a manifest agent whose directory in
the workspace is a registered worktree or a clone gets a record even when the
state file is missing or was corrupt, with its ports read back from its env
file, and its database branches from their deterministic names.  Containers
are never recorded: status, down and gc find them by their Docker labels,
which name the repository and the agent.

Only an environment that provably finished its creation (its ready marker,
ready_marker.py, written last) is adopted as ``ready``.  Any other one (a
checkout killed half-way, a setup that never finished, a clone git had not
finished making) is adopted as ``creating`` and owning its directory, so the
next ``up`` rolls it back through the normal path and makes it again, and
``status`` never calls it ready (issue 11).
"""
from __future__ import annotations

from pathlib import Path

from collections.abc import Mapping

from hybridiso import envfile, git, ready_marker, strategies
from hybridiso.services import branches as service_branches
from hybridiso.names import env_var_for_port
from hybridiso.project import Project
from hybridiso.state import PHASE_CREATING, PHASE_READY, AgentRecord, State
from hybridiso.strategies.base import Strategy


def adopt_from_reality(project: Project, state: State) -> list[str]:
    """Add records for environments that exist but the state does not know."""
    adopted: list[str] = []
    missing = [a for a in project.manifest.agents if a.name not in state.agents and a.name not in state.set_aside]  # a set-aside record is left alone
    if not missing:
        return adopted
    worktrees = {wt.path.resolve(): wt for wt in git.worktree_list(project.root)}
    admin = ready_marker.worktree_admin_dirs(project.repo.common_dir)
    for agent in missing:
        path = project.env_path(agent)
        env = envfile.read_env_file(path)
        finished = ready_marker.is_marked(project.repo.common_dir, path, agent.name, admin)
        found = _found(path, worktrees.get(path), env, agent.branch_name, finished)
        if found is None:
            continue
        strategy, branch = found
        ports = _ports_from_env(env, agent.ports)
        state.agents[agent.name] = AgentRecord(
            name=agent.name,
            strategy=strategy.NAME,
            branch=branch,
            path=str(path),
            base=project.manifest.base,
            base_commit=git.branch_created_at(project.root if strategy.SHARES_REFS else path, branch)
            or git.resolve_commit(project.root, project.manifest.base),
            phase=PHASE_READY if finished else PHASE_CREATING,
            # only its default branch is surely hybridiso's: an explicit `branch:`
            # may be the user's own (or one git worktree add made tracking a
            # remote), which down and gc must never delete
            created_branch=agent.branch is None and branch == agent.branch_name,
            ports=ports,
            setup_hash="",
            # a half-made one is rolled back by the next up: it owns its directory
            adopted=True,
            owns_path=not finished,
        )
        # database branch names are deterministic: the record owns them again
        # (so `down` drops them and gc never takes them for leftovers)
        # (their baselines are read back from the databases' comments)
        state.agents[agent.name].databases = {
            svc: b.record() for svc, b in service_branches.planned_branches(project, agent).items()
        }
        adopted.append(agent.name)
    return adopted


def _found(path: Path, wt: git.Worktree | None, env: Mapping[str, str], branch_name: str, finished: bool) -> tuple[Strategy, str] | None:
    """(strategy, branch) of the environment git shows at ``path``, if any:
    each strategy is asked (``adopt``), first the one its env file names
    (what wrote it: a container agent's worktree is a worktree too), then
    the others in the registry's order."""
    named = env.get("HYBRIDISO_STRATEGY", "")
    for strategy in sorted(strategies.STRATEGIES.values(), key=lambda s: s.NAME != named):
        branch = strategy.adopt(path, wt, env, branch_name, finished)
        if branch is not None:
            return strategy, branch
    return None


def _ports_from_env(env: dict[str, str], names: list[str]) -> dict[str, int]:
    ports: dict[str, int] = {}
    for name in names:
        value = env.get(env_var_for_port(name), "")
        if value.isdigit():
            ports[name] = int(value)
    return ports
