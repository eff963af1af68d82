"""``status`` never exits 3 (issue 11): an environment git cannot read, one
removed while status looks at it, and one an ``up`` is creating right now."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.support.cli import hybridiso, status_json, write_manifest
from tests.support.gitrepo import make_repo


def _project(tmp_path: Path, agents: str) -> Path:
    repo = make_repo(tmp_path / "r", {"README.md": "hello\n"})
    write_manifest(repo, agents)
    return repo


def env(repo: Path, name: str) -> Path:
    return repo.parent / f"{repo.name}.agents" / name


@pytest.mark.parametrize(
    ("agent", "damage", "says"),
    [
        ("wt", "remove .git", "its .git is missing"),
        ("wt", "garbage .git", "invalid gitfile format"),
        ("wt", "symlink .git", "its .git is a symlink, which hybridiso does not follow"),
        ("cl", "remove .git", "its .git is missing"),
        ("cl", "symlink .git", "its .git is a symlink"),
        ("cl", "garbage .git", "not a git clone"),
    ],
)
def test_an_environment_git_cannot_read_is_a_problem_not_a_crash(tmp_path: Path, agent: str, damage: str, says: str) -> None:
    repo = _project(tmp_path, "agents:\n  - {name: wt}\n  - {name: cl, isolation: clone}\n  - {name: ok}\n")
    hybridiso(repo, "up")
    path = env(repo, agent)
    (path / "work.txt").write_text("uncommitted work\n")
    dot_git = path / ".git"
    if dot_git.is_dir():
        shutil.rmtree(dot_git)
    else:
        dot_git.unlink()
    if damage == "garbage .git":
        dot_git.write_text("this is not a gitdir line\n")
    elif damage == "symlink .git":
        dot_git.symlink_to(repo / ".git")  # git would read (and refresh the index of) the main repository
    index_before = (repo / ".git" / "index").read_bytes()
    r = hybridiso(repo, "status")  # exit 3 fails here, with its traceback
    assert f"  {agent}: " in r.stderr and says in r.stderr, r.stderr
    rows = status_json(repo)
    assert rows["ok"]["state"] == "ready" and rows["ok"]["dirty"] == 0
    assert rows[agent]["dirty"] is None and any(says in p for p in rows[agent]["problems"])
    assert (path / "work.txt").read_text() == "uncommitted work\n"
    assert (repo / ".git" / "index").read_bytes() == index_before


def test_an_environment_removed_while_status_runs(tmp_path: Path) -> None:
    # a concurrent `down` (here: the directory going and coming back as fast
    # as it can) must never make status exit 3; run it against the race
    repo = _project(tmp_path, "agents:\n" + "".join(f"  - {{name: a{i}}}\n" for i in range(4)))
    hybridiso(repo, "up")
    victims = [env(repo, f"a{i}") for i in range(4)]
    copies = [tmp_path / f"copy{i}" for i in range(4)]
    for v, c in zip(victims, copies, strict=False):
        shutil.copytree(v, c, symlinks=True)
    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            for v, c in zip(victims, copies, strict=False):
                shutil.rmtree(v, ignore_errors=True)
                shutil.copytree(c, v, symlinks=True, dirs_exist_ok=True)

    t = threading.Thread(target=churn)
    t.start()
    try:
        states = set()
        for _ in range(8):
            r = hybridiso(repo, "status", "--json")
            states |= {row["state"] for row in json.loads(r.stdout)}
    finally:
        stop.set()
        t.join()
    assert states <= {"ready", "missing", "unreadable"}, states
    print("states seen while the directories came and went:", sorted(states))


def test_status_during_up_says_creating_in_progress_with_the_pid(tmp_path: Path) -> None:
    repo = _project(tmp_path, "defaults:\n  setup: ['sleep 3']\nagents:\n  - {name: a}\n  - {name: b, isolation: clone}\n")
    up = subprocess.Popen(
        [sys.executable, "-m", "hybridiso", "up"], cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 20
        rows: dict[str, dict[str, object]] = {}
        while time.monotonic() < deadline:
            rows = status_json(repo)
            if all(r["state"] != "not created" for r in rows.values()):
                break
            time.sleep(0.1)
        for name in ("a", "b"):
            assert rows[name]["state"] == f"creating (in progress: hybridiso up, pid {up.pid})", rows
            assert rows[name]["problems"] == []
        assert "missing" not in hybridiso(repo, "status").stdout
    finally:
        out, err = up.communicate(timeout=60)
    assert up.returncode == 0, err
    assert {r["state"] for r in status_json(repo).values()} == {"ready"}


def test_an_interrupted_creation_is_not_called_in_progress(tmp_path: Path) -> None:
    pid_file = tmp_path / "setup.pid"
    repo = _project(tmp_path, f"defaults:\n  setup: ['echo $$ > {pid_file}; sleep 30']\nagents:\n  - {{name: a}}\n")
    up = subprocess.Popen([sys.executable, "-m", "hybridiso", "up"], cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not pid_file.exists():
        time.sleep(0.1)
    up.kill()  # kill -9: the record stays 'creating', nobody holds the lock
    up.wait()
    try:
        rows = status_json(repo)
        assert rows["a"]["state"] == "creating (interrupted or failed; `up` redoes it)"
    finally:
        # the setup it started runs on in its own process group: end it, by its id
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.killpg(int(pid_file.read_text()), signal.SIGKILL)


def _check(repo: Path) -> subprocess.CompletedProcess[str]:
    return hybridiso(repo, "status", "--check", ok=None)


def test_status_check_exits_1_when_an_agent_is_not_as_the_manifest_asks(tmp_path: Path) -> None:
    """Issue 16: never "all is well" when it is not; `--check` makes it the
    exit code, naming each agent and what is wrong."""
    repo = _project(tmp_path, "agents:\n  - {name: a}\n  - {name: b, isolation: clone}\n  - {name: later}\n")
    r = _check(repo)
    assert r.returncode == 1 and "3 of 3 agents are not in the state the manifest asks for" in r.stderr
    assert "  later: not created yet: `hybridiso up` creates it" in r.stderr
    hybridiso(repo, "up")
    assert _check(repo).returncode == 0
    rows = json.loads(hybridiso(repo, "status", "--json").stdout)
    assert [(r["agent"], r["ok"], r["off"]) for r in rows] == [("a", True, None), ("b", True, None), ("later", True, None)]
    # base moves on: drift is said (one commit: no plural), but is not a fault
    from tests.support.gitrepo import commit_file

    commit_file(repo, "new.txt", "new\n")
    r = hybridiso(repo, "status", "--check")
    assert "  a: 1 commit behind main: `hybridiso sync` rebases it" in r.stderr
    commit_file(repo, "new2.txt", "new\n")
    assert "  a: 2 commits behind main" in hybridiso(repo, "status", "--check").stderr
    # an environment deleted by hand (docs/faults.md row 7)
    shutil.rmtree(env(repo, "b"))
    r = _check(repo)
    assert r.returncode == 1 and "1 of 3 agents is not in the state the manifest asks for:\n  b: the directory was deleted" in r.stderr
    assert "next step: `hybridiso up` converges them" in r.stderr
    # without --check the same is said, and the exit code stays 0 (the table is data)
    plain = hybridiso(repo, "status")
    assert "  b: the directory was deleted" in plain.stderr
    rows = {r["agent"]: r for r in json.loads(hybridiso(repo, "status", "--json").stdout)}
    assert rows["b"]["ok"] is False and rows["b"]["off"].startswith("the directory was deleted") and rows["a"]["ok"] is True
    # --json --check: the data on stdout, and the verdict as the exit code
    r = hybridiso(repo, "status", "--json", "--check", ok=False)
    assert r.returncode == 1 and json.loads(r.stdout)[1]["agent"] == "b"
    hybridiso(repo, "up")
    assert _check(repo).returncode == 0
    # an agent the manifest no longer names is not what it asks for either
    write_manifest(repo, "agents:\n  - {name: a}\n  - {name: b, isolation: clone}\n")
    r = _check(repo)
    assert r.returncode == 1 and "  later: not in the manifest any more; `hybridiso down later` removes it" in r.stderr
    # and a branch switched by hand
    subprocess.run(["git", "-C", str(env(repo, "a")), "switch", "-q", "-c", "elsewhere"], check=True)
    r = hybridiso(repo, "status", "--check", "a", ok=False)
    assert "1 of 1 agent is not in the state" in r.stderr and "a: checked out branch is 'elsewhere', expected 'hybridiso/a'" in r.stderr


def test_dirty_counts_each_changed_staged_and_untracked_file_not_ignored_ones(tmp_path: Path) -> None:
    """DIRTY is the number of files `git status` lists: modified, staged,
    deleted and each untracked file (also inside a new directory); ignored
    files and hybridiso's own env file are not the agent's changes."""
    repo = make_repo(tmp_path / "r", {"README.md": "hello\n", "gone.txt": "x\n", ".gitignore": "build/\n"})
    write_manifest(repo, "agents:\n  - {name: wt, ports: [web]}\n  - {name: cl, isolation: clone, ports: [web]}\n  - name: clean\n")
    hybridiso(repo, "up")
    for name in ("wt", "cl"):
        e = env(repo, name)
        assert (e / ".hybridiso.env").is_file()  # there, and not counted
        (e / "README.md").write_text("changed\n")
        (e / "gone.txt").unlink()
        (e / "staged.txt").write_text("staged\n")
        subprocess.run(["git", "add", "staged.txt"], cwd=e, check=True)
        (e / "new").mkdir()
        (e / "new" / "a.txt").write_text("a\n")
        (e / "new" / "b.txt").write_text("b\n")
        (e / "build").mkdir()
        (e / "build" / "out.o").write_text("ignored\n")
    rows = status_json(repo)
    assert rows["wt"]["dirty"] == rows["cl"]["dirty"] == 5, rows
    assert rows["clean"]["dirty"] == 0
    table = hybridiso(repo, "status").stdout.splitlines()
    header = table[0].split()
    column = header.index("DIRTY")
    by_agent = {line.split()[0]: line.split() for line in table[2:] if line.split()}
    assert by_agent["wt"][column] == by_agent["cl"][column] == "5" and by_agent["clean"][column] == "0", table


@pytest.mark.parametrize("isolation", ["worktree", "clone"])
def test_a_detached_head_is_not_the_branch_the_manifest_asks_for(tmp_path: Path, isolation: str) -> None:
    """A commit made on a detached HEAD is not on the agent's branch: status
    must not show it as the branch's drift with all well."""
    repo = _project(tmp_path, f"agents:\n  - {{name: a, isolation: {isolation}}}\n")
    hybridiso(repo, "up")
    where = env(repo, "a")
    subprocess.run(["git", "-C", str(where), "switch", "-q", "--detach"], check=True)
    (where / "loose.txt").write_text("x\n")
    subprocess.run(["git", "-C", str(where), "add", "loose.txt"], check=True)
    subprocess.run(["git", "-C", str(where), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "loose"], check=True)
    head = subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    r = hybridiso(repo, "status", "--check", ok=False)
    assert r.returncode == 1, r.stderr
    assert f"a: HEAD is detached at {head[:12]}, expected branch 'hybridiso/a'" in r.stderr, r.stderr
    row = json.loads(hybridiso(repo, "status", "--json").stdout)[0]
    assert row["ok"] is False and row["off"].startswith("HEAD is detached")


def test_drift_is_heads_whether_a_branch_is_there_or_not(tmp_path: Path) -> None:
    """Issue 15: the drift of agents on their branch comes from one
    for-each-ref; a detached HEAD no branch is at, and a clone (its own
    refs), are asked one by one -- the same figures either way."""
    from tests.support.gitrepo import commit_file

    repo = _project(tmp_path, "agents:\n  - {name: onb}\n  - {name: det}\n  - {name: cl, isolation: clone}\n")
    hybridiso(repo, "up")
    for name in ("onb", "det", "cl"):
        commit_file(env(repo, name), f"{name}.txt", "x\n")
    commit_file(env(repo, "onb"), "onb2.txt", "x\n")
    commit_file(env(repo, "onb"), "onb3.txt", "x\n")  # three ahead, on its branch
    subprocess.run(["git", "-C", str(env(repo, "det")), "switch", "-q", "--detach"], check=True)
    commit_file(env(repo, "det"), "more.txt", "x\n")  # two commits ahead, on no branch
    commit_file(repo, "base.txt", "x\n")  # base moves on: everyone is 1 behind
    subprocess.run(["git", "-C", str(env(repo, "cl")), "fetch", "-q", "hybridiso-base", "main"], check=True)
    rows = {r["agent"]: r for r in json.loads(hybridiso(repo, "status", "--json").stdout)}
    assert (rows["onb"]["ahead"], rows["onb"]["behind"]) == (3, 1)
    assert (rows["det"]["ahead"], rows["det"]["behind"]) == (2, 1)
    assert (rows["cl"]["ahead"], rows["cl"]["behind"]) == (1, 1)
