"""``up`` converging environments that reality changed under it (issue 11).

docs/faults.md row 7 (an environment's directory deleted by hand: made again, its
branch still hybridiso's, never git's raw "a branch named ... already
exists"), #2 (branches), and from "Bad input": a directory in one agent's way
stops that agent only.  Branches start where git worktree add would start
them: `branch: feature` that only origin has tracks origin/feature;
`branch: origin/feature` is refused before anything is made.
"""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.cli import hybridiso, state, status_json, write_manifest
from tests.support.gitrepo import commit_file, git, make_repo
from tests.gc.test_gc import env, make_project


def _branches(repo: Path) -> dict[str, str]:
    out = git(repo, "for-each-ref", "--format=%(refname) %(objectname)", "refs/heads/")
    return dict(line.split() for line in out.splitlines())


# --- docs/faults.md row 7: a directory deleted by hand ----------------------------------------


@pytest.mark.parametrize("isolation", ["worktree", "clone"])
def test_up_after_the_directory_was_deleted_makes_it_again_on_its_own_branch(tmp_path: Path, isolation: str) -> None:
    repo = make_repo(tmp_path / "r")
    write_manifest(repo, f"agents:\n  - {{name: a, isolation: {isolation}}}\n  - name: b\n")
    hybridiso(repo, "up")
    a = tmp_path / "r.agents" / "a"
    if isolation == "worktree":
        work = commit_file(a, "work.txt", "agent work\n", "agent work")  # lives on in the repository's branch
    fork = state(repo)["agents"]["a"]["base_commit"]
    commit_file(repo, "later.txt", "base moved on\n")  # base is elsewhere now
    shutil.rmtree(a)
    r = hybridiso(repo, "up")  # once, not "fails once, then works"
    assert "its directory" in r.stderr and "is gone; creating it again" in r.stderr
    assert "already exists" not in r.stderr
    assert status_json(repo)["a"]["state"] == "ready"
    rec = state(repo)["agents"]["a"]
    if isolation == "worktree":
        # the same branch with the same commits, still hybridiso's, forking where it did
        assert git(a, "rev-parse", "HEAD") == work and (a / "work.txt").read_text() == "agent work\n"
        assert rec["created_branch"] is True and rec["base_commit"] == fork
        # so down still knows the commits are the agent's, and removes the branch it made
        refused = hybridiso(repo, "down", "a", ok=False)
        assert "1 commits not in base: " in refused.stderr and "agent work" in refused.stderr
        r = hybridiso(repo, "down", "a", "--force")
        assert "work saved to refs/hybridiso/backup/a/" in r.stderr
        assert "refs/heads/hybridiso/a" not in _branches(repo)
    else:
        assert (a / "later.txt").exists()  # a clone's branch lived in the deleted clone: a fresh one from base
        hybridiso(repo, "down", "a")
    assert status_json(repo)["b"]["state"] == "ready"


def test_interrupted_re_creation_keeps_the_branch_hybridisos(tmp_path: Path) -> None:
    """kill -9 while an environment is made again: the rollback keeps its
    branch (it has commits) and the next up still owns it."""
    repo = make_repo(tmp_path / "r")
    marker = tmp_path / "setup-started"
    write_manifest(repo, "agents:\n  - name: a\n")
    hybridiso(repo, "up")
    a = tmp_path / "r.agents" / "a"
    work = commit_file(a, "work.txt", "agent work\n", "agent work")
    shutil.rmtree(a)
    write_manifest(repo, f"agents:\n  - name: a\n    setup: ['echo $$ > {marker}.tmp && mv {marker}.tmp {marker}; sleep 60']\n")
    proc = subprocess.Popen([sys.executable, "-m", "hybridiso", "up"], cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not marker.exists():
        assert time.time() < deadline and proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.05)
    proc.kill()
    proc.communicate()
    import os

    os.killpg(int(marker.read_text()), signal.SIGKILL)
    assert state(repo)["agents"]["a"]["phase"] == "creating"
    write_manifest(repo, "agents:\n  - name: a\n")
    hybridiso(repo, "up")
    rec = state(repo)["agents"]["a"]
    assert rec["phase"] == "ready" and rec["created_branch"] is True
    assert git(a, "rev-parse", "HEAD") == work


# --- a directory in one agent's way --------------------------------------------------


def test_a_directory_in_one_agents_way_stops_only_that_agent(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r")
    write_manifest(repo, "agents:\n  - name: a\n  - name: blocked\n  - {name: c, isolation: clone}\n")
    blocked = tmp_path / "r.agents" / "blocked"
    blocked.mkdir(parents=True)
    (blocked / "notes.txt").write_text("the user's own file\n")
    r = hybridiso(repo, "up", ok=False)
    assert r.returncode == 1
    assert "1 of 3 agents failed" in r.stderr
    assert f"blocked: {blocked} already exists and is not a hybridiso environment of agent blocked" in r.stderr
    assert "next step: move it away" in r.stderr
    rows = status_json(repo)
    assert rows["a"]["state"] == "ready" and rows["c"]["state"] == "ready"
    assert "blocked" not in state(repo)["agents"]
    assert (blocked / "notes.txt").read_text() == "the user's own file\n"  # untouched
    assert sorted(p.name for p in blocked.iterdir()) == ["notes.txt"]
    assert "refs/heads/hybridiso/blocked" not in _branches(repo)
    # a file is in the way too
    shutil.rmtree(blocked)
    blocked.write_text("a file\n")
    r = hybridiso(repo, "up", ok=False)
    assert "already exists and is not a hybridiso environment" in r.stderr and "1 of 3 agents failed" in r.stderr
    assert blocked.read_text() == "a file\n"
    blocked.unlink()
    hybridiso(repo, "up")
    assert status_json(repo)["blocked"]["state"] == "ready"


def test_json_of_a_partly_failed_up_lists_every_agent(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r")
    write_manifest(repo, "agents:\n  - name: a\n  - name: blocked\n")
    (tmp_path / "r.agents" / "blocked").mkdir(parents=True)
    (tmp_path / "r.agents" / "blocked" / "x").write_text("x\n")
    r = hybridiso(repo, "up", "--json", ok=False)
    rows = {o["name"]: o for o in json.loads(r.stdout)}
    assert rows["a"]["ok"] is True and rows["a"]["action"] == "Created"
    assert rows["blocked"]["ok"] is False and "already exists" in rows["blocked"]["error"]


# --- where a branch starts ---------------------------------------------------------


def _with_remote_feature(tmp_path: Path, agents: str) -> tuple[Path, str]:
    repo = make_project(tmp_path, agents)
    other = tmp_path / "other"
    git(tmp_path, "clone", "-q", str(tmp_path / "origin.git"), str(other))
    git(other, "switch", "-q", "-c", "feature")
    tip = commit_file(other, "feature.txt", "their feature\n", "their feature")
    git(other, "push", "-q", "origin", "feature")
    git(repo, "fetch", "-q", "origin")
    assert "refs/heads/feature" not in _branches(repo)
    return repo, tip


@pytest.mark.parametrize("isolation", ["worktree", "clone"])
def test_branch_that_only_origin_has_starts_from_it_and_tracks_it(tmp_path: Path, isolation: str) -> None:
    repo, tip = _with_remote_feature(tmp_path, f"  - {{name: f, branch: feature, isolation: {isolation}}}\n")
    hybridiso(repo, "up")
    f = env(repo, "f")
    assert git(f, "rev-parse", "HEAD") == tip and (f / "feature.txt").read_text() == "their feature\n"
    assert git(f, "rev-parse", "--abbrev-ref", "feature@{upstream}") == "origin/feature"
    rec = state(repo)["agents"]["f"]
    assert rec["track"] == "refs/remotes/origin/feature"
    assert rec["base_commit"] == git(repo, "merge-base", "main", tip)  # forks from base where feature did
    assert rec["created_branch"] is False  # like git worktree add, the local branch stays the user's
    if isolation == "worktree":
        assert _branches(repo)["refs/heads/feature"] == tip
        assert git(repo, "rev-parse", "--abbrev-ref", "feature@{upstream}") == "origin/feature"
    # the agent's own commit goes on top, and down keeps the user's branch
    commit_file(f, "mine.txt", "mine\n", "mine")
    hybridiso(repo, "down", "f", "--keep-branch")
    assert git(repo, "log", "--format=%s", "-2", "feature").splitlines() == ["mine", "their feature"]


def test_branch_on_two_remotes_is_refused_with_both_names(tmp_path: Path) -> None:
    repo, _ = _with_remote_feature(tmp_path, "  - {name: f, branch: feature}\n  - name: ok\n")
    git(repo, "remote", "add", "mirror", str(tmp_path / "origin.git"))
    git(repo, "fetch", "-q", "mirror")
    r = hybridiso(repo, "up", ok=False)
    assert "f: branch feature does not exist here, and 2 remotes have it (mirror/feature, origin/feature)" in r.stderr
    assert "checkout.defaultRemote" in r.stderr and "1 of 2 agents failed" in r.stderr
    assert status_json(repo)["ok"]["state"] == "ready" and "refs/heads/feature" not in _branches(repo)
    git(repo, "config", "checkout.defaultRemote", "mirror")
    hybridiso(repo, "up")
    assert git(repo, "rev-parse", "--abbrev-ref", "feature@{upstream}") == "mirror/feature"


def test_default_branch_never_starts_from_a_remote(tmp_path: Path) -> None:
    """An agent without `branch:` asked for a fresh branch: a pushed
    origin/hybridiso/a from earlier does not become its start."""
    repo = make_project(tmp_path, "  - name: a\n")
    hybridiso(repo, "up")
    commit_file(env(repo, "a"), "old.txt", "old work\n", "old work")
    git(env(repo, "a"), "push", "-q", "origin", "hybridiso/a")
    hybridiso(repo, "down", "a", "--force")
    git(repo, "fetch", "-q", "origin")
    hybridiso(repo, "up")
    assert git(env(repo, "a"), "rev-parse", "HEAD") == git(repo, "rev-parse", "main")
    assert state(repo)["agents"]["a"]["track"] == ""


@pytest.mark.parametrize("branch", ["origin/feature", "origin/new-thing", "refs/heads/x", "remotes/origin/feature", "origin"])
def test_branch_that_would_shadow_a_remote_tracking_branch_is_refused(tmp_path: Path, branch: str) -> None:
    repo, _ = _with_remote_feature(tmp_path, f"  - {{name: f, branch: {branch}}}\n  - name: ok\n")
    before = _branches(repo)
    r = hybridiso(repo, "up", ok=False)
    assert r.returncode == 1
    assert "would shadow remote-tracking branches" in r.stderr and f"agent f: branch {branch!r}" in r.stderr
    if branch.startswith("origin/"):
        assert f"use `branch: {branch.removeprefix('origin/')}`" in r.stderr
    assert "nothing was created" in r.stderr
    assert _branches(repo) == before  # no refs/heads/origin/... or anything else
    assert not (tmp_path / "repo.agents").exists() and state(repo).get("agents", {}) == {}


# --- adoption after a crash and a lost state file ----------------------------------


def _start_up(repo: Path) -> subprocess.Popen[str]:
    # its own process group: killing it kills its git and setup children too,
    # as a crash of the machine (or a kill of the terminal's group) would
    return subprocess.Popen(
        [sys.executable, "-m", "hybridiso", "up"], cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )


def _kill_group(proc: subprocess.Popen[str]) -> None:
    import os

    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()


def _gc_now(repo: Path) -> None:
    """Pack now, not in the detached auto gc those many commits started,
    which would race the clone's linking of loose objects (git.clone_local
    retries that; this test is about the kill)."""
    deadline = time.time() + 60
    while True:
        r = subprocess.run(["git", "gc", "-q"], cwd=repo, capture_output=True, text=True)
        if r.returncode == 0:
            return
        assert "already running" in r.stderr and time.time() < deadline, r.stderr
        time.sleep(0.2)


@pytest.mark.parametrize("isolation", ["worktree", "clone"])
def test_half_checked_out_environment_is_adopted_as_creating(tmp_path: Path, isolation: str) -> None:
    """kill -9 of up (and its git) in the middle of the checkout, then the
    state file is lost: the half-made environment is never called ready, and
    the next up rolls it back and makes it whole."""
    from tests.support.gitrepo import many_files_repo

    repo = many_files_repo(tmp_path / "r", 8000)
    write_manifest(repo, f"agents:\n  - {{name: big, isolation: {isolation}}}\n")
    git(repo, "add", "hybridiso.yaml")
    git(repo, "commit", "-q", "-m", "manifest")
    _gc_now(repo)
    env_dir = tmp_path / "r.agents" / "big"
    proc = _start_up(repo)
    deadline = time.time() + 120
    # mid-checkout: git is writing files, and the index is not there yet
    index = (repo / ".git" / "worktrees" / "big" / "index") if isolation == "worktree" else (env_dir / ".git" / "index")
    while not (env_dir / "pkg00").is_dir() or len(list((env_dir / "pkg00").iterdir())) < 20:
        assert time.time() < deadline and proc.poll() is None, f"up finished before it could be killed mid-checkout: {proc.communicate()}"
        time.sleep(0.005)
    _kill_group(proc)
    assert not index.exists(), "the checkout had finished: the fault was not made"
    files = sum(1 for _ in env_dir.rglob("mod*.py"))
    assert 0 < files < 8000
    (repo / ".git" / "hybridiso" / "state.json").unlink()
    row = status_json(repo)["big"]
    assert row["state"] != "ready" and row["state"].startswith("creating"), row
    r = hybridiso(repo, "up")
    assert "Created" in r.stderr
    assert status_json(repo)["big"]["state"] == "ready"
    assert sum(1 for _ in env_dir.rglob("mod*.py")) == 8000
    assert git(env_dir, "status", "--porcelain") == ""


def test_setup_killed_then_state_lost_is_adopted_as_creating(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r")
    marker = tmp_path / "setup-ran"
    write_manifest(repo, f"agents:\n  - name: a\n    setup: ['echo run >> {marker}; sleep 60']\n  - name: done\n")
    proc = _start_up(repo)
    deadline = time.time() + 60
    while not (marker.exists() and (tmp_path / "r.agents" / "done" / ".hybridiso.env").exists()):
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.05)
    time.sleep(0.5)  # "done" has no setup: let it finish
    _kill_group(proc)
    (repo / ".git" / "hybridiso" / "state.json").unlink()
    rows = status_json(repo)
    assert rows["a"]["state"].startswith("creating") and rows["done"]["state"] == "ready", rows
    write_manifest(repo, f"agents:\n  - name: a\n    setup: ['echo run >> {marker}']\n  - name: done\n")
    r = hybridiso(repo, "up")
    assert " a " in r.stderr and "Created" in r.stderr
    assert marker.read_text().split() == ["run", "run"]  # setup ran to its end this time
    assert {n: row["state"] for n, row in status_json(repo).items()} == {"a": "ready", "done": "ready"}


def test_finished_environments_are_adopted_ready_old_ones_get_their_marker(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r")
    write_manifest(repo, "agents:\n  - name: a\n  - {name: c, isolation: clone}\n")
    hybridiso(repo, "up")
    # an environment made before the marker existed: its ready record vouches
    # for it, and the next up marks it
    (repo / ".git" / "worktrees" / "a" / "hybridiso-ready").unlink()
    (tmp_path / "r.agents" / "c" / ".git" / "hybridiso-ready").unlink()
    r = hybridiso(repo, "up")
    assert "Created" not in r.stderr
    assert (repo / ".git" / "worktrees" / "a" / "hybridiso-ready").exists()
    assert (tmp_path / "r.agents" / "c" / ".git" / "hybridiso-ready").exists()
    (repo / ".git" / "hybridiso" / "state.json").unlink()
    assert {n: row["state"] for n, row in status_json(repo).items()} == {"a": "ready", "c": "ready"}
    assert "Created" not in hybridiso(repo, "up").stderr
    # a marker is never a symlink that is followed, nor copied from elsewhere
    (repo / ".git" / "hybridiso" / "state.json").unlink()
    m = tmp_path / "r.agents" / "c" / ".git" / "hybridiso-ready"
    m.unlink()
    (tmp_path / "elsewhere").write_text(f"agent=c\npath={tmp_path / 'r.agents' / 'c'}\n")
    m.symlink_to(tmp_path / "elsewhere")
    assert status_json(repo)["c"]["state"].startswith("creating")


def test_branch_under_a_remote_whose_name_has_a_slash_is_refused(tmp_path: Path) -> None:
    repo, _ = _with_remote_feature(tmp_path, "  - {name: f, branch: team/up/x}\n")
    git(repo, "remote", "add", "team/up", str(tmp_path / "origin.git"))
    r = hybridiso(repo, "up", ok=False)
    assert "starts with the name of remote 'team/up'" in r.stderr and "use `branch: x`" in r.stderr


@pytest.mark.docker
def test_container_agent_whose_worktree_was_deleted_is_made_again(tmp_path: Path, busybox_image: str) -> None:
    """docs/faults.md row 7 for a container agent: its worktree deleted by hand while
    its container runs; up makes the worktree again on the same branch (with
    its commits) and the container runs on it."""
    from tests.support.docker_fixtures import agents_repo

    repo = agents_repo(
        tmp_path / "r",
        f"  - name: box\n    isolation: container\n    image: {busybox_image}\n    command: ['sleep', '3600']\n",
    )
    try:
        hybridiso(repo, "up")
        box = tmp_path / "r.agents" / "box"
        work = commit_file(box, "work.txt", "agent work\n", "agent work")
        shutil.rmtree(box)
        r = hybridiso(repo, "up")
        assert "is gone; creating it again" in r.stderr and "already exists" not in r.stderr
        row = status_json(repo)["box"]
        assert row["state"] == "ready" and row["process"].startswith("running"), row
        assert git(box, "rev-parse", "HEAD") == work and state(repo)["agents"]["box"]["created_branch"] is True
    finally:
        hybridiso(repo, "down", "--force", ok=None)


def test_lost_state_never_makes_the_users_own_branch_hybridisos(tmp_path: Path) -> None:
    """An agent on the user's existing branch, merged into main: after the
    state file is lost, down must still leave that branch alone."""
    repo = make_repo(tmp_path / "r")
    git(repo, "branch", "feature")
    commit_file(repo, "f.txt", "f\n")  # main moves on; feature is merged (an ancestor)
    write_manifest(repo, "agents:\n  - {name: f, branch: feature}\n  - name: mine\n")
    hybridiso(repo, "up")
    assert state(repo)["agents"]["f"]["created_branch"] is False
    (repo / ".git" / "hybridiso" / "state.json").unlink()
    hybridiso(repo, "down")
    branches = _branches(repo)
    assert "refs/heads/feature" in branches and "refs/heads/hybridiso/mine" not in branches
