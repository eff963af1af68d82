"""Repository-level health that ``status`` flags and ``doctor`` checks (issue 5):
prunable worktrees hybridiso made, interrupted (``creating``) records nobody
is working on, and git lock files left behind by a crashed git (docs/faults.md row 11).

A prunable worktree that is not provably hybridiso's is the user's (or
another tool's) business: its directory may only be on a disk that is not
mounted right now, so it is never mentioned, let alone advised for removal
(docs/faults.md row 28).
"""
from __future__ import annotations

import time
from pathlib import Path

from hybridiso import git
from hybridiso.project import Project
from hybridiso.state import PHASE_READY, State
from hybridiso.state import lock_is_free as state_lock_is_free


def prunable_worktrees(project: Project, state: State) -> list[Path]:
    """Worktrees hybridiso made (Project.owns_worktree) whose directory is gone."""
    return [
        wt.path
        for wt in git.worktree_list(project.root)
        if wt.prunable and project.owns_worktree(wt.path, wt.branch, state.agents)
    ]


def lock_is_free(project: Project) -> bool:
    """True when no hybridiso command holds the repository lock right now."""
    return state_lock_is_free(project.store.lock_path)


def stale_creating(project: Project, state: State) -> list[str]:
    """Records left in ``creating`` by an interrupted ``up``: stale when no
    running ``up`` has claimed the agent (StateStore.claim; one that is
    killed lets go of it)."""
    return sorted(n for n, r in state.agents.items() if r.phase != PHASE_READY and project.store.agent_holder(n) is None)


def stale_git_locks(project: Project, older_than: float = git.STALE_LOCK_SECONDS) -> list[tuple[Path, int]]:
    """``*.lock`` files in the common git dir and each worktree's git dir that
    are older than ``older_than`` seconds: a git that crashed left them."""
    common = project.repo.common_dir
    candidates = [common / n for n in ("index.lock", "HEAD.lock", "config.lock", "packed-refs.lock", "shallow.lock")]
    worktrees = common / "worktrees"
    if worktrees.is_dir():
        for d in worktrees.iterdir():
            candidates += [d / "index.lock", d / "HEAD.lock"]
    refs = common / "refs"
    if refs.is_dir():
        candidates += list(refs.rglob("*.lock"))
    now = time.time()
    found = []
    for p in candidates:
        try:
            age = now - p.stat().st_mtime
        except OSError:
            continue
        if age >= older_than:
            found.append((p, int(age)))
    return found


def repo_problems(project: Project, state: State, names: list[str] | None = None) -> list[str]:
    """One line each, with the fix, for ``status`` (of the agents ``names``, when given)."""
    lines = []
    owned = {Path(r.path) for r in state.agents.values() if isinstance(r.path, str)}
    for p in prunable_worktrees(project, state):
        if p not in owned:  # an agent's own shows on its row
            lines.append(f"worktree {p} is prunable (its directory is gone): `hybridiso gc --yes` cleans it up")
    for name in stale_creating(project, state):
        if not names or name in names:
            lines.append(f"{name}: creation did not finish (it failed or was interrupted): `hybridiso up {name}` retries it, `hybridiso gc --yes` removes it")
    for p, age in stale_git_locks(project):
        lines.append(f"stale git lock {p} ({age} s old): if no git command is running, delete it")
    return lines
