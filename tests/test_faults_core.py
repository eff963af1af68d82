"""docs/faults.md rows for the core, each created for real."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.support.cli import hybridiso, hybridiso_as_plain_user, no_crash, state, status_json, write_manifest
from tests.support.gitrepo import commit_file, git, git_ok, make_repo
from tests.support import needs


def nothing_created(repo: Path) -> None:
    assert not (repo.parent / f"{repo.name}.agents").exists()
    assert git(repo, "branch", "--list", "hybridiso/*") == ""
    assert git(repo, "worktree", "list", "--porcelain").count("worktree ") == 1


# rows 1, 3, 4: bad manifests are refused with file, line and field; nothing is made
@pytest.mark.parametrize(
    ("manifest", "expected"),
    [
        ("agents:\n  - name: ui\n  - name: ui\n", "line 3: agents[1].name: duplicate agent name 'ui': agents[0] (line 2)"),
        ('agents:\n  - name: "../../etc"\n', "line 2: agents[0].name: agent name '../../etc' is invalid"),
        ('agents:\n  - name: "has space"\n', "agents[0].name"),
        ('agents:\n  - name: a\n    branch: "x.lock"\n', "line 3: agents[0].branch: branch name 'x.lock' is invalid"),
        ('agents:\n  - name: a\n    branch: "a..b"\n', "contains '..'"),
        ("agents:\n  - name: Caps\n", "compose project-name rule"),
        ("agents:\n  - name: a\n    isolaton: clone\n", "line 3: agents[0].isolaton: unknown key"),
        ("agents:\n  - name: a\n    ports: 80\n", "line 3: agents[0].ports: Input should be a valid list"),
        ("agents:\n  - name: a\n   - name: b\n", "YAML syntax error"),
    ],
)
def test_bad_manifest_creates_nothing(tmp_path: Path, manifest: str, expected: str) -> None:
    repo = make_repo(tmp_path / "r")
    write_manifest(repo, manifest)
    r = hybridiso(repo, "up", ok=False)
    assert r.returncode == 1
    assert expected in r.stderr and str(repo / "hybridiso.yaml") in r.stderr
    nothing_created(repo)


def test_manifest_that_cannot_be_read_is_one_clear_error(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r")
    (repo / "conf").mkdir()
    r = hybridiso(repo, "-f", "conf", "up", ok=False)
    assert r.returncode == 1 and "is a directory" in r.stderr
    write_manifest(repo, "agents: []\n").chmod(0)
    r = hybridiso_as_plain_user(repo, "plan")
    assert r.returncode == 1 and "cannot read the manifest" in r.stderr and "Permission denied" in r.stderr
    nothing_created(repo)


# row 2: two agents on one branch
def test_same_branch_second_agent_gets_a_clone_never_gits_raw_error(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r")
    write_manifest(repo, "agents:\n  - {name: a, branch: feat}\n  - {name: b, branch: feat}\n  - {name: c, branch: main}\n")
    r = hybridiso(repo, "up")
    assert "already used by worktree" not in r.stderr
    st = status_json(repo)
    assert (st["a"]["strategy"], st["b"]["strategy"], st["c"]["strategy"]) == ("worktree", "clone", "clone")


def test_same_branch_two_explicit_worktrees_rejected_before_git(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r")
    write_manifest(repo, "agents:\n  - {name: a, branch: feat, isolation: worktree}\n  - {name: b, branch: feat, isolation: worktree}\n")
    r = hybridiso(repo, "up", ok=False)
    assert "two worktrees cannot check out one branch" in r.stderr and "already used by worktree" not in r.stderr
    nothing_created(repo)


def test_keep_branch_that_cannot_be_updated_refuses_cleanly(tmp_path: Path) -> None:
    """A clone on the branch the repository has checked out (the planner's
    own choice for that case): git refuses to push into a checked-out
    branch, and down says so instead of crashing half-way."""
    repo = make_repo(tmp_path / "r")
    write_manifest(repo, "agents:\n  - {name: c, branch: main}\n")
    hybridiso(repo, "up")
    assert status_json(repo)["c"]["strategy"] == "clone"
    commit_file(tmp_path / "r.agents" / "c", "work.txt", "w\n", "agent work")
    r = hybridiso(repo, "down", "c", "--keep-branch", ok=False)
    assert r.returncode == 1 and "internal error" not in r.stderr
    assert "--keep-branch could not update branch main" in r.stderr and "nothing was removed" in r.stderr
    assert (tmp_path / "r.agents" / "c" / "work.txt").exists() and "c" in status_json(repo)


def test_explicit_worktree_on_a_branch_the_user_has_checked_out_is_named(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r")
    git(repo, "switch", "-q", "-c", "feat")
    write_manifest(repo, "agents:\n  - {name: a, branch: feat, isolation: worktree}\n")
    r = hybridiso(repo, "up", ok=False)
    assert r.returncode == 1 and "already used by worktree" not in r.stderr
    assert f"branch feat is checked out at {repo}" in r.stderr and "switch that checkout" in r.stderr
    assert not (repo.parent / "r.agents").exists() and git(repo, "worktree", "list", "--porcelain").count("worktree ") == 1
    git(repo, "switch", "-q", "main")
    hybridiso(repo, "up")
    assert status_json(repo)["a"]["branch"] == "feat"


# row 5: down on a dirty env
def test_down_refuses_dirty_and_force_saves_everything(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r", {"a.txt": "a\n", ".gitignore": ".env\nbuild/\n"})
    (repo / ".env").write_text("TOKEN=1\n")
    write_manifest(repo, "defaults: {include: ['.env']}\nagents:\n  - name: w\n  - {name: c, isolation: clone}\n")
    hybridiso(repo, "up")
    ws = tmp_path / "r.agents"
    for n in ("w", "c"):
        (ws / n / "a.txt").write_text("modified\n")
        (ws / n / "new.txt").write_text("untracked\n")
        (ws / n / ".env").write_text("TOKEN=changed-in-env\n")
        (ws / n / "build").mkdir()
        (ws / n / "build" / "out.o").write_text("artifact\n")  # ignored, not precious
        commit_file(ws / n, "committed.txt", "commit\n", "agent commit")
    r = hybridiso(repo, "down", "w", ok=False)
    assert r.returncode == 1
    for word in ("modified: a.txt", "untracked: new.txt", "ignored but precious: .env", "commits not in base"):
        assert word in r.stderr
    assert "--force" in r.stderr and (ws / "w" / "new.txt").exists()
    assert "--keep-branch" not in r.stderr  # keeping the branch would not save the files
    # a dry run makes the same decision, exit code included, and changes nothing
    dry = hybridiso(repo, "down", "w", "--dry-run", "--json", ok=False)
    assert dry.returncode == 1 and "w: would refuse: it has" in dry.stderr
    assert json.loads(dry.stdout)[0]["action"] == "would refuse"
    assert "would remove" in hybridiso(repo, "down", "w", "--dry-run", "--force").stderr and (ws / "w" / "new.txt").exists()
    forced = hybridiso(repo, "down", "--force")
    # one backup (a namespace of refs) per agent, each printed; its files piece holds the files
    namespaces = {"/".join(ref.split("/")[:5]) for ref in git(repo, "for-each-ref", "--format=%(refname)", "refs/hybridiso/backup/").splitlines()}
    assert len(namespaces) == 2 and all(ns in forced.stderr for ns in namespaces)
    for ref in (f"{ns}/files" for ns in namespaces):
        assert git(repo, "show", f"{ref}:a.txt") == "modified"
        assert git(repo, "show", f"{ref}:new.txt") == "untracked"
        assert git(repo, "show", f"{ref}:.env") == "TOKEN=changed-in-env"
        assert git(repo, "show", f"{ref}:committed.txt") == "commit"
        assert not git_ok(repo, "cat-file", "-e", f"{ref}:build/out.o")  # ignored, not precious: not saved
    assert not (ws / "w").exists() and not (ws / "c").exists()


def test_down_of_untouched_env_with_unchanged_include_is_fine(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r", {".gitignore": ".env\n"})
    (repo / ".env").write_text("X=1\n")
    write_manifest(repo, "defaults: {include: ['.env']}\nagents:\n  - name: w\n")
    hybridiso(repo, "up")
    hybridiso(repo, "down", "w")


# row 8: files the user cannot delete, in both strategies
def test_down_fixes_permissions_it_can_and_names_what_it_cannot(tmp_path: Path) -> None:
    needs.root("making files another user owns (a container does it as root)")
    repo = make_repo(tmp_path / "r", {".gitignore": "build/\nout/\n"})
    write_manifest(repo, "agents:\n  - name: w\n  - {name: c, isolation: clone}\n")
    hybridiso(repo, "up")
    ws = tmp_path / "r.agents"
    for n in ("w", "c"):
        cache = ws / n / "build" / "cache"
        cache.mkdir(parents=True)
        (cache / "blob").write_text("x")
        os.chmod(cache, 0)  # chmod 000: not even listable
        os.chmod(ws / n / "build", 0o555)
        out = ws / n / "out"
        out.mkdir()
        (out / "root.bin").write_text("written by a container as another uid\n")
        for p in (out / "root.bin", out):
            os.chown(p, 65534, 65534)
        os.chmod(out, 0o555)
    r = hybridiso_as_plain_user(repo, "down")
    assert r.returncode == 1, r.stderr
    assert "internal error" not in r.stderr
    for n in ("w", "c"):
        assert f"agent {n}: could not remove all of" in r.stderr
        assert str(ws / n / "out" / "root.bin") in r.stderr and "owned by uid 65534" in r.stderr
        assert not (ws / n / "build").exists()  # what we own was made deletable and went
    assert set(state(repo)["agents"]) == {"w", "c"}  # records stay, so down can be retried
    for n in ("w", "c"):
        os.chmod(ws / n / "out", 0o755)
        for p in (ws / n / "out", ws / n / "out" / "root.bin"):
            os.chown(p, 0, 0)
    hybridiso_as_plain_user(repo, "down").check_returncode()
    assert not ws.joinpath("w").exists() and not ws.joinpath("c").exists() and state(repo)["agents"] == {}
    assert "prunable" not in git(repo, "worktree", "list", "--porcelain")
    assert git(repo, "branch", "--list", "hybridiso/*") == ""


def _wait_for(predicate, timeout: float = 30) -> None:  # type: ignore[no-untyped-def]
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached")


def _start_up(repo: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "hybridiso", "up"], cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# row 9: SIGINT and SIGKILL in the middle of up
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_up_rolls_back_and_next_up_converges(tmp_path: Path, sig: int) -> None:
    repo = make_repo(tmp_path / "r")
    marker = tmp_path / "setup-started"
    write_manifest(repo, f"agents:\n  - name: slow\n    setup: ['touch {marker}; sleep 60']\n")
    proc = _start_up(repo)
    _wait_for(marker.exists)
    t = time.time()
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert time.time() - t < 10  # the setup's sleep was stopped, not waited for
    assert "rolling back" in err
    assert not (tmp_path / "r.agents" / "slow").exists()
    assert git(repo, "branch", "--list", "hybridiso/*") == ""
    assert state(repo)["agents"] == {}
    write_manifest(repo, "agents:\n  - name: slow\n")
    hybridiso(repo, "up")
    assert status_json(repo)["slow"]["state"] == "ready"


def _immutable_files_work(tmp_path: Path) -> bool:
    probe = tmp_path / "chattr-probe"
    probe.touch()
    ok = subprocess.run(["chattr", "+i", str(probe)], capture_output=True).returncode == 0
    subprocess.run(["chattr", "-i", str(probe)], capture_output=True)
    probe.unlink()
    return ok


def test_interrupted_up_whose_rollback_fails_keeps_the_record_and_says_so(tmp_path: Path) -> None:
    """Ctrl-C, and the half-made environment cannot be removed (an immutable
    file its setup made): up still exits 130 with a message, not a crash,
    and keeps the record so the next up finishes the rollback."""
    needs.root("immutable files (chattr +i)")
    if not shutil.which("chattr") or not _immutable_files_work(tmp_path):
        needs.cannot_run("needs a filesystem with immutable files (chattr +i)")
    repo = make_repo(tmp_path / "r")
    marker = tmp_path / "setup-started"
    pinned = tmp_path / "r.agents" / "stuck" / "pinned"
    write_manifest(repo, f"agents:\n  - name: stuck\n    setup: ['touch pinned && chattr +i pinned && touch {marker} && sleep 60']\n")
    try:
        proc = _start_up(repo)
        _wait_for(marker.exists)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 130, err
        no_crash(proc.returncode, err, ["up"])
        assert "internal error" not in err
        assert "stuck: could not roll back" in err and str(pinned) in err and "`hybridiso up` retries" in err
        assert state(repo)["agents"]["stuck"]["phase"] == "creating"  # kept, never shown ready
        assert status_json(repo)["stuck"]["state"].startswith("creating")
        # while the file stays pinned, the next up says why it cannot go on
        r = hybridiso(repo, "up", ok=False)
        assert r.returncode == 1 and "an interrupted creation could not be undone" in r.stderr
        assert "chattr -i" in r.stderr  # the fix for what actually holds the file, not chown
    finally:
        subprocess.run(["chattr", "-i", str(pinned)], capture_output=True)
    write_manifest(repo, "agents:\n  - name: stuck\n")
    r = hybridiso(repo, "up")
    assert "Created" in r.stderr and status_json(repo)["stuck"]["state"] == "ready"
    assert not pinned.exists()


@pytest.fixture
def small_disk(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A 6 MiB file system of its own (tmpfs), to fill for real."""
    mnt = tmp_path / "small-disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        needs.cannot_run(f"cannot mount a small tmpfs to fill (needs root): {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


# row 15: the disk fills up during create
def test_disk_full_during_up_rolls_back_and_keeps_the_state_valid(small_disk: Path) -> None:
    checkout = 40 * 40_000  # bytes one environment's files take
    files = {f"data/f{i:02d}.bin": os.urandom(20_000).hex() for i in range(40)}
    repo = make_repo(small_disk / "r", files)
    write_manifest(repo, "agents:\n  - name: a\n  - name: b\n  - {name: c, isolation: clone}\n")
    # room for one environment and a half: the second fills the disk
    st = os.statvfs(small_disk)
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    subprocess.run(["mount", "-o", f"remount,size={(used + checkout * 3 // 2) // 1024}k", str(small_disk)], check=True)
    # one at a time, so exactly the first fits in what is left
    r = hybridiso(repo, "up", "-j", "1", ok=False)
    assert r.returncode == 1 and "internal error" not in r.stderr
    assert r.stderr.count("the disk is full (No space left on device); what it had made is rolled back") == 2, r.stderr
    agents = json.loads((repo / ".git" / "hybridiso" / "state.json").read_text())["agents"]  # valid JSON
    assert list(agents) == ["a"] and agents["a"]["phase"] == "ready"
    assert sorted(p.name for p in (small_disk / "r.agents").iterdir()) == ["a"]  # nothing half-made left
    assert git(repo, "branch", "--list", "hybridiso/*").split() == ["+", "hybridiso/a"]
    assert git(repo, "worktree", "list", "--porcelain").count("worktree ") == 2
    # with room again, the next up converges
    subprocess.run(["mount", "-o", "remount,size=24m", str(small_disk)], check=True)
    hybridiso(repo, "up")
    assert {n: row["state"] for n, row in status_json(repo).items()} == {"a": "ready", "b": "ready", "c": "ready"}
    hybridiso(repo, "down")


def test_killed_up_is_never_shown_ready_and_next_up_converges(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r")
    marker = tmp_path / "setup-started"
    # the setup writes its own pid: it leads its own process group, which is
    # killed below (a pattern match could hit unrelated processes)
    write_manifest(repo, f"agents:\n  - name: slow\n    setup: ['echo $$ > {marker}.tmp && mv {marker}.tmp {marker}; sleep 60']\n")
    proc = _start_up(repo)
    _wait_for(marker.exists)
    proc.kill()
    proc.wait()
    os.killpg(int(marker.read_text()), signal.SIGKILL)
    row = status_json(repo)["slow"]
    assert row["state"] != "ready" and row["state"].startswith("creating")
    write_manifest(repo, "agents:\n  - name: slow\n")
    r = hybridiso(repo, "up")
    assert "Created" in r.stderr
    assert status_json(repo)["slow"]["state"] == "ready"
    assert git(repo, "worktree", "list", "--porcelain").count("worktree ") == 2


# row 10: two runs at once
def test_two_ups_at_once_wait_for_the_lock(tmp_path: Path) -> None:
    """The first `up` holds the lock until the second has said it waits (no
    race with a fixed sleep: on a loaded machine the second can take longer
    to start than any sleep)."""
    repo = make_repo(tmp_path / "r")
    marker, release = tmp_path / "first-in-setup", tmp_path / "release"
    wait_for_release = f"i=0; while [ ! -e {release} ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done"
    write_manifest(repo, f"agents:\n  - name: a\n    setup: ['touch {marker}; {wait_for_release}']\n")
    first = _start_up(repo)
    _wait_for(marker.exists)
    second = _start_up(repo)
    said: list[str] = []
    assert second.stderr is not None
    reader = threading.Thread(target=lambda: said.extend(second.stderr or []), daemon=True)
    reader.start()
    try:
        _wait_for(lambda: any("waiting for agent a" in line for line in said), timeout=60)
    finally:
        release.touch()
    out1, err1 = first.communicate(timeout=60)
    second.wait(timeout=60)
    reader.join(timeout=10)
    err2 = "".join(said)
    assert first.returncode == 0 and second.returncode == 0, (err1, err2)
    # the first has let the repository lock go for its setup, but not agent a
    assert f"waiting for agent a, held by pid {first.pid} (hybridiso up)" in err2
    assert "Created" in err1 and "Created" not in err2
    data = state(repo)
    assert list(data["agents"]) == ["a"] and data["agents"]["a"]["phase"] == "ready"


# row 11: git lock contention
def test_parallel_creation_of_eight_worktrees(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r", {f"d{i}/f.txt": f"{i}\n" for i in range(50)})
    write_manifest(repo, "agents:\n" + "".join(f"  - name: a{i}\n" for i in range(8)))
    hybridiso(repo, "up", "-j", "8")
    st = status_json(repo)
    assert len(st) == 8 and all(r["state"] == "ready" for r in st.values())


def test_transient_ref_lock_is_retried(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r")
    write_manifest(repo, "agents:\n  - name: a\n")
    lock = repo / ".git" / "refs" / "heads" / "hybridiso" / "a.lock"
    lock.parent.mkdir(parents=True)
    lock.write_text("")
    threading.Timer(0.4, lock.unlink).start()
    hybridiso(repo, "up")
    assert status_json(repo)["a"]["state"] == "ready"


def test_stale_ref_lock_is_reported(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r")
    write_manifest(repo, "agents:\n  - name: a\n")
    lock = repo / ".git" / "refs" / "heads" / "hybridiso" / "a.lock"
    lock.parent.mkdir(parents=True)
    lock.write_text("")
    old = time.time() - 3600
    os.utime(lock, (old, old))
    r = hybridiso(repo, "up", ok=False)
    assert r.returncode == 1 and str(lock) in r.stderr and "s old" in r.stderr and "delete that file" in r.stderr


# row 14: ports
def test_exhausted_range_fails_before_creating(tmp_path: Path) -> None:
    from tests.support.postgres import free_port

    repo = make_repo(tmp_path / "r")
    lo = free_port()
    write_manifest(repo, f'ports: {{range: "{lo}-{lo}"}}\nagents:\n  - {{name: a, ports: [web]}}\n  - {{name: b, ports: [web]}}\n')
    r = hybridiso(repo, "up", ok=False)
    assert "exhausted" in r.stderr and "b.web" in r.stderr
    nothing_created(repo)


def test_port_taken_by_another_program_is_skipped(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        write_manifest(repo, f'ports: {{range: "{busy}-{busy + 30}"}}\nagents:\n  - {{name: a, ports: [web]}}\n')
        hybridiso(repo, "up")
        assert status_json(repo)["a"]["ports"]["web"] != busy


# row 16: spaces and unicode
def test_repo_path_with_spaces_and_unicode(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "my répo with spaces ü", {"fïle name.txt": "x\n"})
    write_manifest(repo, "agents:\n  - name: a\n  - {name: b, isolation: clone}\n")
    hybridiso(repo, "up")
    for n in ("a", "b"):
        assert (tmp_path / "my répo with spaces ü.agents" / n / "fïle name.txt").exists()
    hybridiso(repo, "down")


# row 17: shallow repo, detached HEAD, no commits
def test_shallow_repo(tmp_path: Path) -> None:
    src = make_repo(tmp_path / "src")
    commit_file(src, "b.txt", "b\n")
    git(tmp_path, "clone", "-q", "--depth", "1", f"file://{src}", str(tmp_path / "shallow"))
    repo = tmp_path / "shallow"
    write_manifest(repo, "agents:\n  - name: a\n  - {name: b, isolation: clone}\n")
    hybridiso(repo, "up")
    assert (tmp_path / "shallow.agents" / "a" / "b.txt").exists()
    assert (tmp_path / "shallow.agents" / "b" / "b.txt").exists()


def test_detached_head_in_main_worktree(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r")
    git(repo, "checkout", "-q", "--detach")
    write_manifest(repo, "agents:\n  - name: a\n")
    hybridiso(repo, "up")
    assert status_json(repo)["a"]["state"] == "ready"


def test_repo_without_commits(tmp_path: Path) -> None:
    repo = tmp_path / "empty"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    write_manifest(repo, "agents:\n  - name: a\n")
    r = hybridiso(repo, "up", ok=False)
    assert "no commits yet" in r.stderr and "git commit" in r.stderr


def test_missing_base_ref(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r")
    write_manifest(repo, "base: nope\nagents:\n  - name: a\n")
    r = hybridiso(repo, "up", ok=False)
    assert "base 'nope' does not name a commit" in r.stderr


# row 18: corrupt or missing state file
@pytest.mark.parametrize("damage", ["corrupt", "delete"])
def test_state_file_rebuilt_from_git(tmp_path: Path, damage: str) -> None:
    repo = make_repo(tmp_path / "r")
    write_manifest(repo, "agents:\n  - {name: a, ports: [web]}\n  - {name: b, isolation: clone, ports: [web]}\n")
    hybridiso(repo, "up")
    before = status_json(repo)
    path = repo / ".git" / "hybridiso" / "state.json"
    if damage == "corrupt":
        path.write_text('{"version": 1, "agents": [')
    else:
        path.unlink()
    st = hybridiso(repo, "status", "--json")
    rows = {r["agent"]: r for r in json.loads(st.stdout)}
    assert {n: (r["strategy"], r["ports"]) for n, r in rows.items()} == {n: (r["strategy"], r["ports"]) for n, r in before.items()}
    if damage == "corrupt":
        assert "moved to state.json.corrupt-" in st.stderr
    r = hybridiso(repo, "up")
    assert "Created" not in r.stderr
    assert {n: r["ports"] for n, r in status_json(repo).items()} == {n: r["ports"] for n, r in before.items()}
