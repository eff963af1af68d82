"""A clone agent's check runs in a scratch clone of its own (land/clones.py):
its own refs and config, as `up` makes a clone, at the candidate commit on
the agent's branch; never in a worktree of the repository, never in the
agent's clone; removed after the check, and found by the next land and gc
after a kill -9."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.land.trains import by_agent, first_parents, land_json, train_repo
from tests.support.cli import hybridiso
from tests.support.gitrepo import git

# what only a clone has: the remote up gives it, its own refs, its own git dir
CLONE_CHECK = r"""
set -e
pwd -P > "$OUT/$HYBRIDISO_AGENT.pwd"
[ "$(git config --get remote.hybridiso-base.url)" = "$REPO" ] || { echo "no hybridiso-base remote"; exit 1; }
git rev-parse --verify -q refs/remotes/hybridiso-base/main > /dev/null || { echo "no refs of its own"; exit 1; }
[ "$(git rev-parse --git-dir)" = .git ] || { echo "not a repository of its own: $(git rev-parse --git-dir)"; exit 1; }
[ "$(git symbolic-ref --short HEAD)" = "hybridiso/$HYBRIDISO_AGENT" ] || { echo "not on its branch"; exit 1; }
[ "$(git rev-parse HEAD)" = "$HYBRIDISO_LAND_COMMIT" ] || { echo "not at the candidate"; exit 1; }
[ -z "$(git status --porcelain --untracked-files=all)" ] || { echo "not clean"; exit 1; }
git config check.ran yes   # its own config: never the repository's
printf '#!/bin/sh\ntouch "%s/hook-ran"\n' "$OUT" > .git/hooks/post-checkout && chmod +x .git/hooks/post-checkout
printf '#!/bin/sh\ntouch "%s/hook-ran"\n' "$OUT" > .git/hooks/reference-transaction && chmod +x .git/hooks/reference-transaction
"""


def _repo(tmp_path: Path, check: str) -> tuple[Path, Path]:
    out = tmp_path / "out"
    out.mkdir()
    script = tmp_path / "check.sh"
    script.write_text("#!/bin/sh\n" + check)
    script.chmod(0o755)
    extra = f"    isolation: clone\n    env: {{OUT: '{out}', REPO: '{tmp_path / 'repo'}'}}"
    repo = train_repo(tmp_path, f'  check: ["{script}"]\n', ["a", "b"], {"a": extra, "b": extra})
    return repo, out


def _clones(repo: Path) -> list[str]:
    d = repo / ".git" / "hybridiso" / "land" / "clones"
    return sorted(os.listdir(d)) if d.is_dir() else []


def test_a_clone_agents_check_runs_in_a_scratch_clone_of_its_own(tmp_path: Path) -> None:
    repo, out = _repo(tmp_path, CLONE_CHECK)
    hybridiso(repo, "up", "a", "b")
    for name in ("a", "b"):
        env = tmp_path / "repo.agents" / name
        (env / f"{name}.txt").write_text(f"{name}\n")
        git(env, "add", f"{name}.txt")
        git(env, "commit", "-q", "-m", f"{name}: file")
        git(env, "config", "agent.secret", name)  # the agent's clone's config: not the check's
    data, proc = land_json(repo, ok=True)
    got = by_agent(data)
    assert [got[n]["result"] for n in "ab"] == ["landed", "landed"], proc.stdout + proc.stderr
    assert first_parents(repo)[:3] == ["b: file", "a: file", "manifest"]
    for name in "ab":
        where = Path((out / f"{name}.pwd").read_text().strip())
        assert where.parent.parent == repo / ".git" / "hybridiso" / "land" / "clones" and where.name == "repo"
        assert not where.exists()  # removed after its check
        env = tmp_path / "repo.agents" / name
        assert git(env, "config", "--get", "agent.secret") == name and git(env, "config", "--get", "check.ran", check=False) == ""
        # its branch, in its own clone, moved to what landed (fetched from its clone, moved there after)
        assert git(env, "rev-parse", f"hybridiso/{name}") == got[name]["landed"] == git(env, "rev-parse", "HEAD")
        assert git(env, "status", "--porcelain") == ""
    assert _clones(repo) == [] and git(repo, "config", "--get", "check.ran", check=False) == ""
    assert not (out / "hook-ran").exists()  # a hook the check planted in its clone never ran from land
    assert [w for w in git(repo, "worktree", "list", "--porcelain").splitlines() if w.startswith("worktree ")] == [f"worktree {repo}"]


def test_a_clone_agent_with_no_environment_gets_a_scratch_clone_too(tmp_path: Path) -> None:
    from tests.land.trains import agent_commit

    repo, out = _repo(tmp_path, CLONE_CHECK)
    agent_commit(repo, "a", {"a.txt": "a\n"}, "a: file")
    data, proc = land_json(repo, "a", ok=True)
    assert by_agent(data)["a"]["result"] == "landed", proc.stdout + proc.stderr
    assert "/land/clones/" in (out / "a.pwd").read_text() and _clones(repo) == []


def _wait_for(path: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_kill_9_during_a_clone_check_leaves_a_clone_gc_and_the_next_land_remove(tmp_path: Path) -> None:
    from tests.land.trains import agent_commit

    started = tmp_path / "started"
    repo, out = _repo(tmp_path, f'pwd -P > "$OUT/pwd"\n[ -e {started} ] && exit 0\ntouch {started}\nexec sleep 300\n')
    agent_commit(repo, "a", {"a.txt": "a\n"}, "a: file")
    proc = subprocess.Popen([sys.executable, "-m", "hybridiso", "land"], cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(started)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    clone = Path((out / "pwd").read_text().strip()).parent
    assert _clones(repo) == [clone.name] and (clone / "repo" / ".git").is_dir()
    found = [f for f in json.loads(hybridiso(repo, "gc", "--json").stdout)["findings"] if f["target"] == str(clone)]
    assert found and found[0]["kind"] == "land-scratch" and found[0]["action"] == "remove", found
    # a directory planted beside it without land's mark is never removed
    planted = clone.parent / "a-planted"
    (planted / "repo").mkdir(parents=True)
    (planted / "repo" / "keep.txt").write_text("not land's\n")
    data, proc2 = land_json(repo, ok=True)
    assert "1 scratch clone removed" in proc2.stderr and "not a scratch clone hybridiso made" in proc2.stderr
    assert by_agent(data)["a"]["result"] == "landed"
    assert _clones(repo) == ["a-planted"] and (planted / "repo" / "keep.txt").is_file()
