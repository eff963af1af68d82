"""``land`` under faults made for real (issue 14 items 4 and 7): a hanging
check, the target or a candidate's branch moved by another shell, kill -9,
two runs at once."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.land.trains import agent_commit, by_agent, first_parents, land_json, scratch_entries, train_repo
from tests.support.cli import hybridiso
from tests.support.gitrepo import git


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _wait_for(path: Path, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_a_hanging_check_times_out_and_its_whole_group_is_killed(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    pids.mkdir()
    check = f'  check: ["echo $$ > {pids}/leader; sleep 300 & echo $! > {pids}/child; wait"]\n  timeout: 2s\n'
    repo = train_repo(tmp_path, check, ["a", "b"], {"b": "    land: {check: [\"true\"]}"})
    a_tip = agent_commit(repo, "a", {"a.txt": "a\n"})
    agent_commit(repo, "b", {"b.txt": "b\n"})
    started = time.monotonic()
    data, _ = land_json(repo, ok=False)
    assert time.monotonic() - started < 30
    got = by_agent(data)
    assert got["a"]["result"] == "failed" and got["a"]["why"].startswith("check timed out after 2s")
    assert got["b"]["result"] == "landed"  # its own check (the per-agent override)
    for name in ("leader", "child"):
        assert not _alive(int((pids / name).read_text())), f"the check's {name} survived its timeout"
    assert git(repo, "rev-parse", "hybridiso/a") == a_tip and scratch_entries(repo) == []


def test_the_target_moved_by_another_shell_mid_queue_is_reapplied_and_rechecked(tmp_path: Path) -> None:
    mark = tmp_path / "moved-once"
    other = tmp_path / "other"
    # the first check of a moves main (another shell landing a commit): a must
    # then be applied on the new main and checked again before it lands
    script = tmp_path / "move-main.sh"
    script.write_text(
        f"#!/bin/sh\nset -e\necho \"check $HYBRIDISO_AGENT at $HYBRIDISO_LAND_COMMIT\" >> {tmp_path}/checks.log\n"
        f"if [ \"$HYBRIDISO_AGENT\" = a ] && [ ! -e {mark} ]; then touch {mark}; cd {tmp_path}/repo; git fetch -q {other} main; git merge -q --ff-only FETCH_HEAD; fi\n"
    )
    script.chmod(0o755)
    repo = train_repo(tmp_path, f'  check: ["{script}"]\n', ["a", "b"])
    git(tmp_path, "clone", "-q", str(repo), str(other))
    (other / "other.txt").write_text("other shell\n")
    git(other, "add", "other.txt")
    git(other, "commit", "-q", "-m", "other shell: commit")
    agent_commit(repo, "a", {"a.txt": "a\n"}, "a: file")
    agent_commit(repo, "b", {"b.txt": "b\n"}, "b: file")
    data, _ = land_json(repo, ok=True)
    got = by_agent(data)
    assert got["a"]["result"] == "landed" and got["a"]["attempts"] == 2
    assert first_parents(repo)[:3] == ["b: file", "a: file", "other shell: commit"]
    # every commit main passed through was checked as it is
    checked = [line.split()[-1] for line in (tmp_path / "checks.log").read_text().splitlines()]
    assert len(checked) == 3
    assert git(repo, "rev-parse", "main~1") == checked[1] and git(repo, "rev-parse", "main") == checked[2]
    assert (repo / "other.txt").read_text() == "other shell\n" and git(repo, "status", "--porcelain") == ""


def test_a_branch_rewritten_during_its_check_lands_the_rewrite_checked(tmp_path: Path) -> None:
    mark = tmp_path / "rewritten"
    script = tmp_path / "rewrite.sh"
    # the agent amends its commit while its check runs; b deletes its branch
    script.write_text(
        "#!/bin/sh\nset -e\n"
        f"echo \"$HYBRIDISO_AGENT $(cat a.txt 2>/dev/null)\" >> {tmp_path}/checks.log\n"
        f"if [ \"$HYBRIDISO_AGENT\" = a ] && [ ! -e {mark} ]; then touch {mark}; cd {tmp_path}/repo;"
        " tree=$(git rev-parse 'hybridiso/a^{tree}'); blob=$(echo amended | git hash-object -w --stdin);"
        " GIT_INDEX_FILE=.git/tmpidx git read-tree $tree; GIT_INDEX_FILE=.git/tmpidx git update-index --cacheinfo 100644,$blob,a.txt;"
        " t=$(GIT_INDEX_FILE=.git/tmpidx git write-tree); rm .git/tmpidx; c=$(git commit-tree $t -p main -m 'a: amended');"
        " git update-ref refs/heads/hybridiso/a $c; fi\n"
        f"if [ \"$HYBRIDISO_AGENT\" = b ]; then git -C {tmp_path}/repo branch -D hybridiso/b >/dev/null; fi\n"
    )
    script.chmod(0o755)
    repo = train_repo(tmp_path, f'  check: ["{script}"]\n', ["a", "b"])
    agent_commit(repo, "a", {"a.txt": "first\n"}, "a: first")
    agent_commit(repo, "b", {"b.txt": "b\n"}, "b: file")
    before = git(repo, "rev-parse", "main")
    data, _ = land_json(repo, ok=False)
    got = by_agent(data)
    assert got["a"]["result"] == "landed" and got["a"]["attempts"] == 2
    assert got["b"]["result"] == "missing" and "deleted during its check" in got["b"]["why"]
    assert (tmp_path / "checks.log").read_text().splitlines() == ["a first", "a amended", "b amended"]  # b is checked on top of what landed
    assert first_parents(repo)[:2] == ["a: amended", "manifest"] and git(repo, "rev-parse", "main~1") == before
    assert git(repo, "show", "main:a.txt") == "amended"


def test_kill_9_during_a_check_then_the_next_land_resumes(tmp_path: Path) -> None:
    started = tmp_path / "started"
    pidfile = tmp_path / "check.pid"
    # the first time, the check hangs (and is killed with land); then it passes
    check = f'  check: ["if [ -e {started} ]; then exit 0; fi; echo $$ > {pidfile}; touch {started}; sleep 300"]\n'
    repo = train_repo(tmp_path, check, ["a", "b"])
    a_tip = agent_commit(repo, "a", {"a.txt": "a\n"}, "a: file")
    agent_commit(repo, "b", {"b.txt": "b\n"}, "b: file")
    before = git(repo, "rev-parse", "main")
    proc = subprocess.Popen([sys.executable, "-m", "hybridiso", "land"], cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(started)
        _wait_for(pidfile)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    check_pid = int(pidfile.read_text())
    assert _alive(check_pid)  # kill -9 leaves the check running: the journal names it
    assert git(repo, "rev-parse", "main") == before and git(repo, "rev-parse", "hybridiso/a") == a_tip
    assert len(scratch_entries(repo)) == 1
    journal = repo / ".git" / "hybridiso" / "land" / "journal.json"
    assert journal.is_file()

    # gc finds both, and says so without --yes
    gc = hybridiso(repo, "gc", "--json")
    import json

    found = {f["kind"]: f for f in json.loads(gc.stdout)["findings"]}
    assert found["land-scratch"]["action"] == "remove" and found["land-scratch"]["target"].startswith(str(repo / ".git" / "hybridiso" / "land" / "scratch" / "a-"))
    assert found["land-check"]["action"] == "remove" and f"pid {check_pid}" in found["land-check"]["owns"][0]
    assert _alive(check_pid) and len(scratch_entries(repo)) == 1  # nothing done without --yes

    data, proc2 = land_json(repo, ok=True)
    assert "the land run of pid" in proc2.stderr and "its check was stopped" in proc2.stderr and "1 scratch worktree removed" in proc2.stderr
    assert data["resumed"] and not _alive(check_pid)
    assert [c["result"] for c in data["candidates"]] == ["landed", "landed"]
    assert first_parents(repo)[:3] == ["b: file", "a: file", "manifest"]
    assert scratch_entries(repo) == [] and not journal.exists()
    assert [line for line in git(repo, "worktree", "list", "--porcelain").splitlines() if line.startswith("worktree ")] == [f"worktree {repo}"]


def test_gc_removes_a_killed_lands_scratch_and_check(tmp_path: Path) -> None:
    started = tmp_path / "started"
    pidfile = tmp_path / "check.pid"
    repo = train_repo(tmp_path, f'  check: ["echo $$ > {pidfile}; touch {started}; sleep 300"]\n', ["a"])
    agent_commit(repo, "a", {"a.txt": "a\n"})
    proc = subprocess.Popen([sys.executable, "-m", "hybridiso", "land"], cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(started)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    check_pid = int(pidfile.read_text())
    hybridiso(repo, "gc", "--yes")
    assert not _alive(check_pid) and scratch_entries(repo) == []
    assert [line for line in git(repo, "worktree", "list", "--porcelain").splitlines() if line.startswith("worktree ")] == [f"worktree {repo}"]


def test_gc_and_land_agree_where_land_keeps_its_things(tmp_path: Path) -> None:
    from hybridiso.gc.land_leftovers import land_dir
    from hybridiso.land.store import LandStore
    from hybridiso.project import load_project

    repo = train_repo(tmp_path, "  check: []\n", ["a"])
    project = load_project(repo, None)
    store = LandStore(project.store)
    assert store.dir == land_dir(project) and store.scratch_dir == land_dir(project) / "scratch"
    assert store.lock_path == land_dir(project) / "lock" and store.journal_path == land_dir(project) / "journal.json"


def test_a_second_land_waits_and_says_for_whom_while_status_is_not_blocked(tmp_path: Path) -> None:
    started = tmp_path / "started"
    release = tmp_path / "release"
    check = f'  check: ["touch {started}; while [ ! -e {release} ]; do sleep 0.1; done"]\n'
    repo = train_repo(tmp_path, check, ["a"])
    agent_commit(repo, "a", {"a.txt": "a\n"})
    first = subprocess.Popen([sys.executable, "-m", "hybridiso", "land"], cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    second = None
    try:
        _wait_for(started)
        t0 = time.monotonic()
        hybridiso(repo, "status")  # not blocked by the running check
        assert time.monotonic() - t0 < 20
        err_path = tmp_path / "second.err"
        with err_path.open("w") as err_file:
            second = subprocess.Popen([sys.executable, "-m", "hybridiso", "land"], cwd=repo, stdout=subprocess.DEVNULL, stderr=err_file, text=True)
        deadline = time.monotonic() + 30
        while "waiting for the land lock" not in err_path.read_text():
            assert second.poll() is None and time.monotonic() < deadline, err_path.read_text()
            time.sleep(0.1)
        assert f"waiting for the land lock held by pid {first.pid} (hybridiso land)" in err_path.read_text()
        assert first.poll() is None  # it waits for the running check, not for nothing
        release.touch()
        out1, err1 = first.communicate(timeout=60)
        second.wait(timeout=60)
        err2 = err_path.read_text()
    finally:
        for p in (first, second):
            if p is not None and p.poll() is None:
                p.kill()
    assert first.returncode == 0, err1
    assert second.returncode == 0 and "nothing to land" in err2


def test_push_after_each_landing_and_a_rejected_push_is_said(tmp_path: Path) -> None:
    remote = tmp_path / "remote.git"
    repo = train_repo(tmp_path, '  check: ["true"]\n  push: origin\n', ["a", "b"])
    git(tmp_path, "init", "-q", "--bare", str(remote))
    git(repo, "remote", "add", "origin", str(remote))
    git(repo, "push", "-q", "origin", "main")
    agent_commit(repo, "a", {"a.txt": "a\n"})
    data, _ = land_json(repo, ok=True)
    assert by_agent(data)["a"]["pushed"] is True
    assert git(remote, "rev-parse", "main") == git(repo, "rev-parse", "main")
    # someone else pushes to the remote: b lands here, the push is refused and said
    other = tmp_path / "other"
    git(tmp_path, "clone", "-q", str(remote), str(other))
    (other / "o.txt").write_text("o\n")
    git(other, "add", "o.txt")
    git(other, "commit", "-q", "-m", "other")
    git(other, "push", "-q", "origin", "main")
    theirs = git(remote, "rev-parse", "main")
    agent_commit(repo, "b", {"b.txt": "b\n"})
    data, proc = land_json(repo, ok=False)
    b = by_agent(data)["b"]
    assert b["result"] == "landed" and b["pushed"] is False and "push to origin rejected" in b["why"]
    assert git(remote, "rev-parse", "main") == theirs  # never forced
