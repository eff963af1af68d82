"""``clone``: a full, independent repository, made cheaply.

``git clone --local`` hard-links the object files (no copy, no network) and the
clone is independent from then on: it has its own refs, config, hooks and
remotes.  Where hard links are impossible (the workspace on another file
system) the objects are copied (``--no-hardlinks``), and the record and ``up``
say so (FAULTS #36).  ``origin`` points where the user's origin points, so the
agent can push; the remote ``hybridiso-base`` is the local repository, which is
where ``sync`` fetches from.  What the repository ignores through its own
``info/exclude`` and ``core.excludesFile`` the clone ignores too, so files
``include:`` copies never look like the agent's work.  docs/clone-strategy.md
has the measurements behind the choice of ``--local`` over ``--shared``,
``--reference`` and partial clones.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hybridiso import cleanup, envfile, git, output, safe_files
from hybridiso.strategies.base import EnvContext, Observation

NAME = "clone"
SHARES_REFS = False
BASE_REMOTE = "hybridiso-base"


def create(ctx: EnvContext) -> None:
    """``ctx.path`` is absent or empty (lifecycle.prepare checked it)."""
    repo, path, branch = ctx.project.root, ctx.path, ctx.record.branch
    path.parent.mkdir(parents=True, exist_ok=True)
    ctx.record.clone_objects = git.clone_local(repo, path, BASE_REMOTE, ctx.project.repo.common_dir)
    made = git.current_branch(path)  # git clone's local copy of the repository's HEAD branch
    copy_ignore_rules(ctx)
    urls = git.config_values(repo, "remote.origin.url")
    if urls:
        pushes = [_from(repo, u) for u in git.config_values(repo, "remote.origin.pushurl")]
        git.add_remote(path, "origin", _from(repo, urls[-1]), pushes)
    existing = git.branch_commit(repo, branch)
    track = ctx.record.track if existing is None else ""
    start = existing or (git.resolve_commit(repo, track) if track else None) or ctx.record.base_commit or "HEAD"
    git.checkout_new_branch(path, branch, start)
    if track.startswith("refs/remotes/origin/") and urls:
        # `branch: feature` that only origin has: tracks origin/feature in the
        # clone as in the repository (its remote-tracking refs mirrored locally)
        git.fetch(path, BASE_REMOTE, "+refs/remotes/origin/*:refs/remotes/origin/*")
        git.set_upstream(path, branch, track.removeprefix("refs/remotes/"))
    if made and made != branch:
        # a stale copy of that branch nobody moves: it would keep whatever base
        # later drops (a purged secret, FAULTS #35) and look like a branch of
        # the agent's; base lives in refs/remotes/hybridiso-base/ instead
        git.delete_branch(path, made)


EXCLUDE_HEADER = (
    "# written by hybridiso: the repository's own info/exclude, so the clone ignores\n"
    "# what the repository ignores (files include: copies are not the agent's work)\n"
)


def copy_ignore_rules(ctx: EnvContext) -> None:
    """The clone's ``info/exclude`` is the repository's, plus the env file;
    a ``core.excludesFile`` the repository's own config sets is set in the
    clone too (a global one applies to both already).  Written without
    following a symlink the agent may have put there (sync refreshes it)."""
    common = ctx.project.repo.common_dir
    try:
        theirs = safe_files.read_text(common, "info/exclude") or ""
    except (OSError, safe_files.UnsafePath) as e:
        # the clone then shows those files as untracked: the safe side (seen as work)
        output.warn(f"{ctx.name}: the repository's info/exclude is not copied into the clone: {e}")
        theirs = ""
    lines = theirs.splitlines()
    if f"/{envfile.ENV_FILE}" not in lines:
        lines.append(f"/{envfile.ENV_FILE}")
    text = EXCLUDE_HEADER + "\n".join(lines) + "\n"
    if safe_files.read_text(ctx.path, ".git/info/exclude") != text:
        safe_files.write_atomic(ctx.path, ".git/info/exclude", text, mode=0o644, dir_mode=0o755)
    excludes = git.local_config_path(ctx.project.root, "core.excludesFile")
    if excludes is not None:
        absolute = str((ctx.project.root / excludes).resolve()) if not Path(excludes).is_absolute() else excludes
        if git.local_config_path(ctx.path, "core.excludesFile") != absolute:
            git.set_config(ctx.path, "core.excludesFile", absolute)


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
