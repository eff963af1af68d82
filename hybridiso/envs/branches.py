"""Where an agent's branch starts: what ``git worktree add`` / ``git switch`` do (issue 11).

- The branch exists locally: the agent checks it out.
- It does not, the manifest names it (``branch: feature``), and exactly one
  remote has it (``origin/feature``): a local ``feature`` is created at the
  remote's tip and tracks it, as ``git worktree add PATH feature`` does.  With
  several remotes, ``checkout.defaultRemote`` picks one, else it is refused
  with the candidates.  (A default ``hybridiso/<agent>`` branch never starts
  from a remote: the user asked for a fresh branch, not for someone's.)
- Otherwise a new branch starts at base.

A branch name whose first component is a remote's name (``origin/feature``),
or ``refs``/``heads``/``tags``/``remotes``, would make a local branch that
shadows a remote-tracking branch in the user's repository (``git`` then calls
``origin/feature`` ambiguous and picks the local one): refused before anything
is made, with the name to use instead.

All answers come from one ``git for-each-ref`` and one ``git remote``, read
once per command (``Refs.read``), not one process per agent.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from hybridiso import git
from hybridiso.errors import UserError
from hybridiso.manifest import Agent

# Names git resolves before or beside refs/heads/<name>: a branch that starts
# with one of them means something else to `git rev-parse` than to the agent.
_AMBIGUOUS_PREFIXES = ("refs", "heads", "tags", "remotes")
# the remote every clone has for the local repository (strategies.clone)
_CLONE_REMOTE = "hybridiso-base"


@dataclass(frozen=True)
class Refs:
    heads: dict[str, str]  # branch -> commit
    remote_refs: dict[str, str]  # refs/remotes/<remote>/<branch> -> commit
    remotes: tuple[str, ...]
    default_remote: str | None  # checkout.defaultRemote

    @classmethod
    def read(cls, root: Path) -> Refs:
        heads: dict[str, str] = {}
        remote_refs: dict[str, str] = {}
        for ref, commit in git.refs_under(root, "refs/heads/", "refs/remotes/"):
            if ref.startswith("refs/heads/"):
                heads[ref.removeprefix("refs/heads/")] = commit
            else:
                remote_refs[ref] = commit
        defaults = git.config_values(root, "checkout.defaultRemote")
        return cls(heads, remote_refs, tuple(git.remote_names(root)), defaults[-1] if defaults else None)


@dataclass(frozen=True)
class Start:
    exists: bool  # refs/heads/<branch> is there
    commit: str | None  # the branch's tip, or the remote tip it will start from
    track: str = ""  # refs/remotes/<remote>/<branch> it is created from and tracks


def start_for(refs: Refs, branch: str, *, explicit: bool) -> Start:
    """Where ``branch`` starts (see the module docstring)."""
    tip = refs.heads.get(branch)
    if tip is not None:
        return Start(True, tip)
    if not explicit:
        return Start(False, None)
    found = [r for r in refs.remotes if f"refs/remotes/{r}/{branch}" in refs.remote_refs]
    if len(found) > 1 and refs.default_remote in found:
        found = [refs.default_remote]
    if len(found) > 1:
        names = ", ".join(f"{r}/{branch}" for r in found)
        raise UserError(
            f"branch {branch} does not exist here, and {len(found)} remotes have it ({names}): which one to start from is not clear",
            hint=f"create it yourself (git branch --track {branch} {found[0]}/{branch}), or set git config checkout.defaultRemote",
        )
    if not found:
        return Start(False, None)
    ref = f"refs/remotes/{found[0]}/{branch}"
    return Start(False, refs.remote_refs[ref], ref)


def shadow_problem(refs: Refs, branch: str) -> str | None:
    """Why ``branch`` would shadow a remote-tracking branch (None if it does not)."""
    if branch in refs.remotes or branch == _CLONE_REMOTE:
        return (
            f"branch {branch!r} is the name of a remote: git would read {branch} as that branch instead of "
            f"{branch}/HEAD, the remote's default branch (use another name)"
        )
    if "/" not in branch:
        return None
    # the longest remote name it starts with (remote names may hold '/')
    remote = max((r for r in (*refs.remotes, _CLONE_REMOTE) if branch.startswith(f"{r}/")), key=len, default=None)
    if remote is not None:
        rest = branch[len(remote) + 1 :]
        if f"refs/remotes/{branch}" in refs.remote_refs:
            what = f"the remote-tracking branch {branch}"
            instead = f"use `branch: {rest}`: hybridiso makes a local {rest} that tracks {branch}, as git worktree add does"
        else:
            what = f"the branches of remote {remote!r}"
            instead = f"use `branch: {rest}`, or a name that does not start with {remote}/"
        return (
            f"branch {branch!r} starts with the name of remote {remote!r}: a local branch refs/heads/{branch} "
            f"would shadow {what} in your repository ({instead})"
        )
    first, rest = branch.split("/", 1)
    if first in _AMBIGUOUS_PREFIXES:
        return (
            f"branch {branch!r} starts with {first!r}/: git would read {branch} as another ref than the "
            f"branch refs/heads/{branch} (use `branch: {rest}`)"
        )
    return None


def shadow_problems(refs: Refs, agents: Iterable[Agent]) -> list[str]:
    """One line per agent whose explicit ``branch:`` is refused (for ``up``,
    and for ``plan`` to show before anything is made)."""
    problems = []
    for agent in agents:
        why = shadow_problem(refs, agent.branch) if agent.branch else None
        if why:
            problems.append(f"agent {agent.name}: {why}")
    return problems


def refuse_shadowing(root: Path, agents: Iterable[Agent], refs: Refs | None = None) -> Refs:
    """Raise one error naming every agent whose branch would shadow a
    remote-tracking branch; return the refs read for the next question."""
    refs = refs if refs is not None else Refs.read(root)
    problems = shadow_problems(refs, agents)
    if problems:
        raise UserError(
            "the manifest names branches that would shadow remote-tracking branches:\n  " + "\n  ".join(problems),
            hint="change `branch:` of those agents in hybridiso.yaml; nothing was created",
        )
    return refs


def fork_point(root: Path, tip: str, base_commit: str, carried: str | None) -> str:
    """The commit an existing branch forked from base: a previous record's
    (a branch hybridiso made, whose environment is made again) when it is in
    the branch's history, else the merge base with base (sync's ``--onto``
    and gc's "own commits" count from here)."""
    if carried and git.is_ancestor(root, carried, tip):
        return carried
    return git.merge_base(root, base_commit, tip) or base_commit
