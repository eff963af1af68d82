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

from hybridiso import envfile, git, ready_marker
from hybridiso.services import branches as service_branches
from hybridiso.names import env_var_for_port
from hybridiso.project import Project
from hybridiso.state import PHASE_CREATING, PHASE_READY, AgentRecord, State
from hybridiso.strategies.clone import BASE_REMOTE


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
        found = _found(path, worktrees.get(path), agent.branch_name)
        if found is None:
            continue
        strategy, branch = found
        env = envfile.read_env_file(path)
        if env.get("HYBRIDISO_STRATEGY") == "container" and strategy == "worktree":
            strategy = "container"
        ports = _ports_from_env(env, agent.ports)
        finished = ready_marker.is_marked(project.repo.common_dir, path, agent.name, admin)
        if not finished and strategy == "clone":
            branch = agent.branch_name  # git clone's own branch until the checkout: not the agent's
        state.agents[agent.name] = AgentRecord(
            name=agent.name,
            strategy=strategy,
            branch=branch,
            path=str(path),
            base=project.manifest.base,
            base_commit=git.branch_created_at(path if strategy == "clone" else project.root, branch)
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


def _found(path: Path, wt: git.Worktree | None, branch_name: str) -> tuple[str, str] | None:
    """(strategy, branch) of the environment git shows at ``path``, if any.
    A clone whose branch is not checked out yet (git clone was killed) is
    still ours when it has the remote every hybridiso clone starts with."""
    if wt is not None and path.is_dir():
        return ("worktree", wt.branch) if wt.branch else None
    if not (path / ".git").is_dir() or (path / ".git").is_symlink():
        return None
    branch = git.current_branch(path)
    if branch is not None:
        return "clone", branch
    if git.remote_url(path, BASE_REMOTE) is not None:
        return "clone", branch_name
    return None


def _ports_from_env(env: dict[str, str], names: list[str]) -> dict[str, int]:
    ports: dict[str, int] = {}
    for name in names:
        value = env.get(env_var_for_port(name), "")
        if value.isdigit():
            ports[name] = int(value)
    return ports


def env_exists(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())
