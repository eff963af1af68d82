"""What the user sees when something fails: a command failing (a user error
with the command, its last words and a next step), several agents failing
(one format), and a bug (a crash log with the versions, only the user's)."""
from __future__ import annotations

import os
import re
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from hybridiso.errors import UserError
from tests.support.cli import hybridiso, write_manifest
from tests.support.gitrepo import git, make_repo


def test_a_failing_git_inside_down_is_a_user_error_with_the_command_and_a_next_step(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r")
    write_manifest(repo, "agents:\n  - name: a\n")
    hybridiso(repo, "up")
    env = tmp_path / "r.agents" / "a"
    (env / "notes.txt").write_text("work\n")
    # a packed-refs line git cannot read: every ref listing fails
    packed = repo / ".git" / "packed-refs"
    before = packed.read_bytes() if packed.exists() else b""
    packed.write_bytes(before + b"not a ref line\n")
    r = hybridiso(repo, "down", "--force", ok=False)
    assert r.returncode == 1, r.stderr
    assert "internal error" not in r.stderr and "Traceback" not in r.stderr
    assert re.search(r"hybridiso: error: `git [^`]*for-each-ref[^`]*` failed \(exit 128\) in \S+: fatal: unexpected line in \.git/packed-refs: not a ref line", r.stderr), r.stderr
    assert "\n  next step: run `cd " in r.stderr and "for-each-ref" in r.stderr.split("next step:")[1]
    # nothing was lost: the environment and its work are where they were
    assert (env / "notes.txt").read_text() == "work\n"
    packed.write_bytes(before)
    hybridiso(repo, "down", "--force")
    assert not env.exists()


def test_a_git_that_cannot_write_says_what_to_make_writable(tmp_path: Path) -> None:
    """A read-only ref directory (immutable, so root is refused too): the
    branch `up` creates cannot be written; that agent fails, with git's words
    and what to fix, and the other agent is made."""
    repo = make_repo(tmp_path / "r")
    write_manifest(repo, "agents:\n  - name: a\n  - {name: b, branch: other/b}\n")
    heads = repo / ".git" / "refs" / "heads" / "hybridiso"
    heads.mkdir(parents=True)
    subprocess.run(["chattr", "+i", str(heads)], check=True)
    try:
        r = hybridiso(repo, "up", ok=False)
    finally:
        subprocess.run(["chattr", "-i", str(heads)], check=True)
    assert r.returncode == 1 and "internal error" not in r.stderr, r.stderr
    assert "1 of 2 agents failed:\n  a: " in r.stderr, r.stderr
    assert "Operation not permitted" in r.stderr and "next step: make the files it names writable by you" in r.stderr
    assert git(repo, "branch", "--list", "other/b") != ""


def test_several_agents_failing_are_said_in_one_format(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r")
    write_manifest(repo, "agents:\n  - name: a\n  - name: b\n  - name: c\n")
    for name in ("a", "b"):
        (tmp_path / "r.agents" / name).mkdir(parents=True)
        (tmp_path / "r.agents" / name / "mine.txt").write_text("the user's\n")
    r = hybridiso(repo, "up", ok=False)
    lines = r.stderr.splitlines()
    start = lines.index("hybridiso: error: 2 of 3 agents failed:")
    assert lines[start + 1].startswith("  a: ") and lines[start + 2].startswith("    next step: ")
    assert lines[start + 3].startswith("  b: ") and lines[start + 4].startswith("    next step: ")
    for name in ("a", "b"):
        (tmp_path / "r.agents" / name / "mine.txt").unlink()
        (tmp_path / "r.agents" / name).rmdir()
    hybridiso(repo, "up")
    for name in ("a", "b"):
        (tmp_path / "r.agents" / name / "new.txt").write_text("work\n")
    r = hybridiso(repo, "down", ok=False)
    lines = r.stderr.splitlines()
    start = lines.index("hybridiso: error: 2 of 3 agents could not be removed:")
    assert lines[start + 1].startswith("  agent a has work that `down` would lose: ")
    assert lines[start + 2].startswith("    next step: ") and lines[start + 3].startswith("  agent b has work")
    # one agent asked for: its own error, nothing around it
    r = hybridiso(repo, "down", "a", ok=False)
    assert r.stderr.startswith("hybridiso: error: agent a has work that `down` would lose: 1 untracked: new.txt\n  next step: ")
    assert (tmp_path / "r.agents" / "a" / "new.txt").exists() and (tmp_path / "r.agents" / "b" / "new.txt").exists()


# --- a bug -------------------------------------------------------------------------

# the real CLI, with one verb broken the way a bug breaks it
_BROKEN_PLAN = (
    "import sys\n"
    "import hybridiso.commands.plan as plan\n"
    "def broken(args):\n"
    "    raise ZeroDivisionError('a bug in plan')\n"
    "plan.run = broken\n"
    "from hybridiso.main import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def _crash(repo: Path, tmp: Path, **env: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    proc = subprocess.run(
        [sys.executable, "-c", _BROKEN_PLAN, "plan"],
        cwd=repo, capture_output=True, text=True, timeout=60, env={**os.environ, "TMPDIR": str(tmp), **env},
    )
    assert proc.returncode == 3, proc.stderr
    m = re.fullmatch(r"hybridiso: internal error \(this is a bug\); traceback written to (\S+)\n", proc.stderr)
    assert m is not None, proc.stderr
    return proc, Path(m.group(1))


def test_a_bug_writes_a_crash_log_with_the_versions_only_the_user_can_read(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r")
    write_manifest(repo, "agents:\n  - name: a\n")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    _, log = _crash(repo, tmp)
    assert log.parent == tmp and log.name.startswith("hybridiso-crash-")
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    text = log.read_text()
    from hybridiso import __version__

    git_version = subprocess.run(["git", "--version"], capture_output=True, text=True, check=True).stdout.strip()
    assert f"\nhybridiso: {__version__}\n" in text
    assert f"\ngit: {git_version}\n" in text
    assert f"\npython: {sys.version.split()[0]} " in text
    assert re.search(r"\ndocker: (client \S+, server \S+|not installed|not known .*)\n", text), text
    assert "ZeroDivisionError: a bug in plan" in text and "Traceback (most recent call last)" in text


def test_the_crash_log_does_not_wait_for_a_docker_that_does_not_answer(tmp_path: Path) -> None:
    """A Docker socket that accepts and never answers: the crash log says so
    within its short timeout."""
    repo = make_repo(tmp_path / "r")
    write_manifest(repo, "agents:\n  - name: a\n")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    sock_path = tmp_path / "mute.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(sock_path))
    server.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])  # read nothing, answer nothing
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        started = time.monotonic()
        _, log = _crash(repo, tmp, DOCKER_HOST=f"unix://{sock_path}")
        took = time.monotonic() - started
    finally:
        stop.set()
        thread.join()
        for s in held:
            s.close()
        server.close()
    assert "\ndocker: not known (TimeoutExpired)\n" in log.read_text()
    assert took < 12, took  # a crash is reported in seconds, not after Docker's own minute


_BROKEN_CREATE = (
    "import sys\n"
    "from hybridiso.envs import lifecycle\n"
    "real = lifecycle.create\n"
    "def create(ctx):\n"
    "    if ctx.name == 'b':\n"
    "        raise TypeError('a bug in creating b')\n"
    "    real(ctx)\n"
    "lifecycle.create = create\n"
    "from hybridiso.main import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def test_a_bug_in_one_agents_job_is_said_with_its_crash_log_and_exits_3(tmp_path: Path) -> None:
    """The others are made all the same; the bug is not a user error."""
    repo = make_repo(tmp_path / "r")
    write_manifest(repo, "agents:\n  - name: a\n  - name: b\n")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", _BROKEN_CREATE, "up"],
        cwd=repo, capture_output=True, text=True, timeout=120, env={**os.environ, "TMPDIR": str(tmp)},
    )
    assert proc.returncode == 3, proc.stderr
    m = re.search(r"\n  b: internal error \(this is a bug\): TypeError: a bug in creating b; traceback written to (\S+)\n", proc.stderr)
    assert m is not None, proc.stderr
    log = Path(m.group(1))
    assert log.parent == tmp and stat.S_IMODE(log.stat().st_mode) == 0o600
    text = log.read_text()
    assert "\nhybridiso: " in text and "TypeError: a bug in creating b" in text and "in create" in text
    assert (tmp_path / "r.agents" / "a" / "README.md").exists()
    assert "Created" in proc.stderr


def test_git_metadata_that_cannot_be_removed_is_a_clear_error_and_the_next_down_finishes(tmp_path: Path) -> None:
    """docs/faults.md row 8: the worktree's metadata dir is immutable (root
    cannot delete it either): down says what is left, exit 1, and finishes
    once it can."""
    repo = make_repo(tmp_path / "r")
    write_manifest(repo, "agents:\n  - name: a\n")
    hybridiso(repo, "up")
    entry = repo / ".git" / "worktrees" / "a"
    subprocess.run(["chattr", "+i", str(entry)], check=True)
    try:
        r = hybridiso(repo, "down", ok=False)
    finally:
        subprocess.run(["chattr", "-i", str(entry)], check=True)
    assert r.returncode == 1 and "internal error" not in r.stderr, r.stderr
    assert f"git's record of the worktree {tmp_path / 'r.agents' / 'a'} could not be removed: " in r.stderr
    assert "Operation not permitted" in r.stderr and f"next step: make {entry} writable by you" in r.stderr
    hybridiso(repo, "down")
    assert not entry.exists() and "r.agents/a" not in git(repo, "worktree", "list")


def test_what_a_failing_command_said_is_shown_not_obeyed(tmp_path: Path) -> None:
    """git repeats a name an agent chose (here: an escape sequence) in its
    error: the message shows it escaped, so it cannot drive the terminal."""
    from hybridiso.process import CommandError, run

    repo = make_repo(tmp_path / "r")
    with pytest.raises(CommandError) as caught:
        run(["git", "rev-parse", "--verify", "\x1b]0;owned\x07main\x1b[2J"], cwd=repo)
    e = caught.value
    assert "\x1b" not in str(e) and "\x07" not in str(e)
    assert e.last_words == "fatal: Needed a single revision"
    assert e.message.startswith("`git rev-parse --verify ") and f"failed (exit 128) in {repo}: fatal: Needed a single revision" in e.message
    assert isinstance(e, UserError) and e.hint is not None and f"cd {repo} && git rev-parse" in e.hint


def test_a_compose_that_does_not_finish_in_time_is_a_user_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docker compose talking to an engine that accepts and never answers:
    past its timeout it is one clear error, never a TimeoutExpired traceback."""
    from hybridiso.containers import compose_cli

    compose_cli.compose_command()  # a UserError (a failure) where Compose v2 is missing: CI has it
    sock_path = tmp_path / "mute.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(sock_path))
    server.listen(8)
    monkeypatch.setenv("DOCKER_HOST", f"unix://{sock_path}")
    compose = tmp_path / "compose.yaml"
    compose.write_text("services:\n  a:\n    image: busybox\n")
    try:
        with pytest.raises(UserError) as caught:
            compose_cli._compose("hybridiso-mute", compose, "ps", timeout=2)
    finally:
        server.close()
    assert "docker compose ps did not finish in 2 s for project hybridiso-mute" in caught.value.message
    assert caught.value.hint is not None and "docker compose -p hybridiso-mute ps" in caught.value.hint
