"""``down`` of many agents at once (issue 15): agents with nothing at risk
are checked and removed in parallel, judged as if every branch the run
deletes were gone already; the rest go one by one, as before."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.support.cli import hybridiso, state, write_manifest
from tests.support.gitrepo import git, git_ok, make_repo


def agents(n: int) -> str:
    return "agents:\n" + "".join(f"  - {{name: a{i}, isolation: worktree}}\n" for i in range(n))


def test_commits_two_agents_branches_share_are_not_lost_when_both_go(tmp_path: Path) -> None:
    """Each branch holds the other's commit: judged against the refs of the
    repository before either is deleted, both would look safe."""
    repo = make_repo(tmp_path / "repo")
    write_manifest(repo, agents(3))
    hybridiso(repo, "up")
    ws = tmp_path / "repo.agents"
    (ws / "a0" / "shared.txt").write_text("only here\n")
    git(ws / "a0", "add", "shared.txt")
    git(ws / "a0", "commit", "-qm", "shared work")
    shared = git(ws / "a0", "rev-parse", "HEAD")
    git(ws / "a1", "reset", "-q", "--hard", shared)  # a1's branch now holds a0's commit too
    r = hybridiso(repo, "down", ok=False)
    assert "commits not in base" in r.stderr, r.stderr
    assert not (ws / "a2").exists()  # the clean one went
    # one of the two may go (the other's branch holds the commit), never both
    kept = [b for b in ("hybridiso/a0", "hybridiso/a1") if git_ok(repo, "rev-parse", "--verify", "-q", f"refs/heads/{b}")]
    assert kept, "both branches holding the commit were deleted"
    assert git(repo, "rev-parse", f"refs/heads/{kept[0]}") == shared


def test_one_dirty_agent_among_many_is_refused_and_the_rest_go(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    write_manifest(repo, agents(6))
    hybridiso(repo, "up")
    ws = tmp_path / "repo.agents"
    (ws / "a3" / "notes.txt").write_text("mine\n")
    r = hybridiso(repo, "down", "--json", ok=False)
    results = {x["agent"]: x["action"] for x in json.loads(r.stdout)}
    assert results == {f"a{i}": ("refused" if i == 3 else "removed") for i in range(6)}
    assert list(json.loads(r.stdout)[i]["agent"] for i in range(6)) == [f"a{i}" for i in range(6)]  # in name order
    assert "1 untracked: notes.txt" in r.stderr
    assert (ws / "a3" / "notes.txt").read_text() == "mine\n"
    assert sorted(state(repo)["agents"]) == ["a3"]
    assert git(repo, "worktree", "list", "--porcelain").count("worktree ") == 2
    assert git(repo, "branch", "--list", "hybridiso/*").split() == ["+", "hybridiso/a3"]


def test_a_branch_moved_after_its_check_is_kept(tmp_path: Path) -> None:
    """The branches of many removals go in one transaction at the commits
    their checks saw; one moved since makes each be deleted on its own."""
    from hybridiso.envs import lifecycle
    from hybridiso.work.inventory import WorkReport

    repo = make_repo(tmp_path / "repo")
    base = git(repo, "rev-parse", "HEAD")
    for b in ("x", "y"):
        git(repo, "branch", b)
    moved = git(repo, "commit-tree", "-m", "later", "-p", base, f"{base}^{{tree}}")
    git(repo, "update-ref", "refs/heads/y", moved)

    class Ctx:
        def __init__(self, branch: str) -> None:
            self.name, self.record = branch, type("R", (), {"branch": branch})()
            self.project = type("P", (), {"root": repo})()

    pending = [(Ctx("x"), WorkReport(branch_tip=base)), (Ctx("y"), WorkReport(branch_tip=base))]
    lifecycle.delete_branches_as_judged(pending)  # type: ignore[arg-type]
    assert not git_ok(repo, "rev-parse", "--verify", "-q", "refs/heads/x")
    assert git(repo, "rev-parse", "refs/heads/y") == moved


def test_kill_9_during_a_parallel_down_leaves_what_the_next_down_finishes(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    for i in range(200):
        (repo / f"f{i:03d}.txt").write_text(f"{i}\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "files")
    write_manifest(repo, agents(8))
    hybridiso(repo, "up")
    ws = tmp_path / "repo.agents"
    (ws / "a5" / ".env").write_text("SECRET=1\n")  # precious: never removed
    env = {**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "hybridiso", "down"], cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(os.listdir(ws)) == 8 and proc.poll() is None:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    r = hybridiso(repo, "down", ok=False)
    assert "a5" in r.stderr and ".env" in r.stderr, r.stderr
    assert (ws / "a5" / ".env").read_text() == "SECRET=1\n"
    assert sorted(os.listdir(ws)) == ["a5"]
    assert sorted(state(repo)["agents"]) == ["a5"]
    assert git(repo, "branch", "--list", "hybridiso/*").split() == ["+", "hybridiso/a5"]
    hybridiso(repo, "gc")  # nothing left for gc to trip on


def test_two_downs_at_once_remove_each_agent_once(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    write_manifest(repo, agents(6))
    hybridiso(repo, "up")
    env = {**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    procs = [subprocess.Popen([sys.executable, "-m", "hybridiso", "down"], cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert sum(o[1].count(": removed ") for o in outs) == 6, outs
    assert not os.listdir(tmp_path / "repo.agents")
    assert state(repo)["agents"] == {}


def test_the_batched_reflogs_still_see_a_commit_on_a_detached_head(tmp_path: Path) -> None:
    """HEADs and reflogs are read for all agents in one git process each:
    a commit only one agent's HEAD reflog holds is still its work, for
    down and for gc; and one worktree git cannot batch (an unborn branch
    checked out) makes each be read on its own, with the same answers."""
    repo = make_repo(tmp_path / "repo")
    write_manifest(repo, agents(4))
    hybridiso(repo, "up")
    ws = tmp_path / "repo.agents"
    git(ws / "a1", "checkout", "-q", "--detach")
    (ws / "a1" / "lost.txt").write_text("x\n")
    git(ws / "a1", "add", "lost.txt")
    git(ws / "a1", "commit", "-qm", "on no branch")
    git(ws / "a1", "checkout", "-q", "hybridiso/a1")
    gc = hybridiso(repo, "gc", "--yes")
    assert "a1" in gc.stdout and (ws / "a1").is_dir()
    git(ws / "a2", "checkout", "-q", "--orphan", "unborn")  # its HEAD names no commit: no batch
    r = hybridiso(repo, "down", ok=False)
    assert "agent a1 has work" in r.stderr and "on no branch" in r.stderr, r.stderr
    assert "agent a2 has work" in r.stderr and "HEAD is on branch unborn" in r.stderr, r.stderr
    assert sorted(os.listdir(ws)) == ["a1", "a2"]


def test_ctrl_c_during_a_parallel_down_stops_it_and_the_next_down_finishes(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    for i in range(300):
        (repo / f"f{i:03d}.txt").write_text(f"{i}\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "files")
    write_manifest(repo, agents(12))
    hybridiso(repo, "up")
    ws = tmp_path / "repo.agents"
    env = {**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "hybridiso", "down"], cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(os.listdir(ws)) == 12 and proc.poll() is None:
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode in (0, 130), err  # 0: it had finished already
    assert "Traceback" not in err
    hybridiso(repo, "down")
    assert not os.listdir(ws)
    assert state(repo)["agents"] == {}
    assert git(repo, "branch", "--list", "hybridiso/*") == ""
    assert git(repo, "worktree", "list", "--porcelain").count("worktree ") == 1
