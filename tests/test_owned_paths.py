"""hybridiso acts only on what its records own (issue 11, "Paths").

docs/faults.md row 28 (another tool's worktree whose path is briefly missing is
never pruned nor advised for removal), 29 (gc removes only directories it can
prove it made), 30 (a record whose path lies outside the workspace is refused
before anything is touched), 31 (includes never write through a symlink).
Each fault is made for real and the test compares what must survive before
and after.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from hybridiso.gc.rules import ORPHAN, ZOMBIE
from tests.support.cli import hybridiso, state, status_json, write_manifest
from tests.support.gitrepo import commit_file, git, make_repo


def tree(path: Path) -> dict[str, str]:
    """Every file under ``path`` (symlinks as their target), for before/after."""
    found: dict[str, str] = {}
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            p = Path(root, name)
            rel = str(p.relative_to(path))
            if p.is_symlink():
                found[rel] = "-> " + os.readlink(p)
            elif p.is_file():
                found[rel] = p.read_bytes().hex()
            elif p.is_dir():
                found[rel] = "/"
    return found


def refs(repo: Path) -> str:
    return git(repo, "for-each-ref", "--format=%(refname) %(objectname)")


# --- docs/faults.md row 28: a user's worktree whose directory is briefly missing -----------------


def test_users_worktree_on_an_unmounted_disk_keeps_its_metadata(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"README.md": "hello\n"})
    write_manifest(repo, "agents:\n  - name: a\n  - name: b\n  - name: c\n")
    hybridiso(repo, "up")
    ws = tmp_path / "repo.agents"
    # the user's own worktree, with a commit only its detached HEAD holds and a staged file
    mine = tmp_path / "disk" / "mine"
    git(repo, "worktree", "add", "-q", "--detach", str(mine))
    detached = commit_file(mine, "only-here.txt", "detached work\n")
    (mine / "staged.txt").write_text("staged\n")
    git(mine, "add", "staged.txt")
    meta = Path(git(mine, "rev-parse", "--absolute-git-dir"))
    meta_before = tree(meta)
    # the disk is unmounted: the directory is gone for a while
    os.rename(tmp_path / "disk", tmp_path / "disk.unmounted")
    assert "prunable" in git(repo, "worktree", "list", "--porcelain")

    status = hybridiso(repo, "status")
    assert str(mine) not in status.stderr + status.stdout  # never advised for removal
    doctor = {c["name"]: c for c in json.loads(hybridiso(repo, "doctor", "--json", ok=None).stdout)}
    assert doctor["prunable worktrees"]["status"] == "ok", doctor["prunable worktrees"]
    dry = json.loads(hybridiso(repo, "gc", "--json").stdout)
    assert str(mine) not in json.dumps(dry)
    hybridiso(repo, "gc", "--yes")
    hybridiso(repo, "down", "a")  # a removal
    # a creation killed half-way (its record says creating, its checkout is
    # gone): the next `up` rolls it back and creates it again
    path = repo / ".git" / "hybridiso" / "state.json"
    data = json.loads(path.read_text())
    data["agents"]["b"]["phase"] = "creating"
    path.write_text(json.dumps(data))
    shutil.rmtree(ws / "b")
    recreated = hybridiso(repo, "up")
    assert "b worktree  Created" in recreated.stderr and (ws / "b" / "README.md").is_file()
    shutil.rmtree(ws / "c")
    hybridiso(repo, "gc", "--yes")  # c is a zombie of ours: its own entry goes, nobody else's
    assert "c" not in state(repo)["agents"]

    assert tree(meta) == meta_before  # metadata, index and HEAD untouched
    os.rename(tmp_path / "disk.unmounted", tmp_path / "disk")  # mounted again
    assert git(mine, "rev-parse", "HEAD") == detached
    assert git(mine, "status", "--porcelain") == "A  staged.txt"
    assert (mine / "only-here.txt").read_text() == "detached work\n"
    listed = git(repo, "worktree", "list", "--porcelain")
    assert f"worktree {mine}" in listed and f"worktree {ws / 'c'}\n" not in listed  # c's zombie went alone


def test_a_zombie_of_ours_is_cleared_alone(tmp_path: Path) -> None:
    """An agent's metadata (state lost, directory deleted) is ours and goes;
    a user's zombie beside it in another place stays."""
    repo = make_repo(tmp_path / "repo")
    write_manifest(repo, "agents:\n  - name: a\n")
    hybridiso(repo, "up")
    git(repo, "worktree", "add", "-q", str(tmp_path / "users"), "-b", "users")
    shutil.rmtree(tmp_path / "users")
    shutil.rmtree(tmp_path / "repo.agents" / "a")
    (repo / ".git" / "hybridiso" / "state.json").unlink()
    status = hybridiso(repo, "status")
    assert str(tmp_path / "users") not in status.stderr
    data = json.loads(hybridiso(repo, "gc", "--yes", "--json").stdout)
    assert [f["target"] for f in data["findings"] if f["kind"] == ZOMBIE] == [str(tmp_path / "repo.agents" / "a")]
    listed = git(repo, "worktree", "list", "--porcelain")
    assert f"worktree {tmp_path / 'users'}" in listed and str(tmp_path / "repo.agents" / "a") not in listed


def test_an_edited_gitdir_never_makes_a_users_worktree_ours(tmp_path: Path) -> None:
    """Whoever can write the common dir (a container agent, today) can make a
    user's worktree entry name an agent's path: two entries then claim it,
    and hybridiso removes neither rather than guess."""
    repo = make_repo(tmp_path / "repo")
    write_manifest(repo, "agents:\n  - name: a\n")
    hybridiso(repo, "up")
    mine = tmp_path / "mine"
    git(repo, "worktree", "add", "-q", "--detach", str(mine))
    detached = commit_file(mine, "only-here.txt", "detached work\n")
    meta = Path(git(mine, "rev-parse", "--absolute-git-dir"))
    real = (meta / "gitdir").read_text()
    (meta / "gitdir").write_text(str(tmp_path / "repo.agents" / "a" / ".git") + "\n")
    for args in (("down", "a"), ("down", "a", "--force")):
        r = hybridiso(repo, *args, ok=False)
        assert r.returncode == 1 and "will not guess" in r.stderr and str(meta / "gitdir") in r.stderr, r.stderr
    assert (tmp_path / "repo.agents" / "a" / "README.md").is_file()  # nothing touched
    assert meta.is_dir() and (meta / "HEAD").read_text().strip() == detached
    (meta / "gitdir").write_text(real)
    assert git(mine, "rev-parse", "HEAD") == detached
    hybridiso(repo, "down", "a")  # once the file is right again, down goes ahead
    assert git(mine, "rev-parse", "HEAD") == detached and not (tmp_path / "repo.agents" / "a").exists()


# --- docs/faults.md row 29: gc removes only what it can prove it made ------------------------------


def test_gc_keeps_unmarked_directories_and_clones_in_the_workspace(tmp_path: Path) -> None:
    upstream = tmp_path / "upstream.git"
    repo = make_repo(tmp_path / "repo", {"README.md": "hello\n"})
    git(tmp_path, "clone", "-q", "--bare", str(repo), str(upstream))
    git(repo, "remote", "add", "origin", str(upstream))
    git(repo, "fetch", "-q", "origin")
    write_manifest(repo, "agents:\n  - name: keep\n  - {name: gone, isolation: clone}\n  - {name: gonework, isolation: clone}\n")
    hybridiso(repo, "up")
    ws = tmp_path / "repo.agents"
    commit_file(ws / "gonework", "w.txt", "unpushed\n")
    # the user's own things in the same directory
    (ws / "empty").mkdir()
    (ws / "notes").mkdir()
    (ws / "notes" / "todo.md").write_text("mine\n")
    git(ws, "clone", "-q", str(upstream), "clean-clone")  # clean, all on its remote: still the user's
    git(ws, "clone", "-q", str(upstream), "foreign")
    (ws / "foreign" / ".hybridiso.env").write_text("HYBRIDISO_PROJECT=0123456789ab\nHYBRIDISO_AGENT=foreign\n")
    git(ws, "clone", "-q", str(upstream), "renamed")  # our mark, but for another name
    mark = (ws / "keep" / ".hybridiso.env").read_text()
    (ws / "renamed" / ".hybridiso.env").write_text(mark)
    (ws / "linked").symlink_to(ws / "notes")
    users = {n: tree(ws / n) for n in ("empty", "notes", "clean-clone", "foreign", "renamed")}
    # the agents `gone` and `gonework` leave the manifest and the state file
    write_manifest(repo, "agents:\n  - name: keep\n")
    path = repo / ".git" / "hybridiso" / "state.json"
    data = json.loads(path.read_text())
    for name in ("gone", "gonework"):
        del data["agents"][name]
    path.write_text(json.dumps(data))

    found = json.loads(hybridiso(repo, "gc", "--yes", "--json").stdout)
    by_name = {Path(f["target"]).name: f for f in found["findings"] if f["kind"] == ORPHAN}
    assert by_name["gone"]["result"] == "removed" and not (ws / "gone").exists()  # ours, marked, clean
    assert by_name["gonework"]["action"] == "keep" and "branch hybridiso/gonework (1 commit)" in by_name["gonework"]["reason"]  # down's inventory
    for name, files in users.items():
        assert by_name[name]["action"] == "keep", by_name[name]
        assert "not made by hybridiso" in by_name[name]["reason"]
        assert tree(ws / name) == files
    assert "linked" not in by_name and (ws / "linked").is_symlink()
    assert (ws / "keep").is_dir() and (ws / "gonework" / "w.txt").is_file()


def test_marker_is_private_and_names_the_project(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    # env: cannot forge the mark: such keys are a manifest error, nothing is made
    write_manifest(repo, "agents:\n  - name: a\n    env: {HYBRIDISO_PROJECT: forged, HYBRIDISO_AGENT: other}\n")
    refused = hybridiso(repo, "up", ok=False)
    assert refused.returncode == 1 and "HYBRIDISO_PROJECT" in refused.stderr and "hybridiso's own" in refused.stderr
    assert not (tmp_path / "repo.agents" / "a").exists()
    write_manifest(repo, "agents:\n  - name: a\n    env: {OTHER: x}\n")
    hybridiso(repo, "up")
    env_file = tmp_path / "repo.agents" / "a" / ".hybridiso.env"
    assert env_file.stat().st_mode & 0o777 == 0o600
    from hybridiso.project import load_project

    lines = env_file.read_text().splitlines()
    assert f"HYBRIDISO_PROJECT={load_project(repo).id}" in lines and "HYBRIDISO_AGENT=a" in lines
    out = hybridiso(repo, "exec", "a", "--", "sh", "-c", "echo $HYBRIDISO_PROJECT").stdout.strip()
    assert out == load_project(repo).id


# --- docs/faults.md row 30: records whose path is not the agent's place ------------------------------


@pytest.mark.parametrize("victim", ["outside", "repository", "symlink", "dotdot"])
def test_a_record_pointing_elsewhere_is_refused_before_anything_is_touched(tmp_path: Path, victim: str) -> None:
    repo = make_repo(tmp_path / "repo", {"README.md": "hello\n"})
    write_manifest(repo, "agents:\n  - name: a\n  - name: b\n")
    hybridiso(repo, "up")
    ws = tmp_path / "repo.agents"
    target = tmp_path / "victim"
    make_repo(target, {"precious.txt": "the user's\n"})
    path = repo / ".git" / "hybridiso" / "state.json"
    data = json.loads(path.read_text())
    if victim == "outside":
        data["agents"]["a"]["path"] = str(target)
    elif victim == "repository":
        data["agents"]["a"]["path"] = str(repo)
    elif victim == "symlink":  # the record is right, but its place is now a symlink
        shutil.rmtree(ws / "a")
        (ws / "a").symlink_to(target)
    else:
        data["agents"]["a"]["path"] = str(ws / ".." / "victim")
    path.write_text(json.dumps(data))
    before = {"victim": tree(target), "repo": tree(repo), "b": tree(ws / "b"), "refs": refs(repo), "state": path.read_text()}

    for args in (("down",), ("down", "a", "--force"), ("gc", "--yes"), ("up",), ("sync",), ("exec", "a", "--", "touch", "x"), ("report",), ("down", "b", "a")):
        r = hybridiso(repo, *args, ok=False)
        assert r.returncode == 1 and "refusing to act on 1 record" in r.stderr and "agent a:" in r.stderr, (args, r.stderr)
        assert "nothing was touched" in r.stderr and "next step:" in r.stderr
    rows = status_json(repo)  # status shows it, and goes on
    assert rows["a"]["state"] == "refused" and "will not act on this record" in rows["a"]["problems"][0]
    assert rows["b"]["state"] == "ready"
    after = {"victim": tree(target), "repo": tree(repo), "b": tree(ws / "b"), "refs": refs(repo), "state": path.read_text()}
    assert after == before
    # the way out the message names: the records are rebuilt from git
    os.replace(path, str(path) + ".bad")
    rows = status_json(repo)
    assert rows["b"]["state"] == "ready" and rows["a"]["path"] == str(ws / "a")
    assert tree(target) == before["victim"]


def test_a_record_whose_name_differs_from_its_key_is_refused(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    write_manifest(repo, "agents:\n  - name: a\n  - name: b\n")
    hybridiso(repo, "up")
    path = repo / ".git" / "hybridiso" / "state.json"
    data = json.loads(path.read_text())
    data["agents"]["a"]["name"] = "b"  # `a`'s record would act on b's place
    data["agents"]["a"]["path"] = data["agents"]["b"]["path"]
    path.write_text(json.dumps(data))
    # such a file is not trusted at all: set aside (kept for the user) and
    # rebuilt from git, so `down a` removes a's own place and never b's
    r = hybridiso(repo, "down", "--force", "a")
    assert "record 'a' is named 'b'" in r.stderr and "rebuilt from git" in r.stderr
    assert list(path.parent.glob("state.json.corrupt-*")), "the tampered file is kept for the user"
    assert not (tmp_path / "repo.agents" / "a").exists()
    assert (tmp_path / "repo.agents" / "b").is_dir()
    assert "b" in hybridiso(repo, "status", "--json").stdout


# --- docs/faults.md row 31: includes never write through a symlink ------------------------------------


def include_repo(tmp_path: Path, tracked: dict[str, str | Path], isolation: str = "worktree") -> tuple[Path, Path]:
    """``main`` ignores ``.env`` and ``config/``; the branch ``feature`` tracks
    ``tracked`` (a Path value is a symlink to it)."""
    repo = make_repo(tmp_path / "repo", {"README.md": "hello\n", ".gitignore": ".env\nconfig/\n"})
    (repo / ".env").write_text("SECRET=main-checkout\n")
    (repo / "config").mkdir()
    (repo / "config" / "local.json").write_text('{"secret": true}\n')
    git(repo, "switch", "-q", "-c", "feature")
    for name, what in tracked.items():
        p = repo / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()
        if isinstance(what, Path):
            p.symlink_to(what)
        else:
            p.write_text(what)
        git(repo, "add", "-f", name)
    git(repo, "commit", "-q", "-m", "the branch tracks what main ignores")
    git(repo, "switch", "-q", "main")
    for name in tracked:  # main's own ignored files again
        p = repo / name
        if p.is_symlink() or p.is_file():
            p.unlink()
    (repo / ".env").write_text("SECRET=main-checkout\n")
    (repo / "config").mkdir(exist_ok=True)
    (repo / "config" / "local.json").write_text('{"secret": true}\n')
    write_manifest(repo, f'agents:\n  - {{name: a, branch: feature, isolation: {isolation}}}\ndefaults: {{include: [".env", "config/local.json"]}}\n')
    return repo, tmp_path / "repo.agents" / "a"


@pytest.mark.parametrize("isolation", ["worktree", "clone"])
def test_include_onto_a_tracked_symlink_is_refused(tmp_path: Path, isolation: str) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("someone else's file\n")
    repo, env = include_repo(tmp_path, {".env": outside}, isolation)
    r = hybridiso(repo, "up", ok=False)
    assert r.returncode == 1 and f"{env / '.env'} is a symlink" in r.stderr and "never writes through" in r.stderr, r.stderr
    assert outside.read_text() == "someone else's file\n"
    assert "SECRET" not in outside.read_text()


@pytest.mark.parametrize("isolation", ["worktree", "clone"])
def test_include_under_a_symlinked_parent_is_refused(tmp_path: Path, isolation: str) -> None:
    outside = tmp_path / "outside-dir"
    outside.mkdir()
    (outside / "keep.txt").write_text("theirs\n")
    repo, env = include_repo(tmp_path, {"config": outside}, isolation)
    before = tree(outside)
    r = hybridiso(repo, "up", ok=False)
    assert r.returncode == 1 and f"{env / 'config'} is a symlink" in r.stderr, r.stderr
    assert tree(outside) == before and not (outside / "local.json").exists()


def test_include_the_branch_already_tracks_is_kept_and_said(tmp_path: Path) -> None:
    repo, env = include_repo(tmp_path, {".env": "SECRET=the-branch-own\n"})
    up = hybridiso(repo, "up")
    assert "include .env was not copied: the branch has its own file there" in up.stderr
    assert (env / ".env").read_text() == "SECRET=the-branch-own\n"
    assert (env / "config" / "local.json").read_text() == '{"secret": true}\n'  # the other include still came
    assert git(env, "status", "--porcelain") == ""


def test_include_whose_parent_the_branch_has_as_a_file_is_kept_and_said(tmp_path: Path) -> None:
    repo, env = include_repo(tmp_path, {"config": "the branch's own config file\n"})
    up = hybridiso(repo, "up")
    assert "include config/local.json was not copied: the branch has its own file there" in up.stderr
    assert (env / "config").read_text() == "the branch's own config file\n"
    assert (env / ".env").read_text() == "SECRET=main-checkout\n"


def test_worktreeinclude_that_is_a_fifo_is_not_read(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {".gitignore": ".env\n"})
    (repo / ".env").write_text("X=1\n")
    os.mkfifo(repo / ".worktreeinclude")  # would block a reader forever
    write_manifest(repo, 'agents:\n  - name: a\ndefaults: {include: [".env"]}\n')
    hybridiso(repo, "up", timeout=60)
    assert (tmp_path / "repo.agents" / "a" / ".env").read_text() == "X=1\n"
