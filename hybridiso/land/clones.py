"""A clone agent's check runs in a scratch clone: a fresh environment of its
own strategy (issue 14 item 2), made the way ``up`` makes a clone
(strategies/clone.py ``create``: ``git clone --local``, hard-linked objects,
its own refs and config, the remote ``hybridiso-base`` naming the
repository, ``origin`` where the repository's points, the repository's
ignore rules), its branch the agent's, checked out at the candidate commit.
It is not the agent's clone: nothing of the agent's is touched, and the
check sees no more than a new environment would.

Where: ``land/clones/<agent>-<random>/repo``, beside a mark file naming the
project, written before the clone is made (git.not_scratch_clone says what
counts as one).  It is removed when the check ends; a ``kill -9`` leaves it
in ``clones/``, which the next ``land`` (recover) and ``gc`` list and remove,
and only what carries the mark.  Every git command land runs there runs
with hooks, fsmonitor and submodule recursion off (git.distrust): what a
check writes into the clone's hooks or config never runs on the host from
land.
"""
from __future__ import annotations

import copy
import os
import secrets
from pathlib import Path

from hybridiso import git
from hybridiso.env_context import EnvContext
from hybridiso.errors import UserError
from hybridiso.manifest import Agent
from hybridiso.process import CommandError
from hybridiso.state import AgentRecord, State
from hybridiso.project import Project

REPO = "repo"


def make(project: Project, state: State, agent: Agent, parent: Path, commit: str) -> Path:
    """A scratch clone of the repository for ``agent``'s check, at ``commit``
    on the agent's branch; its directory (the clone is ``<it>/repo``).  A
    UserError says why it could not be made (what was made is removed)."""
    from hybridiso.strategies import clone

    path = parent / f"{agent.name}-{secrets.token_hex(4)}"
    os.mkdir(path, 0o700)
    try:
        fd = os.open(path / git.SCRATCH_CLONE_MARK, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, f"{project.id}\n".encode())
        finally:
            os.close(fd)
        repo = path / REPO
        git.distrust(path)  # land's git there never runs a hook, fsmonitor or submodule of the check's
        record = state.agents.get(agent.name)
        record = copy.deepcopy(record) if record is not None else AgentRecord(name=agent.name, strategy=clone.NAME, branch=agent.branch_name, path="", base=project.manifest.base)
        record.path, record.branch, record.base_commit = str(repo), agent.branch_name, commit
        ctx = EnvContext(project, agent, record)
        clone.create(ctx)
        git.run(repo, "reset", "-q", "--hard", "--no-recurse-submodules", commit)  # the branch (made at its tip) at what is checked
        if git.out(repo, "rev-parse", "HEAD") != commit:
            raise UserError(f"the scratch clone {repo} is not at {commit[:10]}")
    except (OSError, CommandError, UserError) as e:
        remove(project, parent, path)
        why = e.message if isinstance(e, UserError) else (e.result.stderr.strip()[-300:] if isinstance(e, CommandError) else str(e))
        raise UserError(f"its scratch clone could not be made: {why}") from e
    except BaseException:
        remove(project, parent, path)
        raise
    return path


def remove(project: Project, parent: Path, path: Path) -> str:
    """Remove a scratch clone land made ('' when gone, else why it is left)."""
    return git.remove_scratch_clone(parent, path, project.id)


def entries(parent: Path) -> list[Path]:
    """What is directly in ``parent`` (land's ``clones/``)."""
    try:
        return sorted(parent / name for name in os.listdir(parent)) if os.path.isdir(parent) and not os.path.islink(parent) else []
    except OSError:
        return []
