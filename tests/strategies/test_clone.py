"""The clone strategy on real repositories: what the repository ignores, the
clone ignores (issue 11), and a workspace on another file system (docs/faults.md row 36:
a real tmpfs mounted for it) falls back to copying objects and says so.
"""
from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import hybridiso, state, status_json, write_manifest
from tests.support.gitrepo import commit_file, git, git_ok, make_repo
from tests.support import needs
from tests.gc.test_gc import env, gc_json, make_project
from tests.commands.test_sync import sync_rows, upstream_commit


def _ignored_by_the_repository_only(repo: Path) -> None:
    """Files ignored through the repository's own git dir and config, not
    through a tracked .gitignore the clone would check out anyway."""
    with (repo / ".git" / "info" / "exclude").open("a") as f:
        f.write(".env\nsecrets/\n")
    (Path.home() / "repo-ignores").write_text("*.local\n")
    git(repo, "config", "core.excludesFile", "~/repo-ignores")  # in the repository's own config only
    (repo / ".env").write_text("TOKEN=1\n")
    (repo / "secrets").mkdir()
    (repo / "secrets" / "key.pem").write_text("key\n")
    (repo / "db.local").write_text("local\n")


@pytest.mark.parametrize("via", ["include", "worktreeinclude"])
def test_clone_ignores_what_the_repository_ignores(tmp_path: Path, via: str) -> None:
    repo = make_project(tmp_path, "  - name: cl\n    isolation: clone\n  - name: wt\n")
    _ignored_by_the_repository_only(repo)
    patterns = [".env", "secrets/", "*.local"]
    if via == "include":
        (repo / "hybridiso.yaml").write_text(
            (repo / "hybridiso.yaml").read_text().replace("agents:\n", f"defaults:\n  include: {json.dumps(patterns)}\nagents:\n")
        )
    else:
        (repo / ".worktreeinclude").write_text("\n".join(patterns) + "\n")
        git(repo, "add", ".worktreeinclude")
    git(repo, "commit", "-q", "-am", "includes")
    git(repo, "push", "-q", "origin", "main")
    hybridiso(repo, "up")
    clone = env(repo, "cl")
    for rel in (".env", "secrets/key.pem", "db.local"):
        assert (clone / rel).exists(), rel  # copied in
    assert git(clone, "status", "--porcelain", "--untracked-files=all") == ""  # and not "dirty"
    assert git_ok(clone, "check-ignore", "-q", ".env")
    rows = status_json(repo)
    assert rows["cl"]["dirty"] == rows["wt"]["dirty"] == 0, rows
    # sync does not skip it, gc does not keep it for "changes", down removes it
    upstream_commit(tmp_path, "up.txt", "up\n")
    srows, _ = sync_rows(repo)
    assert srows["cl"]["result"] == "rebased", srows["cl"]
    finding = gc_json(repo)["by_target"]["cl"]
    assert "modified" not in finding["reason"] and "untracked" not in finding["reason"], finding
    hybridiso(repo, "down", "cl")
    assert not clone.exists()


def test_an_include_the_agent_changed_is_still_work_in_a_clone(tmp_path: Path) -> None:
    """Ignoring them must not hide them: an edited include is still precious."""
    repo = make_project(tmp_path, "  - name: cl\n    isolation: clone\n")
    _ignored_by_the_repository_only(repo)
    (repo / "hybridiso.yaml").write_text((repo / "hybridiso.yaml").read_text().replace("agents:\n", "defaults:\n  include: ['.env']\nagents:\n"))
    git(repo, "commit", "-q", "-am", "includes")
    hybridiso(repo, "up")
    (env(repo, "cl") / ".env").write_text("TOKEN=changed by the agent\n")
    r = hybridiso(repo, "down", ok=False)
    assert r.returncode == 1 and "ignored but precious: .env" in r.stderr
    assert (env(repo, "cl") / ".env").read_text() == "TOKEN=changed by the agent\n"


def test_sync_gives_an_older_clone_the_repositorys_ignore_rules(tmp_path: Path) -> None:
    """A clone made before (or the rules changed since): sync refreshes them
    before it judges the clone dirty, and never writes through a symlink."""
    repo = make_project(tmp_path, "  - name: cl\n    isolation: clone\n")
    hybridiso(repo, "up")
    clone = env(repo, "cl")
    with (repo / ".git" / "info" / "exclude").open("a") as f:
        f.write("build/\n")
    (clone / "build").mkdir()
    (clone / "build" / "out.o").write_text("obj\n")
    upstream_commit(tmp_path, "up.txt", "up\n")
    rows, _ = sync_rows(repo)
    assert rows["cl"]["result"] == "rebased", rows["cl"]
    assert "build/" in (clone / ".git" / "info" / "exclude").read_text()
    # an agent that swaps the file for a symlink gets a refusal, nothing written there
    victim = tmp_path / "victim.txt"
    victim.write_text("untouched\n")
    (clone / ".git" / "info" / "exclude").unlink()
    (clone / ".git" / "info" / "exclude").symlink_to(victim)
    rows, err = sync_rows(repo, ok=False)
    assert rows["cl"]["result"] == "failed" and "symlink" in rows["cl"]["detail"]
    assert victim.read_text() == "untouched\n"


# --- docs/faults.md row 36: the workspace on another file system -------------------------------


@pytest.fixture
def other_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of its own: hard links from the repository cannot reach it."""
    mnt = tmp_path / "other-fs"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        needs.cannot_run(f"cannot mount a tmpfs (needs root): {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_clone_across_file_systems_copies_objects_and_says_so(tmp_path: Path, other_filesystem: Path) -> None:
    repo = make_repo(tmp_path / "r", {f"f{i}.txt": f"{i}\n" for i in range(10)})
    commit_file(repo, "more.txt", "more\n")
    git(repo, "gc", "-q")  # a pack to hard-link (or not)
    assert os.stat(repo).st_dev != os.stat(other_filesystem).st_dev
    workspace = other_filesystem / "agents"
    write_manifest(repo, f"workspace: {workspace}\nagents:\n  - {{name: far, isolation: clone}}\n  - {{name: near, isolation: clone}}\n")
    # git's own --local refuses here: the failure the fallback exists for
    probe = subprocess.run(["git", "clone", "-q", "--local", "--no-checkout", str(repo), str(other_filesystem / "probe")], capture_output=True, text=True)
    assert probe.returncode != 0 and "Invalid cross-device link" in probe.stderr
    r = hybridiso(repo, "up", "far")
    assert "objects copied, not hard-linked: the workspace is on another file system" in r.stderr, r.stderr
    far = workspace / "far"
    assert git(far, "log", "--format=%s", "-1") == "change more.txt"
    assert git(far, "fsck", "--no-progress") == ""  # a whole, independent repository
    packs = list((far / ".git" / "objects" / "pack").glob("*.pack"))
    assert packs and all(os.stat(p).st_nlink == 1 for p in packs)
    assert not (far / ".git" / "objects" / "info" / "alternates").exists()
    assert state(repo)["agents"]["far"]["clone_objects"] == "copied"
    rows = json.loads(hybridiso(repo, "up", "--json").stdout)
    assert {o["name"]: o["action"] for o in rows} == {"far": "Up to date", "near": "Created"}
    # the clone works like any other: commit, down refuses, --keep-branch brings it home
    commit_file(far, "work.txt", "agent work\n")
    assert "commits not in base" in hybridiso(repo, "down", "far", ok=False).stderr
    hybridiso(repo, "down", "far", "--keep-branch")
    assert git(repo, "show", "hybridiso/far:work.txt") == "agent work"


def test_clone_on_the_same_file_system_is_hard_linked_and_recorded(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r", {"a.txt": "a\n"})
    git(repo, "gc", "-q")
    write_manifest(repo, "agents:\n  - {name: cl, isolation: clone}\n")
    r = hybridiso(repo, "up")
    assert "objects copied" not in r.stderr
    assert state(repo)["agents"]["cl"]["clone_objects"] == "hard-linked"
    packs = list((tmp_path / "r.agents" / "cl" / ".git" / "objects" / "pack").glob("*.pack"))
    assert packs and all(os.stat(p).st_nlink > 1 for p in packs)


def test_clone_into_a_bind_mount_of_the_same_file_system_retries_with_copies(tmp_path: Path) -> None:
    """Same device, other mount: link() still says EXDEV, which git's --local
    turns into a failure; the clone is retried with copied objects."""
    repo = make_repo(tmp_path / "r", {"a.txt": "a\n"})
    git(repo, "gc", "-q")
    (tmp_path / "real-ws").mkdir()
    mnt = tmp_path / "bound-ws"
    mnt.mkdir()
    r = subprocess.run(["mount", "--bind", str(tmp_path / "real-ws"), str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        needs.cannot_run(f"cannot bind-mount (needs root): {r.stderr.strip()}")
    try:
        assert os.stat(mnt).st_dev == os.stat(repo).st_dev
        write_manifest(repo, f"workspace: {mnt}\nagents:\n  - {{name: cl, isolation: clone}}\n")
        r = hybridiso(repo, "up")
        assert "objects copied, not hard-linked" in r.stderr
        assert state(repo)["agents"]["cl"]["clone_objects"] == "copied"
        assert git(mnt / "cl", "status", "--porcelain") == "" and (mnt / "cl" / "a.txt").read_text() == "a\n"
        hybridiso(repo, "down")
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
