"""A hostile ``land.check`` (docs/faults.md row 44): it commits in its
scratch worktree, moves another agent's branch or the target, deletes its
own scratch directory, leaves a ``setsid`` child running.  land still lands
only what it checked, by compare-and-swap on the value it expects, stops
what the check started, removes only what it made, and says what happened."""
from __future__ import annotations

import time
from pathlib import Path

from hybridiso.process_groups import read_stat
from tests.land.trains import agent_commit, by_agent, first_parents, land_json, scratch_entries, train_repo
from tests.support.gitrepo import git, git_ok


def _alive(pid: int) -> bool:
    proc = read_stat(pid)
    return proc is not None and proc.state not in ("Z", "X")


def test_a_hostile_check_cannot_land_more_than_was_checked(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    script = tmp_path / "hostile.sh"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$HYBRIDISO_LAND_COMMIT" > {out}/checked-$HYBRIDISO_AGENT\n'
        f"setsid sleep 300 > /dev/null 2>&1 < /dev/null & echo $! > {out}/child-$HYBRIDISO_AGENT\n"
        'if [ "$HYBRIDISO_AGENT" = a ]; then\n'
        "  echo evil > evil.txt && git add evil.txt && git commit -q -m 'evil: in the scratch worktree'\n"
        "  git update-ref refs/heads/hybridiso/b \"$(git rev-parse hybridiso/b~1)\"\n"  # b's branch moved back under it
        '  rm -rf "$PWD"\n'
        "fi\n"
        "exit 0\n"
    )
    script.chmod(0o755)
    repo = train_repo(tmp_path, f'  check: ["{script}"]\n', ["a", "b"])
    agent_commit(repo, "a", {"a.txt": "a\n"}, "a: file")
    agent_commit(repo, "b", {"b1.txt": "1\n"}, "b: one")
    agent_commit(repo, "b", {"b2.txt": "2\n"}, "b: two")
    mine = tmp_path / "mine"
    git(repo, "worktree", "add", "-q", "-b", "mine", str(mine))
    mine.rename(tmp_path / "mine.unmounted")  # the user's worktree, its disk not mounted just now
    data, proc = land_json(repo, ok=True)
    got = by_agent(data)
    assert got["a"]["result"] == "landed" and got["a"]["landed"] == (out / "checked-a").read_text().strip()
    assert got["b"]["result"] == "landed" and got["b"]["landed"] == (out / "checked-b").read_text().strip()
    assert first_parents(repo)[:3] == ["b: one", "a: file", "manifest"]  # b's two was never checked: never landed
    assert "evil" not in git(repo, "log", "--format=%s", "main") and not git_ok(repo, "cat-file", "-e", "main:evil.txt")
    deadline = time.monotonic() + 10
    while any(_alive(int((out / f"child-{n}").read_text())) for n in ("a", "b")):
        assert time.monotonic() < deadline, "a check's setsid child survived its check"
        time.sleep(0.1)
    assert scratch_entries(repo) == []
    # the deleted scratch's own metadata went, the user's missing worktree's stayed (docs/faults.md row 28)
    assert [w for w in git(repo, "worktree", "list", "--porcelain").splitlines() if w.startswith("worktree ")] == [f"worktree {repo}", f"worktree {mine}"]


def test_a_check_that_keeps_moving_the_target_lands_nothing_and_says_so(tmp_path: Path) -> None:
    script = tmp_path / "move-main.sh"
    script.write_text(
        "#!/bin/sh\nset -e\n"
        "c=$(git commit-tree \"$(git rev-parse main^{tree})\" -p main -m 'moved by the check')\n"
        "git update-ref refs/heads/main \"$c\"\n"
    )
    script.chmod(0o755)
    repo = train_repo(tmp_path, f'  check: ["{script}"]\n', ["a"])
    tip = agent_commit(repo, "a", {"a.txt": "a\n"}, "a: file")
    data, proc = land_json(repo, ok=False)
    a = by_agent(data)["a"]
    assert a["result"] == "failed" and "gave up after 3 attempts, nothing landed" in a["why"] and a["attempts"] == 3
    assert "main moved to" in proc.stderr and "meanwhile" in proc.stderr
    assert "a: file" not in git(repo, "log", "--format=%s", "main") and git(repo, "rev-parse", "hybridiso/a") == tip
    assert scratch_entries(repo) == []


def test_down_of_the_candidate_during_its_check_loses_nothing_and_lands_nothing(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.support.cli import hybridiso

    started, release = tmp_path / "started", tmp_path / "release"
    repo = train_repo(tmp_path, f'  check: ["touch {started}; while [ ! -e {release} ]; do sleep 0.1; done"]\n', ["a"])
    hybridiso(repo, "up", "a")
    env = tmp_path / "repo.agents" / "a"
    (env / "a.txt").write_text("a\n")
    git(env, "add", "a.txt")
    git(env, "commit", "-q", "-m", "a: file")
    tip = git(env, "rev-parse", "HEAD")
    before = git(repo, "rev-parse", "main")
    land = subprocess.Popen([sys.executable, "-m", "hybridiso", "land"], cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not started.exists():
            assert time.monotonic() < deadline and land.poll() is None
            time.sleep(0.05)
        refused = hybridiso(repo, "down", "a", ok=False)  # its commit is not on main yet: work
        assert "has work that `down` would lose" in refused.stderr
        forced = hybridiso(repo, "down", "a", "--force")
        release.touch()
        out, err = land.communicate(timeout=60)
    finally:
        if land.poll() is None:
            land.kill()
    assert land.returncode == 1 and "branch hybridiso/a was deleted during its check; nothing landed" in err, err
    assert git(repo, "rev-parse", "main") == before
    saved = [line.split()[-1] for line in git(repo, "for-each-ref", "--format=%(objectname) %(refname)", "refs/hybridiso/backup/a/").splitlines()]
    assert any(git(repo, "rev-parse", ref) == tip for ref in saved), forced.stderr  # the work is in the backup down made
