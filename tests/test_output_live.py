"""`up`'s live progress (issue 15): on a terminal every running agent's
step and elapsed time is drawn in place and the summary is what stays; on a
pipe, one line per agent as before; rich is loaded only to draw."""
from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

from tests.support.cli import hybridiso, state, write_manifest
from tests.support.gitrepo import make_repo

ROOT = Path(__file__).resolve().parent.parent


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", str(ROOT)), "TERM": "xterm", "COLUMNS": "120", "LINES": "40"}


def _run_on_a_terminal(cwd: Path, *args: str, timeout: float = 120) -> tuple[int, str]:
    """Run hybridiso with a pseudo-terminal as its stdin, stdout and stderr;
    what it wrote, and its exit code."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: exec at once, nothing else of the test runs here
        os.chdir(cwd)
        os.execve(sys.executable, [sys.executable, "-m", "hybridiso", *args], _env())
    out = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 1)
            if not ready:
                continue
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
    finally:
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out.decode("utf-8", "replace")


def _screen(text: str) -> list[str]:
    """What a terminal shows after ``text``: carriage return, line feed,
    cursor up (ESC [ n A) and erase line (ESC [ 2K) are obeyed, other
    escape sequences (cursor hiding, colours) have no effect on the text."""
    lines: list[list[str]] = [[]]
    row = col = 0
    for token in re.findall(r"\x1b\[[0-9;?]*[A-Za-z]|\r|\n|[^\x1b\r\n]", text):
        if token == "\r":
            col = 0
        elif token == "\n":
            row += 1
            col = 0
            while len(lines) <= row:
                lines.append([])
        elif token.startswith("\x1b["):
            if token.endswith("A"):
                row = max(0, row - int(token[2:-1] or 1))
            elif token == "\x1b[2K":
                lines[row] = []
        else:
            line = lines[row]
            while len(line) < col:
                line.append(" ")
            if col < len(line):
                line[col] = token
            else:
                line.append(token)
            col += 1
    return [("".join(line)).rstrip() for line in lines if "".join(line).strip()]


SLOW_SETUP = "python3 -c 'import time; time.sleep(2.5)'"


def test_on_a_terminal_up_draws_each_agents_step_and_elapsed_time_and_leaves_the_summary(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    names = ["a", "b", "c"]
    agents = "\n".join(f"  - {{name: {n}}}" for n in names)
    write_manifest(repo, f"version: 1\nbase: main\nlimits: {{setup_jobs: 1}}\ndefaults:\n  setup: [{SLOW_SETUP!r}]\nagents:\n{agents}\n")
    code, out = _run_on_a_terminal(repo, "up", "-j", "3")
    assert code == 0, out
    # drawn while it ran: the step with its elapsed time, and who waits, why
    assert re.search(r"… a +worktree +setup [12] s", out), out
    assert re.search(r"… [bc] +worktree +waits: 1 compute setup running \(limits\.setup_jobs: 1\) \d+ s", out), out
    # on a terminal the drawing says who waits: no line of its own for it
    assert "; b waits" not in out and "; c waits" not in out
    # what stays is the summary: one line per agent, nothing drawn left
    shown = _screen(out)
    assert shown[0] == "[+] 3 to create, 0 to check", shown
    assert sorted(re.sub(r"\d+\.\d+s", "T", line) for line in shown[1:]) == [f" ✔ {n} worktree  Created       T" for n in names], shown
    assert all(r["phase"] == "ready" for r in state(repo)["agents"].values())


def test_on_a_pipe_up_prints_one_line_per_agent_and_who_waits(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    write_manifest(repo, f"version: 1\nbase: main\nlimits: {{setup_jobs: 1}}\ndefaults:\n  setup: [{SLOW_SETUP!r}]\nagents: [{{name: a}}, {{name: b}}]\n")
    proc = hybridiso(repo, "up", "-j", "2")
    assert "\x1b[" not in proc.stderr  # nothing drawn
    lines = proc.stderr.splitlines()
    assert lines[0] == "[+] 2 to create, 0 to check"
    assert [line for line in lines if "waits" in line] in (
        ["hybridiso: 1 compute setup running (limits.setup_jobs: 1); b waits"],
        ["hybridiso: 1 compute setup running (limits.setup_jobs: 1); a waits"],
    ), lines
    assert sorted(re.sub(r"\d+\.\d+s", "T", line) for line in lines if "Created" in line) == [" ✔ a worktree  Created       T", " ✔ b worktree  Created       T"]


def test_status_and_version_never_import_rich(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    write_manifest(repo, "version: 1\nbase: main\nagents: [{name: a}]\n")
    hybridiso(repo, "up")
    for args in (["status"], ["--version"], ["status", "--json"]):
        proc = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "hybridiso", *args], cwd=repo, capture_output=True, text=True, env=_env(), check=False
        )
        assert proc.returncode == 0, proc.stderr
        imported = [line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")]
        assert "hybridiso.main" in imported or args == ["--version"]  # importtime did list the imports
        assert "hybridiso" in [name.split(".")[0] for name in imported]
        assert not [name for name in imported if name.split(".")[0] == "rich"], args
    # up on a pipe does not load it either: it only draws on a terminal
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "hybridiso", "up"], cwd=repo, capture_output=True, text=True, env=_env(), check=False)
    assert proc.returncode == 0 and " rich" not in proc.stderr
