"""land's own files planted or forged (docs/faults.md rows 41 and 42): what
is in ``land/scratch/``, the journal and the other land store files is
acted on only when land made it; everything else gives one clear message or
is left alone, never followed, never a hang, never a traceback."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hybridiso.process_groups import boot_id, exec_token, land_token, read_stat
from hybridiso.names import project_id
from tests.land.trains import agent_commit, land_json, train_repo
from tests.support.cli import hybridiso
from tests.support.gitrepo import git


def _land_dir(repo: Path) -> Path:
    return repo / ".git" / "hybridiso" / "land"


def _alive(pid: int) -> bool:
    proc = read_stat(pid)
    return proc is not None and proc.state not in ("Z", "X")


def _worktrees(repo: Path) -> list[str]:
    return [line.removeprefix("worktree ") for line in git(repo, "worktree", "list", "--porcelain").splitlines() if line.startswith("worktree ")]


def _repo_with_b(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A repository, agent b up with uncommitted work, a candidate a, and a
    user's own worktree whose directory is briefly missing (row 28)."""
    repo = train_repo(tmp_path, '  check: ["true"]\n', ["a", "b"])
    agent_commit(repo, "a", {"a.txt": "a\n"}, "a: file")
    hybridiso(repo, "up", "b")
    b_env = tmp_path / "repo.agents" / "b"
    (b_env / "precious.txt").write_text("b's uncommitted work\n")
    other = tmp_path / "mine"
    git(repo, "worktree", "add", "-q", "-b", "mine", str(other))
    other.rename(tmp_path / "mine.unmounted")  # its disk is not mounted just now
    return repo, b_env, other


def _assert_b_and_mine_intact(repo: Path, b_env: Path, other: Path) -> None:
    assert (b_env / "precious.txt").read_text() == "b's uncommitted work\n"
    assert git(b_env, "rev-parse", "--abbrev-ref", "HEAD") == "hybridiso/b"
    listed = _worktrees(repo)
    assert str(b_env) in listed
    assert str(other) in listed, "a worktree whose path is briefly missing was pruned (docs/faults.md row 28)"


def test_what_is_planted_in_scratch_is_never_removed_nor_followed(tmp_path: Path) -> None:
    repo, b_env, other = _repo_with_b(tmp_path)
    scratch = _land_dir(repo) / "scratch"
    scratch.mkdir(parents=True)
    (scratch / "a-deadbeef").symlink_to(b_env)  # at another agent's worktree
    (scratch / "b-0badf00d").symlink_to(tmp_path / "repo.agents")  # at the whole workspace
    os.mkfifo(scratch / "a-f1f0f1f0")  # a FIFO: whoever opens it waits forever
    (scratch / "stray").mkdir()  # a plain directory git does not know
    (scratch / "stray" / "keep.txt").write_text("not land's\n")
    before = git(repo, "rev-parse", "main")

    data, proc = land_json(repo, ok=True, timeout=120)  # recovers, then lands a
    assert [c["result"] for c in data["candidates"]] == ["landed"]
    assert git(repo, "rev-parse", "main~1") == before
    _assert_b_and_mine_intact(repo, b_env, other)
    for name in ("a-deadbeef", "b-0badf00d"):
        assert (scratch / name).is_symlink() and f"{scratch / name} is a symlink, not a worktree hybridiso made" in proc.stderr
    assert f"{scratch / 'a-f1f0f1f0'} is a FIFO" in proc.stderr
    assert (scratch / "stray" / "keep.txt").read_text() == "not land's\n" and "not a worktree of this repository" in proc.stderr

    hybridiso(repo, "gc", "--yes")  # gc's land finder: the same promise
    _assert_b_and_mine_intact(repo, b_env, other)
    assert (scratch / "a-deadbeef").is_symlink() and (scratch / "stray" / "keep.txt").exists()


def test_a_killed_runs_own_scratch_is_removed_with_its_metadata_only(tmp_path: Path) -> None:
    """What land made is still removed: a scratch worktree (its directory
    there or deleted by a check), each by its own metadata; no prune."""
    repo, b_env, other = _repo_with_b(tmp_path)
    scratch = _land_dir(repo) / "scratch"
    scratch.mkdir(parents=True)
    git(repo, "worktree", "add", "-q", "--detach", str(scratch / "a-11111111"), "main")
    git(repo, "worktree", "add", "-q", "--detach", str(scratch / "a-22222222"), "main")
    import shutil

    shutil.rmtree(scratch / "a-22222222")  # a hostile check deleted its scratch dir
    data, proc = land_json(repo, ok=True, timeout=120)
    assert "1 scratch worktree removed" in proc.stderr, proc.stderr
    assert not (scratch / "a-11111111").exists()
    assert sorted(_worktrees(repo)) == sorted([str(repo), str(b_env), str(other)])
    _assert_b_and_mine_intact(repo, b_env, other)


def _write_journal(repo: Path, journal: dict[str, object]) -> Path:
    path = _land_dir(repo) / "journal.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(journal))
    return path


def _journal(**fields: object) -> dict[str, object]:
    return {"pid": 999999, "run": "20261202T070321-999999", "agent": "a", "phase": "check", "groups": [], "landing": None, "databases": [], **fields}


def _refused(repo: Path, journal: Path, why: str) -> subprocess.CompletedProcess[str]:
    before = git(repo, "rev-parse", "main")
    proc = hybridiso(repo, "land", ok=False, timeout=60)
    assert proc.returncode == 1
    assert f"land's journal {journal} is not one hybridiso land wrote" in proc.stderr and why in proc.stderr, proc.stderr
    assert "nothing in it was acted on" in proc.stderr
    assert git(repo, "rev-parse", "main") == before  # nothing landed on a journal it cannot trust
    return proc


def test_a_forged_journal_group_never_kills_another_agents_exec(tmp_path: Path) -> None:
    repo, b_env, _ = _repo_with_b(tmp_path)
    marker = tmp_path / "exec-started"
    exec_proc = subprocess.Popen(
        [sys.executable, "-m", "hybridiso", "exec", "b", "--", "sh", "-c", f"touch {marker}; exec sleep 300"],
        cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not marker.exists():
            assert time.monotonic() < deadline and exec_proc.poll() is None
            time.sleep(0.05)
        pid = exec_proc.pid
        start = read_stat(pid).start  # type: ignore[union-attr]
        ident = project_id(repo / ".git")

        def group(token: str) -> dict[str, object]:
            return {"pgid": pid, "start": start, "boot_id": boot_id(), "token": token, "command": "sleep", "started_at": time.time()}

        # the predictable exec token, another repository's land token, a bare random one
        for token in (exec_token(ident, "b"), land_token("0" * len(ident)), "f" * 32):
            journal = _write_journal(repo, _journal(groups=[group(token)]))
            _refused(repo, journal, "does not carry a token land issued")
            assert _alive(pid), f"land killed b's exec, named by a forged journal with token {token}"
            hybridiso(repo, "gc", "--yes")
            assert _alive(pid), f"gc killed b's exec, named by a forged journal with token {token}"
        # a token of land's shape that b's processes do not carry: nothing is ours to stop
        _write_journal(repo, _journal(groups=[group(land_token(ident))]))
        hybridiso(repo, "land", ok=True, timeout=120)
        assert _alive(pid)
    finally:
        with __import__("contextlib").suppress(ProcessLookupError):
            os.killpg(exec_proc.pid, signal.SIGKILL)
        exec_proc.wait(timeout=10)


def test_a_forged_landing_never_moves_a_ref_outside_what_land_owns(tmp_path: Path) -> None:
    repo = train_repo(tmp_path, '  check: ["true"]\n', ["a", "b"])
    tip = agent_commit(repo, "a", {"a.txt": "a\n"}, "a: file")
    main = git(repo, "rev-parse", "main")
    clone = tmp_path / "users-other-clone"
    git(tmp_path, "clone", "-q", str(repo), str(clone))
    git(clone, "branch", "hybridiso/a", tip)
    git(clone, "branch", "keep", tip)
    b_tip = agent_commit(repo, "b", {"b.txt": "b\n"}, "b: file")
    good = {"agent": "a", "branch": "hybridiso/a", "where": str(repo), "tip": tip, "landed": main, "target_ref": "refs/heads/main", "before": main}
    forged = [
        ({"where": str(clone)}, "neither this repository nor agent a's recorded environment"),
        ({"where": "/"}, "neither this repository"),
        ({"branch": "main"}, "not hybridiso/a"),
        ({"target_ref": "refs/heads/hybridiso/b"}, "not refs/heads/main"),
        ({"tip": "HEAD"}, "is not a commit of this repository"),
        ({"landed": "0" * 40}, "is not a commit of this repository"),
        ({"agent": "nobody"}, "not in the manifest"),
        ({}, "does not hold tip"),  # every name right: a's branch would go back to main, its commit off it
    ]
    for change, why in forged:
        journal = _write_journal(repo, _journal(phase="landing", landing={**good, **change}))
        _refused(repo, journal, why)
        assert git(clone, "rev-parse", "hybridiso/a") == tip and git(clone, "rev-parse", "keep") == tip
        assert git(repo, "rev-parse", "hybridiso/a") == tip and git(repo, "rev-parse", "hybridiso/b") == b_tip


@pytest.mark.parametrize(
    "plant",
    ["garbage", "huge", "fifo", "symlink", "directory", "pid-string", "groups-dict", "landing-list", "database-not-ours"],
)
def test_a_journal_land_could_not_have_written_is_refused_with_one_message(tmp_path: Path, plant: str) -> None:
    repo = train_repo(tmp_path, '  check: ["true"]\n', ["a"])
    agent_commit(repo, "a", {"a.txt": "a\n"})
    path = _land_dir(repo) / "journal.json"
    path.parent.mkdir(parents=True)
    secret = tmp_path / "secret"
    secret.write_text('{"pid": 1, "run": "x"}')
    why = {
        "garbage": "not valid JSON", "huge": "bytes, more than", "fifo": "is a FIFO", "symlink": "is a symlink", "directory": "is a directory",
        "pid-string": "is no process id", "groups-dict": "groups is not a list", "landing-list": "its landing is not one land writes",
        "database-not-ours": "is not a check database of this repository",
    }[plant]
    if plant == "garbage":
        path.write_text("{not json")
    elif plant == "huge":
        path.write_text('{"pid": 1, "run": "' + "x" * (2 << 20) + '"}')
    elif plant == "fifo":
        os.mkfifo(path)
    elif plant == "symlink":
        path.symlink_to(secret)
    elif plant == "directory":
        path.mkdir()
    elif plant == "pid-string":
        path.write_text(json.dumps(_journal(pid="1")))
    elif plant == "groups-dict":
        path.write_text(json.dumps(_journal(groups={"pgid": 5})))
    elif plant == "landing-list":
        path.write_text(json.dumps(_journal(landing=["a"])))
    else:
        path.write_text(json.dumps(_journal(databases=[{"server": "postgresql://localhost/x", "name": "hi_repo_b_db"}])))
    proc = _refused(repo, path, why)
    assert proc.stderr.count("hybridiso: error") <= 1
    assert secret.read_text() == '{"pid": 1, "run": "x"}'
    assert os.path.lexists(path)  # nothing acted on: not even removed
    hybridiso(repo, "gc", timeout=60)  # gc ignores it safely
    hybridiso(repo, "status", timeout=60)


@pytest.mark.parametrize(
    "plant",
    ["last-fifo", "last-symlink", "last-garbage", "lock-fifo", "lock-symlink", "scratch-symlink", "runs-symlink", "kept-symlink", "land-symlink", "scratch-fifo"],
)
def test_the_other_land_store_files_planted_give_one_message_or_are_ignored(tmp_path: Path, plant: str) -> None:
    repo = train_repo(tmp_path, '  check: ["true"]\n', ["a"])
    agent_commit(repo, "a", {"a.txt": "a\n"})
    land = _land_dir(repo)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "file").write_text("not land's\n")
    what, _, kind = plant.partition("-")
    path = {"last": land / "last.json", "lock": land / "lock", "land": land}.get(what, land / what)
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "symlink":
        path.symlink_to(elsewhere / "file" if what in ("last", "lock") else elsewhere)
    else:
        path.write_text('{"a": {"result": ["not", "a", "string"]}, "b": 7, "c": "x", "d": {"result": "\\u001b]0;owned\\u0007", "x": 1}}')
    before = git(repo, "rev-parse", "main")
    sub = repo / "deep" / "er"
    sub.mkdir(parents=True)  # run from a subdirectory (docs/faults.md row 22)
    proc = hybridiso(sub, "land", ok=None, timeout=60)
    if what == "last":  # results for status: land's own to rewrite, never followed
        assert proc.returncode == 0, proc.stderr
        assert git(repo, "rev-parse", "main~1") == before
        rows = json.loads(hybridiso(repo, "status", "--json").stdout)
        assert {r["agent"]: r["land"] for r in rows}["a"]["result"] == "landed"
        from hybridiso.land.store import LandStore
        from hybridiso.project import load_project

        kept = LandStore(load_project(repo, None).store).read_results()
        assert set(kept) <= {"a", "d"} and kept.get("d", {}) == {}  # a terminal escape in a result is never kept to print
    else:
        assert proc.returncode == 1 and proc.stderr.count("hybridiso: error:") == 1, proc.stderr
        assert f"{'a symlink' if kind == 'symlink' else 'a FIFO'}; hybridiso never reads or writes through one" in proc.stderr, proc.stderr
        assert git(repo, "rev-parse", "main") == before
    assert (elsewhere / "file").read_text() == "not land's\n" and sorted(p.name for p in elsewhere.iterdir()) == ["file"]
    hybridiso(repo, "gc", ok=None, timeout=60)  # never a traceback (the helper fails on exit 3)
    hybridiso(repo, "status", timeout=60)


def test_a_journal_land_wrote_is_still_finished_after_kill_9_between_the_two_refs(tmp_path: Path) -> None:
    """The checks do not refuse what land itself writes: a landing whose
    target moved but whose branch did not (kill -9 between the two) is
    finished by the next run."""
    repo = train_repo(tmp_path, '  check: ["true"]\n', ["a"])
    before = git(repo, "rev-parse", "main")
    tip = agent_commit(repo, "a", {"a.txt": "a\n"}, "a: file")
    landed = git(repo, "commit-tree", git(repo, "rev-parse", f"{tip}^{{tree}}"), "-p", before, "-m", "Land a: hybridiso/a")
    git(repo, "update-ref", "refs/heads/main", landed, before)  # the compare-and-swap happened, then kill -9: files still old
    landing = {"agent": "a", "branch": "hybridiso/a", "where": str(repo), "tip": tip, "landed": landed, "target_ref": "refs/heads/main", "before": before}
    _write_journal(repo, _journal(phase="landing", landing=landing))
    data, proc = land_json(repo, ok=True)
    assert "a had landed; its branch now points at what landed" in proc.stderr, proc.stderr
    assert git(repo, "rev-parse", "hybridiso/a") == landed and git(repo, "rev-parse", "main") == landed
    assert (repo / "a.txt").read_text() == "a\n" and git(repo, "status", "--porcelain") == ""  # the checkout's files followed
    assert not (_land_dir(repo) / "journal.json").exists()
