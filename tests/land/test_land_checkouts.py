"""``land`` and the checkouts around the target (docs/faults.md row 43): the
user's main checkout with files the landing would overwrite (untracked,
ignored, a file where a directory lands) or a rebase or merge in progress,
an agent environment with ignored files or hidden work, and a branch with
unrelated history; ``--dry-run`` says what ``land`` does."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.land.trains import agent_commit, by_agent, land_json, train_repo
from tests.support.cli import hybridiso
from tests.support.gitrepo import git


def _consistent(checkout: Path) -> None:
    """HEAD, index and files agree: nothing staged or changed."""
    assert git(checkout, "status", "--porcelain", "--untracked-files=no") == ""


@pytest.mark.parametrize("kind", ["untracked", "ignored", "file-where-a-directory-lands"])
def test_files_in_the_users_checkout_the_landing_would_overwrite_refuse_it(tmp_path: Path, kind: str) -> None:
    repo = train_repo(tmp_path, '  check: ["true"]\n', ["a"])
    (repo / ".gitignore").write_text("*.log\n")
    git(repo, "add", ".gitignore")
    git(repo, "commit", "-q", "-m", "ignore logs")
    name, landed = {"untracked": ("new.txt", "new.txt"), "ignored": ("build.log", "build.log"), "file-where-a-directory-lands": ("docs", "docs/guide.txt")}[kind]
    tip = agent_commit(repo, "a", {landed: "the agent's\n"})
    (repo / name).write_text("the user's own\n")
    before = git(repo, "rev-parse", "main")

    dry, _ = land_json(repo, "--dry-run", ok=False)
    assert by_agent(dry)["a"]["result"] == "refused" and "would overwrite" in by_agent(dry)["a"]["why"] and name in by_agent(dry)["a"]["why"]

    data, proc = land_json(repo, ok=False)
    a = by_agent(data)["a"]
    assert a["result"] == "refused" and "untracked or ignored files the landing would overwrite" in a["why"] and name in a["why"], proc.stderr
    assert (repo / name).read_text() == "the user's own\n"
    assert git(repo, "rev-parse", "main") == before and git(repo, "rev-parse", "hybridiso/a") == tip
    _consistent(repo)
    # once it is out of the way, it lands, and the files follow
    (repo / name).unlink()
    data, _ = land_json(repo, ok=True)
    assert by_agent(data)["a"]["result"] == "landed" and (repo / landed).read_text() == "the agent's\n"
    _consistent(repo)


def test_files_that_cannot_follow_move_the_target_back(tmp_path: Path) -> None:
    """If the checkout's files cannot follow after the compare-and-swap (a
    git command of the user's holds its index meanwhile), the target is moved
    back: never a HEAD moved with its index and files old."""
    busy = tmp_path / "busy.sh"
    # the check runs just before the compare-and-swap: the user's git takes the index "meanwhile"
    busy.write_text(f"#!/bin/sh\n: > {tmp_path}/repo/.git/index.lock\n")
    busy.chmod(0o755)
    repo = train_repo(tmp_path, f'  check: ["{busy}"]\n', ["a"])
    tip = agent_commit(repo, "a", {"sub/late.txt": "theirs\n"})
    before = git(repo, "rev-parse", "main")
    data, _ = land_json(repo, ok=False)
    a = by_agent(data)["a"]
    assert a["result"] == "refused" and "could not follow" in a["why"] and "was moved back" in a["why"], a
    assert git(repo, "rev-parse", "main") == before and git(repo, "rev-parse", "hybridiso/a") == tip
    (repo / ".git" / "index.lock").unlink()
    _consistent(repo)
    assert not (repo / "sub").exists()


@pytest.mark.parametrize("operation", ["rebase", "merge", "cherry-pick"])
def test_a_rebase_or_merge_in_progress_on_the_target_refuses_to_move_it(tmp_path: Path, operation: str) -> None:
    repo = train_repo(tmp_path, '  check: ["true"]\n', ["a"])
    agent_commit(repo, "a", {"a.txt": "a\n"})
    git(repo, "switch", "-q", "-c", "side")
    (repo / "app.txt").write_text("side\n")
    git(repo, "commit", "-q", "-am", "side: app")
    git(repo, "switch", "-q", "main")
    (repo / "app.txt").write_text("main\n")
    git(repo, "commit", "-q", "-am", "main: app")
    before = git(repo, "rev-parse", "main")
    if operation == "rebase":  # stopped at a `break`: HEAD is detached, the branch is still main
        env = {**os.environ, "GIT_SEQUENCE_EDITOR": "sed -i '1i break'"}
        subprocess.run(["git", "rebase", "-q", "-i", "HEAD~1"], cwd=repo, env=env, capture_output=True, check=True)
        what = "a rebase in progress"
    else:
        git(repo, operation, "side", check=False)  # conflicts: stopped
        what = f"a {operation} in progress"
    proc = hybridiso(repo, "land", ok=False)
    assert proc.returncode == 1 and what in proc.stderr and f"the target main is being worked on at {repo}" in proc.stderr, proc.stderr
    assert git(repo, "rev-parse", "refs/heads/main") == before
    dry, _ = land_json(repo, "--dry-run", ok=False)
    assert by_agent(dry)["a"]["result"] == "refused" and what in by_agent(dry)["a"]["why"]


@pytest.mark.parametrize("strategy", ["worktree", "clone"])
def test_an_agents_ignored_file_is_never_overwritten_when_its_env_follows(tmp_path: Path, strategy: str) -> None:
    repo = train_repo(tmp_path, '  check: ["true"]\n', ["a"], {"a": f"    isolation: {strategy}"})
    (repo / ".gitignore").write_text("*.log\n")
    git(repo, "add", ".gitignore")
    git(repo, "commit", "-q", "-m", "ignore logs")
    hybridiso(repo, "up", "a")
    env = tmp_path / "repo.agents" / "a"
    (env / "notes.log").write_text("the agent's notes\n")  # ignored: the env is "clean"
    (env / "a.txt").write_text("a\n")
    git(env, "add", "a.txt")
    git(env, "commit", "-q", "-m", "a: file")
    tip = git(env, "rev-parse", "HEAD")
    # main gets notes.log tracked meanwhile: a is rebased onto it, and its env
    # following the landed tip would write over the agent's notes
    (repo / "notes.log").write_text("main's log\n")
    git(repo, "add", "-f", "notes.log")
    git(repo, "commit", "-q", "-m", "main: notes.log")
    data, _ = land_json(repo, ok=True)
    a = by_agent(data)["a"]
    assert a["result"] == "landed" and "would be overwritten: notes.log" in a["why"]
    assert (env / "notes.log").read_text() == "the agent's notes\n"
    assert git(env, "rev-parse", "hybridiso/a") == tip and git(env, "rev-parse", "HEAD") == tip  # left where its files are
    _consistent(env)
    assert git(repo, "show", "main:a.txt") == "a"


def test_hidden_work_in_an_agents_env_is_refused_and_a_stash_is_kept(tmp_path: Path) -> None:
    repo = train_repo(tmp_path, '  check: ["true"]\n', ["a", "b"])
    hybridiso(repo, "up", "a", "b")
    for name in ("a", "b"):
        env = tmp_path / "repo.agents" / name
        (env / f"{name}.txt").write_text(f"{name}\n")
        git(env, "add", f"{name}.txt")
        git(env, "commit", "-q", "-m", f"{name}: file")
    a_env, b_env = tmp_path / "repo.agents" / "a", tmp_path / "repo.agents" / "b"
    git(a_env, "update-index", "--assume-unchanged", "app.txt")
    (a_env / "app.txt").write_text("hidden edit\n")
    (b_env / "README.md").write_text("stashed edit\n")
    git(b_env, "stash", "-q")
    stash = git(b_env, "rev-parse", "refs/stash")
    data, _ = land_json(repo, ok=False)
    got = by_agent(data)
    assert got["a"]["result"] == "refused" and "app.txt" in got["a"]["why"]
    assert (a_env / "app.txt").read_text() == "hidden edit\n"
    assert got["b"]["result"] == "landed" and git(b_env, "rev-parse", "refs/stash") == stash
    git(b_env, "stash", "pop", "-q")
    assert (b_env / "README.md").read_text() == "stashed edit\n"


def test_unrelated_history_is_refused_by_land_and_dry_run_alike(tmp_path: Path) -> None:
    repo = train_repo(tmp_path, '  check: ["true"]\n', ["a"])
    blob = subprocess.run(["git", "hash-object", "-w", "--stdin"], cwd=repo, input="elsewhere\n", capture_output=True, text=True, check=True).stdout.strip()
    tree = subprocess.run(["git", "mktree"], cwd=repo, input=f"100644 blob {blob}\tother.txt\n", capture_output=True, text=True, check=True).stdout.strip()
    orphan = git(repo, "commit-tree", tree, "-m", "a: unrelated root")
    git(repo, "update-ref", "refs/heads/hybridiso/a", orphan)
    before = git(repo, "rev-parse", "main")
    dry, _ = land_json(repo, "--dry-run", ok=False)
    data, _ = land_json(repo, ok=False)
    for run in (dry, data):
        a = by_agent(run)["a"]
        assert a["result"] == "refused" and "unrelated histories" in a["why"]
    assert git(repo, "rev-parse", "main") == before
