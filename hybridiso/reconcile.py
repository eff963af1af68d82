"""Reality wins over the state file (STYLE.md #5, FAULTS #18).

Records are adopted from what git shows: a manifest agent whose directory in
the workspace is a registered worktree or a clone gets a record even when the
state file is missing or was corrupt, with its ports read back from its env
file, and its database branches from their deterministic names.  Containers
are never recorded: status, down and gc find them by their Docker labels,
which name the repository and the agent.
"""
from __future__ import annotations

from pathlib import Path

from hybridiso import envfile, git, service_branches
from hybridiso.names import env_var_for_port
from hybridiso.project import Project
from hybridiso.state import PHASE_READY, AgentRecord, DatabaseBranch, State


def adopt_from_reality(project: Project, state: State) -> list[str]:
    """Add records for environments that exist but the state does not know."""
    adopted: list[str] = []
    worktrees = {wt.path.resolve(): wt for wt in git.worktree_list(project.root)}
    for agent in project.manifest.agents:
        if agent.name in state.agents:
            continue
        path = project.env_path(agent)
        strategy: str | None = None
        branch: str | None = None
        wt = worktrees.get(path)
        if wt is not None and path.is_dir():
            strategy, branch = "worktree", wt.branch
        elif (path / ".git").is_dir():
            strategy, branch = "clone", git.current_branch(path)
        if strategy is None or branch is None:
            continue
        env = envfile.read_env_file(path)
        if env.get("HYBRIDISO_STRATEGY") == "container" and strategy == "worktree":
            strategy = "container"
        ports = _ports_from_env(env, agent.ports)
        state.agents[agent.name] = AgentRecord(
            name=agent.name,
            strategy=strategy,
            branch=branch,
            path=str(path),
            base=project.manifest.base,
            base_commit=git.branch_created_at(path if strategy == "clone" else project.root, branch)
            or git.resolve_commit(project.root, project.manifest.base),
            phase=PHASE_READY,
            created_branch=branch == agent.branch_name,
            ports=ports,
            setup_hash="",
            extra={"adopted": True},
        )
        # database branch names are deterministic: the record owns them again
        # (so `down` drops them and gc never takes them for leftovers)
        # (their baselines are read back from the databases' comments)
        state.agents[agent.name].databases = {
            svc: DatabaseBranch(b["name"], b["server"]) for svc, b in service_branches.planned_branches(project, agent).items()
        }
        adopted.append(agent.name)
    return adopted


def _ports_from_env(env: dict[str, str], names: list[str]) -> dict[str, int]:
    ports: dict[str, int] = {}
    for name in names:
        value = env.get(env_var_for_port(name), "")
        if value.isdigit():
            ports[name] = int(value)
    return ports


def env_exists(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())
