"""``clone``: a full, independent repository, made cheaply.

``git clone --local`` hard-links the object files (no copy, no network) and the
clone is independent from then on: it has its own refs, config, hooks and
remotes.  ``origin`` points where the user's origin points, so the agent can
push; the remote ``hybridiso-base`` is the local repository, which is where
``sync`` fetches from.  docs/clone-strategy.md has the measurements behind the
choice of ``--local`` over ``--shared``, ``--reference`` and partial clones.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hybridiso import cleanup, git
from hybridiso.strategies.base import EnvContext, Observation, host_setup

NAME = "clone"
SHARES_REFS = False
BASE_REMOTE = "hybridiso-base"


def create(ctx: EnvContext) -> None:
    """``ctx.path`` is absent or empty (lifecycle.prepare checked it)."""
    repo, path, branch = ctx.project.root, ctx.path, ctx.record.branch
    path.parent.mkdir(parents=True, exist_ok=True)
    git.clone_local(repo, path, BASE_REMOTE)
    urls = git.config_values(repo, "remote.origin.url")
    if urls:
        pushes = [_from(repo, u) for u in git.config_values(repo, "remote.origin.pushurl")]
        git.add_remote(path, "origin", _from(repo, urls[-1]), pushes)
    existing = git.branch_commit(repo, branch)
    git.checkout_new_branch(path, branch, existing or ctx.record.base_commit or "HEAD")


def _from(repo: Path, url: str) -> str:
    """``url`` as seen from ``repo``, so it means the same in the clone: a
    relative path (``../origin.git``) is made absolute; URLs (``https://``,
    ``git@host:path``) are kept as written."""
    is_url = "://" in url or (":" in url and "/" not in url.split(":", 1)[0])
    if is_url or Path(url).is_absolute():
        return url
    return str((repo / url).resolve())


def start(ctx: EnvContext) -> str | None:
    return None


def remove(ctx: EnvContext) -> None:
    cleanup.remove_tree_or_explain(ctx.path, f"agent {ctx.name}")


def observe(ctx: EnvContext) -> Observation:
    exists = ctx.path.is_dir()
    registered = (ctx.path / ".git").is_dir()
    branch = git.current_branch(ctx.path) if registered else None
    head = git.resolve_commit(ctx.path, "HEAD") if registered else None
    problems = () if registered or not exists else ("directory exists but is not a git clone",)
    return Observation(exists, registered, branch, head, None, problems)


def unmerged_commits(ctx: EnvContext, base_commit: str) -> list[str]:
    if not (ctx.path / ".git").is_dir():
        return []
    # commits the main repository does not have cannot be reached from its
    # refs; ``--remotes`` covers what was fetched from it.
    text = git.out(ctx.path, "log", "--format=%h %s", "HEAD", "--not", f"--remotes={BASE_REMOTE}", "--")
    mine = [line for line in text.splitlines() if line]
    if not mine:
        return []
    head = git.resolve_commit(ctx.path, "HEAD")
    if head and git.resolve_commit(ctx.project.root, head) and git.ok(
        ctx.project.root, "merge-base", "--is-ancestor", head, base_commit
    ):
        return []
    return mine


def save_ref(ctx: EnvContext, commit: str, ref: str) -> None:
    git.run(ctx.path, "push", "-q", "--no-verify", str(ctx.project.root), f"{commit}:{ref}")


def exec_argv(ctx: EnvContext, argv: Sequence[str], env: dict[str, str]) -> tuple[list[str], Path | None]:
    return list(argv), ctx.path


run_setup = host_setup  # setup runs in the environment's directory, on the host
