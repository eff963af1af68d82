"""lifecycle.rollback, driven in-process through ``up`` (so a mutation tool
sees which tests reach it): an earlier run's unfinished creation (its setup
failed) is undone by the next ``up`` only as far as nothing anyone made is
lost (docs/faults.md rows 9, 25)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from hybridiso.main import main
from tests.support.cli import write_manifest
from tests.support.gitrepo import commit_file, git, make_repo


def up(repo: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    try:
        code = main(["-C", str(repo), "up"])
    except SystemExit as e:
        code = int(e.code or 0)
    return code, capsys.readouterr().err


def phase(repo: Path, name: str) -> str | None:
    path = repo / ".git" / "hybridiso" / "state.json"
    agents = json.loads(path.read_text()).get("agents", {})
    return agents[name]["phase"] if name in agents else None


def unfinished(tmp_path: Path, capsys: pytest.CaptureFixture[str], isolation: str = "worktree") -> tuple[Path, Path]:
    """An agent whose creation an earlier ``up`` left unfinished: its setup
    failed, so its record stays ``creating`` with the environment made."""
    repo = make_repo(tmp_path / "r", {"README.md": "hello\n"})
    write_manifest(repo, f"agents:\n  - name: a\n    isolation: {isolation}\n    setup: ['exit 3']\n")
    code, err = up(repo, capsys)
    assert code == 1 and "setup command failed for agent a" in err
    assert phase(repo, "a") == "creating"
    write_manifest(repo, f"agents:\n  - name: a\n    isolation: {isolation}\n")
    return repo, tmp_path / "r.agents" / "a"


def test_an_untouched_unfinished_worktree_goes_with_its_branch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo, env = unfinished(tmp_path, capsys)
    old_base = git(repo, "rev-parse", "main")
    (env / "scratch").mkdir()  # an empty directory is nothing git or anyone would keep
    new_base = commit_file(repo, "later.txt", "later\n", "base moves on")
    code, err = up(repo, capsys)
    assert code == 0, err
    assert "Created" in err and phase(repo, "a") == "ready"
    # the branch hybridiso made at the old base went with the rollback: made anew at the new base
    assert git(repo, "rev-parse", "refs/heads/hybridiso/a") == new_base != old_base
    assert git(env, "rev-parse", "HEAD") == new_base and (env / "later.txt").exists()


def test_commits_in_an_unfinished_worktree_survive_on_its_branch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo, env = unfinished(tmp_path, capsys)
    commit = commit_file(env, "mine.txt", "mine\n", "work in the unfinished environment")
    code, err = up(repo, capsys)
    assert code == 0, err
    assert "holds work" not in err and phase(repo, "a") == "ready"
    assert git(repo, "rev-parse", "refs/heads/hybridiso/a") == commit
    assert git(env, "rev-parse", "HEAD") == commit and (env / "mine.txt").read_text() == "mine\n"


@pytest.mark.parametrize("isolation", ["worktree", "clone"])
def test_files_written_into_an_unfinished_environment_keep_it(tmp_path: Path, capsys: pytest.CaptureFixture[str], isolation: str) -> None:
    repo, env = unfinished(tmp_path, capsys, isolation)
    (env / "new.txt").write_text("written after the failed setup\n")
    (env / "README.md").write_text("edited\n")
    code, err = up(repo, capsys)
    assert code == 1
    assert "its unfinished environment (an earlier `up` stopped half-way) holds work" in err
    assert "untracked: new.txt" in err and "modified: README.md" in err and "; kept it and its record\n" in err
    assert f"next step: look in {env}: `hybridiso down a` names what is there" in err
    assert (env / "new.txt").read_text() == "written after the failed setup\n" and (env / "README.md").read_text() == "edited\n"
    assert phase(repo, "a") == "creating"


def test_commits_in_an_unfinished_clone_are_work_it_keeps(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A clone's branch lives in the clone: removing the clone would lose
    its commits, so they keep it (its branch is not the repository's)."""
    repo, env = unfinished(tmp_path, capsys, "clone")
    commit = commit_file(env, "mine.txt", "mine\n", "work in the unfinished clone")
    code, err = up(repo, capsys)
    assert code == 1 and "holds work" in err and "commit" in err
    assert git(env, "rev-parse", "HEAD") == commit and phase(repo, "a") == "creating"


def test_a_branch_hybridiso_did_not_make_is_never_deleted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The agent works on the user's own branch, which sits where the
    agent's record says it started: a rollback that deleted it (as it does
    a branch it made) would lose the user's ref, and up would make it anew
    at base."""
    repo = make_repo(tmp_path / "r", {"README.md": "hello\n"})
    start = git(repo, "rev-parse", "HEAD")
    git(repo, "branch", "feature")
    base = commit_file(repo, "later.txt", "later\n", "base moves on")
    write_manifest(repo, "agents:\n  - name: a\n    branch: feature\n    setup: ['exit 3']\n")
    assert up(repo, capsys)[0] == 1 and phase(repo, "a") == "creating"
    write_manifest(repo, "agents:\n  - name: a\n    branch: feature\n")
    code, err = up(repo, capsys)
    assert code == 0, err
    assert git(repo, "rev-parse", "refs/heads/feature") == start != base
    assert git(tmp_path / "r.agents" / "a", "rev-parse", "HEAD") == start
