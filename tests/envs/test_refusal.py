"""What `down` tells the user to do with the work it refuses to lose."""
from __future__ import annotations

from pathlib import Path

from tests.support.cli import hybridiso, write_manifest
from tests.support.gitrepo import git, make_repo


def test_commits_only_a_clones_remote_tracking_ref_holds_are_to_be_fetched_or_pushed(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r")
    write_manifest(repo, "agents:\n  - {name: c, isolation: clone}\n")
    hybridiso(repo, "up")
    env = tmp_path / "r.agents" / "c"
    git(env, "checkout", "-q", "-b", "scratch")
    (env / "only-here.txt").write_text("work\n")
    git(env, "add", "only-here.txt")
    git(env, "commit", "-q", "-m", "only in a remote-tracking ref")
    git(env, "update-ref", "refs/remotes/mirror/side", "HEAD")
    git(env, "checkout", "-q", "hybridiso/c")
    git(env, "branch", "-q", "-D", "scratch")
    r = hybridiso(repo, "down", "c", ok=False)
    assert r.returncode == 1
    assert "remote-tracking ref mirror/side (1 commit)" in r.stderr, r.stderr
    assert "fetch or push those commits into the repository" in r.stderr, r.stderr
    # a plain other branch is work too, but not one to fetch or push
    git(env, "update-ref", "-d", "refs/remotes/mirror/side")
    git(env, "branch", "-q", "side", "HEAD@{1}")
    r = hybridiso(repo, "down", "c", ok=False)
    assert "branch side" in r.stderr and "fetch or push those commits" not in r.stderr, r.stderr
    assert (env / ".git").is_dir()
