"""``hybridiso init``: write a commented starter manifest for this repository."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from hybridiso import git, output, safe_files
from hybridiso.errors import UserError
from hybridiso.manifest import MANIFEST_NAME
from hybridiso.manifest_file import parse_manifest
from hybridiso.envs.programs import missing_programs
from hybridiso.project import find_repo

HELP = "write a commented starter hybridiso.yaml for this repository"

# lockfile -> the setup command that installs exactly what it pins
SETUP_FOR_LOCKFILE = (
    ("package-lock.json", "npm ci"),
    ("pnpm-lock.yaml", "pnpm install --frozen-lockfile"),
    ("yarn.lock", "yarn install --frozen-lockfile"),
    ("bun.lockb", "bun install --frozen-lockfile"),
    ("uv.lock", "uv sync --frozen"),
    ("poetry.lock", "poetry install --no-root"),
    ("Pipfile.lock", "pipenv sync"),
    ("requirements.txt", "python -m pip install -r requirements.txt"),
    ("Cargo.lock", "cargo fetch"),
    ("go.sum", "go mod download"),
    ("Gemfile.lock", "bundle install"),
    ("composer.lock", "composer install"),
)
INCLUDE_CANDIDATES = (".env", ".env.local", ".envrc")
NPM_DEFAULT_TEST = 'echo "Error: no test specified" && exit 1'


def land_checks(root: Path) -> list[str]:
    """The test commands this repository shows (for ``land.check``), the
    project's own entry point first: make test, npm test, cargo test, go
    test, pytest."""
    import json
    import re

    found = []
    for name in ("Makefile", "makefile", "GNUmakefile"):
        text = _read(root / name)
        if text is not None and re.search(r"^test\s*:", text, re.M):
            found.append("make test")
            break
    package = _read(root / "package.json")
    if package is not None:
        try:
            test = json.loads(package).get("scripts", {}).get("test")
        except (ValueError, AttributeError):
            test = None
        if isinstance(test, str) and test.strip() and test.strip() != NPM_DEFAULT_TEST:
            found.append("npm test")
    if (root / "Cargo.toml").is_file():
        found.append("cargo test")
    if (root / "go.mod").is_file():
        found.append("go test ./...")
    pyproject = _read(root / "pyproject.toml") or ""
    if "[tool.pytest" in pyproject or (root / "pytest.ini").is_file() or (root / "conftest.py").is_file() or "[pytest]" in (_read(root / "tox.ini") or "") or "[tool:pytest]" in (_read(root / "setup.cfg") or ""):
        found.append("pytest -q")
    return found


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace") if path.is_file() else None
    except OSError:
        return None


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("init", help=HELP, description=HELP + " (setup commands proposed from its lockfiles).")
    p.add_argument("--print", action="store_true", help="print the manifest instead of writing it")
    p.add_argument("--force", action="store_true", help="overwrite an existing hybridiso.yaml")


def _starter(root: Path) -> tuple[str, list[tuple[str, str]]]:
    """The manifest text, and the (setup command, missing program) pairs
    it leaves commented out."""
    proposed = [cmd for lock, cmd in SETUP_FOR_LOCKFILE if (root / lock).is_file()]
    # docs/faults.md row 40: propose only what can run here; a command whose program is
    # missing is written as a comment that says so
    setup, missing = [], []
    for cmd in proposed:
        gone = missing_programs("", [cmd], {})
        if gone:
            missing.append((cmd, gone[0].program))
        else:
            setup.append(cmd)
    # land.check: the first test command found whose program is here; the
    # others found are shown as comments (with why, when missing)
    land_check: list[str] = []
    land_missing: list[tuple[str, str]] = []
    for cmd in land_checks(root):
        gone = missing_programs("", [cmd], {})
        if gone:
            land_missing.append((cmd, gone[0].program))
            missing.append((cmd, gone[0].program))
        elif not land_check:
            land_check.append(cmd)
    include = [name for name in INCLUDE_CANDIDATES if (root / name).exists() and git.check_ignored(root, [name])]
    base = git.current_branch(root) or "main"
    from hybridiso.render import render_template  # Jinja2 only when writing

    text = render_template(
        "hybridiso.yaml.j2", base=base, setup=setup, setup_missing=[m for m in missing if m not in land_missing], include=include,
        repo_name=root.name, land_check=land_check, land_missing=land_missing,
    )
    parse_manifest(text, root / MANIFEST_NAME)  # what we write must load
    return text, missing


def run(args: argparse.Namespace) -> int:
    repo = find_repo(Path(args.directory).resolve())
    # the main worktree's root, or in a bare repository the worktree you stand in
    text, missing = _starter(repo.checkout)
    for command, program in missing:
        what = "the land check" if command in land_checks(repo.checkout) else "the setup command"
        output.warn(f"{program} is not installed here: {what} {command!r} is commented out; install {program}, then uncomment it")
    if args.print:
        sys.stdout.write(text)
        return 0
    target = repo.checkout / MANIFEST_NAME
    if os.path.lexists(target) and not args.force:
        raise UserError(f"{target} already exists", hint="edit it, or `hybridiso init --force` to replace it")
    # a file of its own, made beside and renamed over: a symlink (or FIFO)
    # there, committed by anyone, is replaced, never written through
    try:
        safe_files.write_atomic(repo.main_root, MANIFEST_NAME, text, mode=0o644)
    except OSError as e:
        raise UserError(f"cannot write {target}: {e.strerror}") from None
    output.message(f"wrote {target}; next: `hybridiso plan`, then `hybridiso up`")
    return 0
