"""Setup commands: process groups that outlive a killed run (docs/faults.md row 38) and
bounded, separated, private logs (issue 11), with real processes and real
`kill -9`s of a real `hybridiso up`."""
from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path, PurePosixPath

import pytest

from hybridiso import process_groups
from tests.support.cli import check_no_crash, hybridiso, state, status_json, write_manifest
from tests.support.gitrepo import make_repo

LATE = 10  # seconds the killed run's setup sleeps before it writes (room for a loaded machine)


def _wait_for(cond, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.time() + timeout
    while not cond():
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def _processes_with_token(token: str) -> list[int]:
    """Every live process whose environment carries ``token``, read here
    independently of hybridiso's own scan."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "stat").read_text().rpartition(")")[2].split()[0] == "Z":
                continue
            env = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"{process_groups.TOKEN_VAR}={token}".encode() in env:
            found.append(int(entry.name))
    return found


def _group_alive(pgid: int) -> bool:
    """A live (not zombie) process in group ``pgid``; zombies wait for a
    reaper that this machine's pid 1 may be slow to be."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


# A setup that, while the flag file exists, writes late into its environment
# three ways: the command itself, a child in its group, and a grandchild that
# left the group with setsid.  Absolute paths: "$PWD" is the environment's
# path, which the next `up` makes again.
def _slow_setup(flag: Path, started: Path) -> str:
    return (
        f"if [ -e {flag} ]; then "
        f"(sleep {LATE}; echo late > \"$PWD/m-child\") & "
        f"setsid sh -c 'sleep {LATE}; echo late > \"$1/m-setsid\"' sh \"$PWD\" & "
        f"touch {started}; sleep {LATE}; echo late > \"$PWD/m-leader\"; fi"
    )


def _killed_during_setup(tmp_path: Path) -> tuple[Path, Path, dict]:  # type: ignore[type-arg]
    """A real `up` killed with SIGKILL while its setup runs; returns the repo,
    the environment's path and the setup's record as it was on disk."""
    repo = make_repo(tmp_path / "r")
    flag, started = tmp_path / "slow", tmp_path / "started"
    flag.touch()
    write_manifest(repo, "agents:\n  - name: a\n    setup:\n      - " + json.dumps(_slow_setup(flag, started)) + "\n")
    proc = subprocess.Popen([sys.executable, "-m", "hybridiso", "up"], cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _wait_for(started.exists)
    # the record is on disk while the setup runs, before anything waits for it
    groups = state(repo)["agents"]["a"]["setup_processes"]
    proc.kill()
    proc.wait()
    proc.stderr.close()  # type: ignore[union-attr]
    flag.unlink()  # the next runs' setup is quick
    (tmp_path / "killed-at").write_text(str(time.time()))
    assert len(groups) == 1 and groups[0]["command"].startswith("if [ -e")
    group = groups[0]
    assert _group_alive(group["pgid"])  # the kill -9 left it running: the fault is real
    assert len(_processes_with_token(group["token"])) >= 3  # leader, child, setsid grandchild
    return repo, tmp_path / "r.agents" / "a", group


def test_killed_up_leaves_its_setup_recorded_and_the_next_up_stops_it(tmp_path: Path) -> None:
    repo, env, group = _killed_during_setup(tmp_path)
    t = time.time()
    r = hybridiso(repo, "up")
    assert "Created" in r.stderr
    assert time.time() - t < LATE  # it did not wait for the old setup to end
    assert not _group_alive(group["pgid"])
    assert _processes_with_token(group["token"]) == []  # the setsid one too
    assert status_json(repo)["a"]["state"] == "ready"
    assert state(repo)["agents"]["a"]["setup_processes"] == []
    # past the moment the killed run's setup would have written: nothing came
    time.sleep(max(0.0, float((tmp_path / "killed-at").read_text()) + LATE + 1.5 - time.time()))
    assert sorted(p.name for p in env.iterdir() if p.name.startswith("m-")) == []


def test_gc_lists_a_killed_runs_setup_and_stops_it_with_yes(tmp_path: Path) -> None:
    repo, env, group = _killed_during_setup(tmp_path)
    pids = _processes_with_token(group["token"])
    dry = json.loads(hybridiso(repo, "gc", "--json").stdout)
    found = [f for f in dry["findings"] if f["kind"] == "process"]
    assert [f["target"] for f in found] == ["setup of agent a"]
    assert f"pid {group['pgid']}" in found[0]["reason"] and "still running" in found[0]["reason"]
    assert sorted(pids) == sorted(int(o.split()[1]) for o in found[0]["owns"])
    assert sorted(_processes_with_token(group["token"])) == sorted(pids)  # a dry run stops nothing
    text = hybridiso(repo, "gc").stdout
    assert "setup of agent a" in text
    r = hybridiso(repo, "gc", "--yes")
    assert "setup of agent a: removed (process)" in r.stderr
    assert _processes_with_token(group["token"]) == [] and not _group_alive(group["pgid"])
    assert "a" not in state(repo)["agents"]  # the interrupted creation went too, after its setup
    time.sleep(max(0.0, float((tmp_path / "killed-at").read_text()) + LATE + 1.5 - time.time()))
    assert not env.exists()
    assert json.loads(hybridiso(repo, "gc", "--json").stdout)["findings"] == []


def test_down_of_an_interrupted_creation_stops_its_setup_first(tmp_path: Path) -> None:
    repo, env, group = _killed_during_setup(tmp_path)
    hybridiso(repo, "down")
    assert _processes_with_token(group["token"]) == []
    time.sleep(max(0.0, float((tmp_path / "killed-at").read_text()) + LATE + 1.5 - time.time()))
    assert not env.exists()  # nothing wrote it back after it was removed


def test_a_recorded_group_whose_pid_was_reused_is_never_signalled(tmp_path: Path) -> None:
    """The record names a pid that is now somebody else's process (tampered
    state, or pid reuse after a reboot): wrong start time, no token.  Nothing
    hybridiso does may touch it."""
    repo = make_repo(tmp_path / "r")
    write_manifest(repo, "agents:\n  - name: a\n    setup: ['true']\n")
    hybridiso(repo, "up")
    bystander = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        path = repo / ".git" / "hybridiso" / "state.json"
        data = json.loads(path.read_text())
        real_start = process_groups.read_stat(bystander.pid).start  # type: ignore[union-attr]
        data["agents"]["a"]["setup_processes"] = [
            # same pid, wrong start time
            {"pgid": bystander.pid, "start": real_start + 1, "boot_id": process_groups.boot_id(), "token": "not-its-token", "command": "x"},
            # right start time, but recorded on another boot
            {"pgid": bystander.pid, "start": real_start, "boot_id": "another-boot", "token": "nope", "command": "y"},
            # everything right but the token: a record can claim a pid and a start time, never the token
            {"pgid": bystander.pid, "start": real_start, "boot_id": process_groups.boot_id(), "token": "forged", "command": "z"},
            # pid 1 / 0 / negative would signal far too much: dropped on load
            {"pgid": 1, "start": 1, "boot_id": "", "token": "t", "command": "init"},
            {"pgid": -1, "start": 1, "boot_id": "", "token": "t", "command": "all"},
        ]
        path.write_text(json.dumps(data))
        dry = json.loads(hybridiso(repo, "gc", "--json").stdout)
        assert [f for f in dry["findings"] if f["kind"] == "process"] == []
        hybridiso(repo, "gc", "--yes")
        hybridiso(repo, "up")  # stops the recorded groups that are really its own: none
        hybridiso(repo, "down")
        assert bystander.poll() is None  # still running
    finally:
        bystander.kill()
        bystander.wait()


def test_ctrl_c_stops_a_setsid_grandchild_too(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r")
    flag, started = tmp_path / "slow", tmp_path / "started"
    flag.touch()
    write_manifest(repo, "agents:\n  - name: a\n    setup:\n      - " + json.dumps(_slow_setup(flag, started)) + "\n")
    proc = subprocess.Popen([sys.executable, "-m", "hybridiso", "up"], cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for(started.exists)
    token = state(repo)["agents"]["a"]["setup_processes"][0]["token"]
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert _processes_with_token(token) == []
    time.sleep(LATE + 0.5)  # (from the interrupt on)
    assert not (tmp_path / "r.agents" / "a").exists()


def _running(pid: int) -> bool:
    """``pid`` is a live process (not a zombie waiting for its reaper)."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def test_a_failed_setup_leaves_nothing_of_its_group_running(tmp_path: Path) -> None:
    """The command exits 1 and leaves a child behind in its process group:
    stopping only the command (its pid, already gone) would leave the child
    writing into the environment the next ``up`` sets up again (docs/faults.md row 38)."""
    repo = make_repo(tmp_path / "r")
    child = tmp_path / "child-pid"
    write_manifest(repo, f"agents:\n  - name: a\n    setup: ['sleep 300 & echo $! > {child}; exit 1']\n")
    r = hybridiso(repo, "up", ok=False)
    assert "setup command failed for agent a (exit 1)" in r.stderr
    pid = int(child.read_text())
    try:
        _wait_for(lambda: not _running(pid), timeout=10)
    finally:
        if _running(pid):
            os.kill(pid, signal.SIGKILL)


# --- logs ------------------------------------------------------------------


# Runs `hybridiso up` and prints its exit code and peak RSS.  A small parent
# of its own: a child started with vfork takes its parent's high-water mark
# with it through exec, and pytest's is hundreds of MB late in the suite.
_MEASURE = """
import os, subprocess, sys
with open("up.out", "w") as o, open("up.err", "w") as e:
    p = subprocess.Popen([sys.executable, "-m", "hybridiso", "up"], cwd=sys.argv[1], stdout=o, stderr=e, stdin=subprocess.DEVNULL)
    _, status, usage = os.wait4(p.pid, 0)
print(os.waitstatus_to_exitcode(status), usage.ru_maxrss * 1024)
"""


def _up_measured(repo: Path) -> tuple[subprocess.CompletedProcess[str], int]:
    """`hybridiso up`, and the peak RSS (bytes) of it and what it waited for."""
    measured = subprocess.run([sys.executable, "-c", _MEASURE, str(repo)], cwd=repo.parent, capture_output=True, text=True, check=True)
    code, peak = (int(x) for x in measured.stdout.split())
    done = subprocess.CompletedProcess(["hybridiso", "up"], code, (repo.parent / "up.out").read_text(), (repo.parent / "up.err").read_text(errors="replace"))
    check_no_crash(done, ("up",))
    return done, peak


def test_a_setup_printing_a_20_mb_line_shows_a_bounded_tail_in_bounded_memory(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r")
    # head and tr stream: the command itself stays small, so the peak is hybridiso's
    write_manifest(repo, "agents:\n  - name: a\n    setup: ['head -c 20000000 /dev/zero | tr \"\\\\0\" x; echo; echo final-words; exit 7']\n")
    r, peak = _up_measured(repo)
    assert r.returncode == 1
    assert "setup command failed for agent a (exit 7)" in r.stderr and "final-words" in r.stderr
    assert len(r.stderr) < 8000, len(r.stderr)
    assert max(len(line) for line in r.stderr.splitlines()) < 700
    assert peak < 80 << 20, f"peak RSS {peak >> 20} MB"
    log = repo / ".git" / "hybridiso" / "logs" / "a" / "setup.log"
    assert log.stat().st_size > 20_000_000  # the whole output is in the log
    assert stat.S_IMODE(log.stat().st_mode) == 0o600


def test_an_error_shows_only_this_runs_output_and_the_log_separates_runs(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r")
    attempt = tmp_path / "attempt"
    attempt.write_text("first-attempt\n")
    write_manifest(repo, f"agents:\n  - name: a\n    setup: ['echo ok-step', 'cat {attempt}; exit 3']\n")
    first = hybridiso(repo, "up", ok=False)
    assert "first-attempt" in first.stderr and "ok-step" not in first.stderr  # only the failing command's output
    attempt.write_text("second-attempt\n")
    second = hybridiso(repo, "up", ok=False)
    assert "second-attempt" in second.stderr and "first-attempt" not in second.stderr
    log = (repo / ".git" / "hybridiso" / "logs" / "a" / "setup.log").read_text()
    headers = [line for line in log.splitlines() if line.startswith("=== up ")]
    assert len(headers) == 2 and all(" pid " in h and h.endswith(" ===") for h in headers)
    assert log.index("first-attempt") < log.index(headers[1]) < log.index("second-attempt")


def test_setup_output_cannot_drive_the_terminal(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r")
    write_manifest(repo, "agents:\n  - name: a\n    setup: ['printf \"\\\\033]0;pwned\\\\007\\\\033[2Jvisible\\\\n\"; exit 1']\n")
    r = hybridiso(repo, "up", ok=False)
    assert "\x1b" not in r.stderr and "\x07" not in r.stderr
    assert "\\x1b]0;pwned\\x07\\x1b[2Jvisible" in r.stderr


@pytest.mark.parametrize("kind", ["symlink", "fifo"])
def test_a_planted_log_is_never_followed(tmp_path: Path, kind: str) -> None:
    """docs/faults.md row 31: the log (or its directory) replaced by a symlink to a file
    outside, or by a FIFO: one clear error, nothing outside written."""
    repo = make_repo(tmp_path / "r")
    write_manifest(repo, "agents:\n  - name: a\n    setup: ['echo secret-output']\n")
    logs = repo / ".git" / "hybridiso" / "logs"
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    if kind == "symlink":
        logs.mkdir(parents=True)
        (logs / "a").symlink_to(tmp_path, target_is_directory=True)  # a symlinked parent
        victim.rename(tmp_path / "setup.log")
        victim = tmp_path / "setup.log"
    else:
        (logs / "a").mkdir(parents=True)
        os.mkfifo(logs / "a" / "setup.log")
    r = hybridiso(repo, "up", ok=False)
    assert r.returncode == 1 and ("is a symlink" in r.stderr or "is a FIFO" in r.stderr), r.stderr
    assert "hybridiso never reads or writes through one" in r.stderr
    if kind == "symlink":
        assert victim.read_text() == "precious\n"


def test_a_big_log_is_rotated_when_a_run_starts(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r")
    write_manifest(repo, "agents:\n  - name: a\n    setup: ['echo fresh-run']\n")
    log = repo / ".git" / "hybridiso" / "logs" / "a" / "setup.log"
    log.parent.mkdir(parents=True)
    log.write_bytes(b"old\n" * (3 << 20))  # 12 MiB
    log.chmod(0o644)  # as an older version left it
    hybridiso(repo, "up")
    assert log.read_text().count("\n") < 10 and "fresh-run" in log.read_text()
    assert (log.parent / "setup.log.1").stat().st_size == 12 << 20
    assert stat.S_IMODE(log.stat().st_mode) == 0o600


def test_a_setup_command_runs_only_once_its_group_is_recorded(tmp_path: Path) -> None:
    """The record must be on disk before the command can do anything: it
    waits at a gate until `on_start` returned; if that fails (the state
    cannot be written), or hybridiso dies first, it never runs."""
    from hybridiso import setup_runner
    from hybridiso.errors import UserError

    marker = tmp_path / "ran"
    log = setup_runner.LogFile(tmp_path, PurePosixPath("logs/setup.log"))
    seen: list[bool] = []

    def slow_save(group) -> None:  # type: ignore[no-untyped-def]
        time.sleep(0.5)  # a slow disk: the command has had time to run, were it not gated
        seen.append(marker.exists())

    setup_runner.run_setup([f"touch {marker}"], tmp_path, {}, log, on_start=slow_save)
    assert seen == [False] and marker.exists()
    marker.unlink()

    def failing_save(group) -> None:  # type: ignore[no-untyped-def]
        raise UserError("cannot write the state file")

    with pytest.raises(UserError):
        setup_runner.run_setup([f"touch {marker}"], tmp_path, {}, log, on_start=failing_save)
    time.sleep(0.3)
    assert not marker.exists()


def test_a_missing_setup_program_is_said_before_it_is_run(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r")
    write_manifest(repo, "agents:\n  - name: a\n    setup: [[no-such-tool-here, --version]]\n")
    r = hybridiso(repo, "up", ok=False)
    assert "setup command for agent a could not start: no-such-tool-here --version: no-such-tool-here: not found on PATH" in r.stderr
