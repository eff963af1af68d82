"""Proof that an environment finished its creation, kept where git keeps the
environment's own metadata (issue 11: after a crash and a lost state file,
only an environment that provably finished is adopted as ``ready``).

``lifecycle.create`` writes ``hybridiso-ready`` as its very last step (after
the checkout, includes, env file, setup and start), like pre-commit's
"installed" marker: a run killed at any point before leaves none.  It lives
in the environment's git dir, never in its working tree (``git status`` never
sees it): a clone's ``<env>/.git/``, a linked worktree's
``<common>/worktrees/<id>/`` (the entry whose ``gitdir`` names
``<env>/.git``).  Removing the environment removes it with that dir, so a
later half-made environment at the same path cannot inherit it.  Read and
written through safe_files: a symlink there is never followed.
"""
from __future__ import annotations

from pathlib import Path

from hybridiso import safe_files

MARKER = "hybridiso-ready"


def _content(name: str, path: Path) -> str:
    return f"agent={name}\npath={path}\n"


def worktree_admin_dirs(common_dir: Path) -> dict[Path, str]:
    """``<env path>`` -> ``worktrees/<id>`` (relative to the common dir) for
    every linked worktree git keeps metadata for: one directory listing."""
    found: dict[Path, str] = {}
    try:
        ids = [p.name for p in (common_dir / "worktrees").iterdir()]
    except OSError:
        return found
    for wid in ids:
        env = _named_by(common_dir, wid)
        if env is not None:
            found[env] = f"worktrees/{wid}"
    return found


def _admin_of(common_dir: Path, path: Path) -> str | None:
    """``worktrees/<id>`` of the linked worktree at ``path``: named by its
    ``.git`` file, and only if that entry's ``gitdir`` names ``path`` back
    (a ``.git`` file pointing elsewhere is not believed).  O(1), so ``up``
    asks it per agent without listing every worktree."""
    try:
        link = safe_files.read_text(path, ".git", limit=4096)
    except (OSError, safe_files.UnsafePath):
        return None
    if not link or not link.startswith("gitdir: "):
        return None
    target = Path(link.removeprefix("gitdir: ").strip())
    if not target.is_absolute():  # worktree.useRelativePaths (git >= 2.48)
        target = path / target
    if target.resolve().parent != (common_dir / "worktrees").resolve():
        return None
    rel = f"worktrees/{target.name}"
    return rel if _named_by(common_dir, target.name) == path.resolve() else None


def _named_by(common_dir: Path, wid: str) -> Path | None:
    """The environment ``<common>/worktrees/<wid>/gitdir`` names."""
    if not safe_files.is_plain_dir(common_dir / "worktrees" / wid):
        return None
    try:
        gitdir = safe_files.read_text(common_dir, f"worktrees/{wid}/gitdir", limit=4096)
    except (OSError, safe_files.UnsafePath):
        return None
    target = Path(gitdir.strip()) if gitdir else None
    if target is None or target.name != ".git":
        return None
    if not target.is_absolute():
        target = common_dir / "worktrees" / wid / target
    return target.parent.resolve()


def _where(common_dir: Path, path: Path, admin: dict[Path, str] | None) -> tuple[Path, str] | None:
    """(anchor, relative path) of the marker of the environment at ``path``."""
    if safe_files.is_plain_dir(path / ".git"):
        return path, f".git/{MARKER}"  # a clone: its own git dir
    rel = admin.get(path.resolve()) if admin is not None else _admin_of(common_dir, path)
    return (common_dir, f"{rel}/{MARKER}") if rel else None


def mark(common_dir: Path, path: Path, name: str) -> None:
    where = _where(common_dir, path, None)
    if where is not None:
        safe_files.write_atomic(*where, _content(name, path), mode=0o644, dir_mode=0o755)


def is_marked(common_dir: Path, path: Path, name: str, admin: dict[Path, str] | None = None) -> bool:
    """True when the environment at ``path`` carries the marker of agent
    ``name`` at that path (one copied from elsewhere does not count)."""
    where = _where(common_dir, path, admin)
    if where is None:
        return False
    try:
        return safe_files.read_text(*where) == _content(name, path)
    except (OSError, safe_files.UnsafePath):
        return False
