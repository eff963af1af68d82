"""``land --parallel K`` lands exactly what a sequential run lands (issue 14
item 3): the same repository made twice (commit dates fixed, so commit ids
are equal), landed once sequentially and once with speculative checks, and
the two targets compared commit by commit."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.land.trains import agent_commit, by_agent, land_json, scratch_entries, train_repo
from tests.support.cli import hybridiso
from tests.support.gitrepo import git

# a's check is slow, so b fails (and c, d behind it are rebuilt) while a is
# still being checked; e fails only on top of d (an integration break: X and
# Y together); c conflicts with b but not with what lands before it; f
# conflicts with c.
CHECK_SH = """\
log=../../checks.log
echo "start $HYBRIDISO_AGENT $(date +%s.%N)" >> $log
trap 'echo "end $HYBRIDISO_AGENT $(date +%s.%N)" >> $log' EXIT
trap 'exit 143' TERM
case $HYBRIDISO_AGENT in a) sleep 1.5;; b) sleep 0.1;; *) sleep 0.4;; esac
test ! -e BROKEN || { echo BROKEN; exit 3; }
if [ -e X.txt ] && [ -e Y.txt ]; then echo "X and Y"; exit 4; fi
"""
AGENTS = ["a", "b", "c", "d", "e", "f", "g", "h"]
EXPECTED = {"a": "landed", "b": "failed", "c": "landed", "d": "landed", "e": "failed", "f": "conflict", "g": "landed", "h": "landed"}


def _make(root: Path) -> Path:
    repo = train_repo(root, '  check: ["sh check.sh"]\n  timeout: 60s\n', AGENTS, {"h": "    land: {method: squash}"})
    (repo / "check.sh").write_text(CHECK_SH)
    git(repo, "add", "check.sh")
    git(repo, "commit", "-q", "-m", "check")
    agent_commit(repo, "a", {"a.txt": "a\n"}, "a: file")
    agent_commit(repo, "b", {"BROKEN": "x\n", "app.txt": "one\ntwo by b\nthree\n"}, "b: broken")
    agent_commit(repo, "c", {"app.txt": "one\ntwo by c\nthree\n"}, "c: two")
    agent_commit(repo, "d", {"X.txt": "x\n"}, "d: X")
    agent_commit(repo, "e", {"Y.txt": "y\n"}, "e: Y")
    agent_commit(repo, "f", {"app.txt": "one\ntwo by f\nthree\n"}, "f: two")
    agent_commit(repo, "g", {"g1.txt": "1\n"}, "g: one")
    agent_commit(repo, "g", {"g2.txt": "2\n"}, "g: two")
    agent_commit(repo, "h", {"h1.txt": "1\n"}, "h: one")
    agent_commit(repo, "h", {"h2.txt": "2\n"}, "h: two")
    return repo


def _history(repo: Path) -> list[str]:
    return git(repo, "log", "--format=%H %T%x00%s", "main").splitlines()


def _branches(repo: Path) -> dict[str, str]:
    lines = git(repo, "for-each-ref", "--format=%(refname) %(objectname)", "refs/heads/hybridiso/").splitlines()
    return dict(line.split() for line in lines)


def _concurrency(repo: Path) -> int:
    """The most checks running at once, from the check's own log."""
    events = []
    for line in (repo / ".git" / "hybridiso" / "land" / "checks.log").read_text().splitlines():
        kind, _, at = line.split()
        events.append((float(at), 1 if kind == "start" else -1))
    running = most = 0
    for _, step in sorted(events):
        running += step
        most = max(most, running)
    return most


@pytest.mark.parametrize("k", [3, 8])
def test_parallel_lands_exactly_what_sequential_lands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, k: int) -> None:
    monkeypatch.setenv("GIT_AUTHOR_DATE", "2026-01-01T00:00:00Z")
    monkeypatch.setenv("GIT_COMMITTER_DATE", "2026-01-01T00:00:00Z")
    seq, par = _make(tmp_path / "seq"), _make(tmp_path / "par")
    assert _history(seq) == _history(par) and _branches(seq) == _branches(par)  # the same repository twice

    s_data, _ = land_json(seq, ok=False)
    p_data, p_proc = land_json(par, f"--parallel={k}", ok=False)
    s_got, p_got = by_agent(s_data), by_agent(p_data)
    assert {a: c["result"] for a, c in s_got.items()} == EXPECTED
    assert [c["agent"] for c in p_data["candidates"]] == AGENTS
    assert {a: c["result"] for a, c in p_got.items()} == EXPECTED
    assert (s_data["parallel"], p_data["parallel"]) == (1, k)

    # the same commits, trees and subjects on the target, and the same branches
    assert _history(seq) == _history(par)
    assert git(par, "rev-parse", "main") == git(seq, "rev-parse", "main") != git(seq, "rev-parse", "main~6")
    assert _branches(seq) == _branches(par)
    for agent in AGENTS:
        assert s_got[agent]["landed"] == p_got[agent]["landed"], agent
        assert s_got[agent]["paths"] == p_got[agent]["paths"], agent
    assert p_got["f"]["paths"] == ["app.txt"]
    assert "X and Y" in p_got["e"]["tail"] and "BROKEN" in p_got["b"]["tail"]

    # it really was speculative: checks overlapped, never more than K, and
    # those behind b were checked again without it
    assert _concurrency(seq) == 1
    assert 2 <= _concurrency(par) <= k
    assert sum(c["checks"] for c in s_data["candidates"]) == 7  # f conflicts: no check
    assert sum(c["checks"] for c in p_data["candidates"]) > 7
    assert "applied again without it" in p_proc.stderr
    for repo in (seq, par):
        assert scratch_entries(repo) == []
        assert [x for x in git(repo, "worktree", "list", "--porcelain").splitlines() if x.startswith("worktree ")] == [f"worktree {repo}"]
        assert git(repo, "status", "--porcelain") == ""


def test_parallel_stop_on_failure_keeps_failed_and_skips_the_rest_as_sequential_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GIT_AUTHOR_DATE", "2026-01-01T00:00:00Z")
    monkeypatch.setenv("GIT_COMMITTER_DATE", "2026-01-01T00:00:00Z")
    seq, par = _make(tmp_path / "seq"), _make(tmp_path / "par")
    s_data, _ = land_json(seq, "--stop-on-failure", "--keep-failed", ok=False)
    p_data, _ = land_json(par, "--stop-on-failure", "--keep-failed", "--parallel=4", ok=False)
    want = [("a", "landed"), ("b", "failed")] + [(x, "skipped") for x in AGENTS[2:]]
    assert [(c["agent"], c["result"]) for c in s_data["candidates"]] == want
    assert [(c["agent"], c["result"]) for c in p_data["candidates"]] == want
    assert _history(seq) == _history(par)
    kept = Path(by_agent(p_data)["b"]["kept"])
    assert kept.is_dir() and (kept / "BROKEN").is_file()
    assert scratch_entries(par) == []  # the speculative ones behind b are gone


def test_bare_parallel_says_what_the_machine_sustains(tmp_path: Path) -> None:
    from hybridiso.land.machine import machine_parallel

    repo = train_repo(tmp_path, '  check: ["true"]\n', ["a", "b"])
    agent_commit(repo, "a", {"a.txt": "a\n"})
    agent_commit(repo, "b", {"b.txt": "b\n"})
    k, why = machine_parallel()
    assert 1 <= k <= 8 and "usable core" in why
    data, proc = land_json(repo, "--parallel", ok=True)
    assert data["parallel"] == k
    assert f"--parallel {k} (" in proc.stderr
    assert [c["result"] for c in data["candidates"]] == ["landed", "landed"]
    bad = hybridiso(repo, "land", "--parallel", "a", ok=False)
    assert bad.returncode == 2 and "not a number of checks at once" in bad.stderr
    shown = " ".join(hybridiso(repo, "land", "--help").stdout.split())
    assert "Bare --parallel: one per usable core" in shown and f"on this machine {k} ({why.split(',')[0]}," in shown


def test_kill_9_during_parallel_checks_then_the_next_land_stops_them_all_and_resumes(tmp_path: Path) -> None:
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.land.test_land_faults import _alive, _wait_for

    pids = tmp_path / "pids"
    pids.mkdir()
    # the first time each check hangs; after the kill they pass
    check = f'  check: ["if [ -e {tmp_path}/killed ]; then exit 0; fi; echo $$ > {pids}/$HYBRIDISO_AGENT.tmp; mv {pids}/$HYBRIDISO_AGENT.tmp {pids}/$HYBRIDISO_AGENT; sleep 300"]\n'
    repo = train_repo(tmp_path, check, ["a", "b", "c"])
    for x in "abc":
        agent_commit(repo, x, {f"{x}.txt": f"{x}\n"}, f"{x}: file")
    before = git(repo, "rev-parse", "main")
    proc = subprocess.Popen([sys.executable, "-m", "hybridiso", "land", "--parallel=3"], cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for x in "abc":
            _wait_for(pids / x)
        time.sleep(0.2)  # the journal names a group before its command runs
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    (tmp_path / "killed").touch()
    checks = {x: int((pids / x).read_text()) for x in "abc"}
    assert all(_alive(p) for p in checks.values())
    journal = json.loads((repo / ".git" / "hybridiso" / "land" / "journal.json").read_text())
    assert sorted(g["pgid"] for g in journal["groups"]) == sorted(checks.values())
    assert len(scratch_entries(repo)) == 3 and git(repo, "rev-parse", "main") == before

    data, proc2 = land_json(repo, ok=True)
    assert "its check was stopped" in proc2.stderr and "3 scratch worktrees removed" in proc2.stderr
    assert not any(_alive(p) for p in checks.values())
    assert [c["result"] for c in data["candidates"]] == ["landed"] * 3
    assert git(repo, "log", "--format=%s", "-4", "main").splitlines() == ["c: file", "b: file", "a: file", "manifest"]
    assert scratch_entries(repo) == []


def test_target_moved_by_another_shell_during_parallel_checks_is_rechecked_with_all_behind(tmp_path: Path) -> None:
    mark = tmp_path / "moved-once"
    other = tmp_path / "other"
    script = tmp_path / "move-main.sh"
    script.write_text(
        f"#!/bin/sh\nset -e\necho \"check $HYBRIDISO_AGENT at $HYBRIDISO_LAND_COMMIT\" >> {tmp_path}/checks.log\n"
        f"if [ \"$HYBRIDISO_AGENT\" = a ] && [ ! -e {mark} ]; then touch {mark}; sleep 0.5; cd {tmp_path}/repo; git fetch -q {other} main; git merge -q --ff-only FETCH_HEAD; fi\n"
    )
    script.chmod(0o755)
    repo = train_repo(tmp_path, f'  check: ["{script}"]\n', ["a", "b", "c"])
    git(tmp_path, "clone", "-q", str(repo), str(other))
    (other / "other.txt").write_text("other shell\n")
    git(other, "add", "other.txt")
    git(other, "commit", "-q", "-m", "other shell: commit")
    for x in "abc":
        agent_commit(repo, x, {f"{x}.txt": f"{x}\n"}, f"{x}: file")
    data, _ = land_json(repo, "--parallel=3", ok=True)
    got = by_agent(data)
    assert [got[x]["result"] for x in "abc"] == ["landed"] * 3 and got["a"]["attempts"] == 2
    assert git(repo, "log", "--format=%s", "-5", "main").splitlines() == ["c: file", "b: file", "a: file", "other shell: commit", "manifest"]
    # what main passed through was each checked as it is, on top of the other shell's commit
    lines = (tmp_path / "checks.log").read_text().splitlines()
    checked = {line.split()[-1] for line in lines}
    for n in range(3):
        assert git(repo, "rev-parse", f"main~{n}") in checked
    assert [line.split()[1] for line in lines].count("a") == 2 and len(checked) <= 6  # at most a, b, c on each main
    assert (repo / "other.txt").read_text() == "other shell\n" and git(repo, "status", "--porcelain") == ""
