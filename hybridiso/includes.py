"""Copy gitignored files (``.env`` and friends) from the main worktree into an env.

Patterns come from the manifest's ``include:`` and from a ``.worktreeinclude``
file at the repository root, both in gitignore syntax.  Only files that git
ignores are copied: tracked files already arrive with the checkout.  Copies
are copy-on-write (``FICLONE``) where the filesystem allows.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from hybridiso import git

WORKTREEINCLUDE = ".worktreeinclude"
_FICLONE = 0x40049409


def patterns_for(root: Path, manifest_patterns: Sequence[str]) -> list[str]:
    patterns = list(manifest_patterns)
    f = root / WORKTREEINCLUDE
    if f.is_file():
        for line in f.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                patterns.append(line)
    return patterns


def ignored_files_matching(root: Path, patterns: Sequence[str]) -> list[str]:
    if not patterns:
        return []
    with tempfile.NamedTemporaryFile("w", suffix=".include", delete=False) as f:
        f.write("\n".join(patterns) + "\n")
        pattern_file = f.name
    try:
        matched = git.run(root, "ls-files", "-z", "--others", "--ignored", f"--exclude-from={pattern_file}").stdout
    finally:
        os.unlink(pattern_file)
    candidates = [p for p in matched.split("\0") if p]
    if not candidates:
        return []
    ignored = git.check_ignored(root, candidates)
    return sorted(p for p in candidates if p in ignored)


def copy_file(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_symlink():
        with contextlib.suppress(FileNotFoundError):
            dst.unlink()
        os.symlink(os.readlink(src), dst)
        return
    with src.open("rb") as fin, dst.open("wb") as fout:
        try:
            fcntl.ioctl(fout.fileno(), _FICLONE, fin.fileno())
        except OSError:
            shutil.copyfileobj(fin, fout, 1 << 20)
    shutil.copystat(src, dst)


def copy_includes(root: Path, env_path: Path, manifest_patterns: Sequence[str]) -> list[str]:
    """Copy matching ignored files; return the relative paths copied."""
    files = ignored_files_matching(root, patterns_for(root, manifest_patterns))
    for rel in files:
        copy_file(root / rel, env_path / rel)
    return files
