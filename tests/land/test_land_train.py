"""``hybridiso land`` on real repositories (issue 14 items 2, 5 and 7)."""
from __future__ import annotations

from pathlib import Path

from tests.land.trains import agent_commit, by_agent, first_parents, land_json, scratch_entries, train_repo
from tests.support.cli import hybridiso
from tests.support.gitrepo import git, git_ok

CHECK = """  check: ["test ! -e BROKEN", "cat app.txt >/dev/null"]
  timeout: 20s
"""


def four(tmp_path: Path) -> Path:
    return train_repo(tmp_path, CHECK, ["a", "b", "c", "d"])


def test_conflict_in_the_second_of_four_lands_the_others_in_order(tmp_path: Path) -> None:
    repo = four(tmp_path)
    agent_commit(repo, "a", {"app.txt": "one\nTWO by a\nthree\n"}, "a: two")
    b_tip = agent_commit(repo, "b", {"app.txt": "one\ntwo by b\nthree\n"}, "b: two")
    agent_commit(repo, "c", {"c.txt": "c\n"}, "c: file")
    agent_commit(repo, "d", {"d.txt": "d\n"}, "d: file")
    before = git(repo, "rev-parse", "main")

    # --dry-run: the conflict predicted, on top of a, with its file; nothing moves
    data, proc = land_json(repo, "--dry-run", ok=False)
    got = by_agent(data)
    assert [c["agent"] for c in data["candidates"]] == ["a", "b", "c", "d"]
    assert [got[x]["result"] for x in "abcd"] == ["would-land", "conflict", "would-land", "would-land"]
    assert got["b"]["paths"] == ["app.txt"]
    assert git(repo, "rev-parse", "main") == before and scratch_entries(repo) == []

    data, proc = land_json(repo, ok=False)
    assert proc.returncode == 1
    got = by_agent(data)
    assert [got[x]["result"] for x in "abcd"] == ["landed", "conflict", "landed", "landed"]
    assert got["b"]["paths"] == ["app.txt"] and "app.txt" in got["b"]["why"]
    # linear, in order, each once, on top of what was there
    assert first_parents(repo)[:3] == ["d: file", "c: file", "a: two"]
    assert git(repo, "rev-parse", "main~3") == before
    assert data["before"] == before and data["after"] == git(repo, "rev-parse", "main")
    # b's work untouched; the landed agents' branches point at what landed
    assert git(repo, "rev-parse", "hybridiso/b") == b_tip
    for x in "acd":
        assert git(repo, "rev-parse", f"hybridiso/{x}") == got[x]["landed"]
        assert git_ok(repo, "merge-base", "--is-ancestor", f"hybridiso/{x}", "main")
    # the user's checkout of main followed, clean
    assert git(repo, "status", "--porcelain") == ""
    assert (repo / "d.txt").read_text() == "d\n" and (repo / "app.txt").read_text() == "one\nTWO by a\nthree\n"
    assert scratch_entries(repo) == []
    report = Path(data["report"]).read_text()
    assert "## b: conflict" in report and "`app.txt`" in report and "## d: landed" in report

    # again: only b is left, and it still conflicts; nothing else moves
    after = git(repo, "rev-parse", "main")
    data, _ = land_json(repo, ok=False)
    assert [(c["agent"], c["result"]) for c in data["candidates"]] == [("b", "conflict")]
    assert git(repo, "rev-parse", "main") == after


def test_a_failing_check_is_reported_with_its_output_and_skipped(tmp_path: Path) -> None:
    repo = train_repo(tmp_path, '  check: ["cat app.txt", "echo checking; test ! -e BROKEN || { echo BROKEN is here >&2; exit 3; }"]\n', ["a", "b", "c", "d"])
    agent_commit(repo, "a", {"a.txt": "a\n"})
    b_tip = agent_commit(repo, "b", {"BROKEN": "x\n"})
    agent_commit(repo, "c", {"c.txt": "c\n"})
    agent_commit(repo, "d", {"d.txt": "d\n"})
    data, proc = land_json(repo, ok=False)
    got = by_agent(data)
    assert [got[x]["result"] for x in "abcd"] == ["landed", "failed", "landed", "landed"]
    assert "exit 3" in got["b"]["why"] and "BROKEN is here" in got["b"]["tail"]
    assert Path(got["b"]["log"]).is_file() and "BROKEN is here" in Path(got["b"]["log"]).read_text()
    assert not (repo / "BROKEN").exists() and git(repo, "rev-parse", "hybridiso/b") == b_tip
    assert git(repo, "ls-tree", "--name-only", "main").split() == ["README.md", "a.txt", "app.txt", "c.txt", "d.txt", "hybridiso.yaml"]
    assert scratch_entries(repo) == []
    # the table on stdout without --json
    proc = hybridiso(repo, "land", "b", ok=False)
    assert proc.returncode == 1
    assert "failed" in proc.stdout and "exit 3" in proc.stdout


def test_stop_on_failure_and_keep_failed(tmp_path: Path) -> None:
    repo = four(tmp_path)
    agent_commit(repo, "a", {"BROKEN": "x\n"})
    agent_commit(repo, "b", {"b.txt": "b\n"})
    data, proc = land_json(repo, "--stop-on-failure", "--keep-failed", ok=False)
    got = by_agent(data)
    assert (got["a"]["result"], got["b"]["result"]) == ("failed", "skipped")
    kept = Path(got["a"]["kept"])
    assert kept.is_dir() and (kept / "BROKEN").is_file() and str(kept) in got["a"]["why"]
    assert git(repo, "ls-tree", "--name-only", "main").split() == ["README.md", "app.txt", "hybridiso.yaml"]


def test_an_empty_candidate_has_nothing_to_land_and_exits_0(tmp_path: Path) -> None:
    repo = four(tmp_path)
    git(repo, "branch", "hybridiso/a", "main")
    data, proc = land_json(repo, "a", ok=True)
    assert [(c["agent"], c["result"]) for c in data["candidates"]] == [("a", "empty")]
    # not named: not a candidate at all
    data, _ = land_json(repo, ok=True)
    assert data["candidates"] == []
    # commits whose change main has already (cherry-picked): nothing new either
    agent_commit(repo, "b", {"b.txt": "b\n"}, "b: file")
    git(repo, "cherry-pick", "hybridiso/b")
    before = git(repo, "rev-parse", "main")
    data, _ = land_json(repo, "b", ok=True)
    assert [(c["agent"], c["result"]) for c in data["candidates"]] == [("b", "empty")]
    assert git(repo, "rev-parse", "main") == before


def test_squash_of_a_candidate_with_merge_commits_is_one_commit(tmp_path: Path) -> None:
    repo = train_repo(tmp_path, CHECK + "  method: squash\n", ["a"])
    agent_commit(repo, "a", {"a1.txt": "1\n"}, "a: one")
    git(repo, "branch", "side", "main")
    side = repo / "side-wt"
    git(repo, "worktree", "add", "-q", str(side), "side")
    (side / "s.txt").write_text("s\n")
    git(side, "add", "s.txt")
    git(side, "commit", "-q", "-m", "side: s")
    awt = repo / "a-wt"
    git(repo, "worktree", "add", "-q", str(awt), "hybridiso/a")
    git(awt, "merge", "-q", "--no-ff", "-m", "a: merge side", "side")
    (awt / "a2.txt").write_text("2\n")
    git(awt, "add", "a2.txt")
    git(awt, "commit", "-q", "-m", "a: two")
    git(repo, "worktree", "remove", str(awt))
    git(repo, "worktree", "remove", str(side))
    before = git(repo, "rev-parse", "main")
    data, _ = land_json(repo, ok=True)
    assert by_agent(data)["a"]["result"] == "landed"
    assert git(repo, "rev-parse", "main^") == before
    assert git(repo, "rev-list", "--count", "--parents", f"{before}..main") == "1"
    assert git(repo, "log", "-1", "--format=%P", "main") == before  # one parent: a squash, not a merge
    assert sorted(git(repo, "diff", "--name-only", before, "main").split()) == ["a1.txt", "a2.txt", "s.txt"]
    msg = git(repo, "log", "-1", "--format=%B", "main")
    assert msg.startswith("Land a: hybridiso/a") and "* a: one" in msg and "* a: two" in msg


def test_merge_method_makes_one_merge_commit_per_agent(tmp_path: Path) -> None:
    repo = train_repo(tmp_path, CHECK + "  method: merge\n", ["a", "b"])
    agent_commit(repo, "a", {"a.txt": "a\n"})
    agent_commit(repo, "b", {"b.txt": "b\n"})
    land_json(repo, ok=True)
    assert first_parents(repo)[:2] == ["Land b: merge hybridiso/b", "Land a: merge hybridiso/a"]


def test_uncommitted_work_in_the_agents_environment_is_refused_naming_the_files(tmp_path: Path) -> None:
    repo = train_repo(tmp_path, CHECK, ["a", "b"])
    hybridiso(repo, "up")
    env_a = Path(f"{repo}.agents") / "a"
    env_b = Path(f"{repo}.agents") / "b"
    for env, name in ((env_a, "a"), (env_b, "b")):
        (env / f"{name}.txt").write_text(f"{name}\n")
        git(env, "add", f"{name}.txt")
        git(env, "commit", "-q", "-m", f"{name}: file")
    (env_a / "notes.md").write_text("not committed\n")
    (env_a / "app.txt").write_text("changed\n")
    data, proc = land_json(repo, ok=False)
    got = by_agent(data)
    assert got["a"]["result"] == "refused"
    assert "app.txt" in got["a"]["why"] and "notes.md" in got["a"]["why"] and "only commits land" in got["a"]["why"]
    assert got["b"]["result"] == "landed"
    assert (env_a / "notes.md").read_text() == "not committed\n" and (env_a / "app.txt").read_text() == "changed\n"
    # b's clean environment followed its branch onto main
    assert git(env_b, "rev-parse", "HEAD") == git(repo, "rev-parse", "main")
    assert git(env_b, "status", "--porcelain") == ""
    # gc now sees b merged
    rows = [line.split() for line in hybridiso(repo, "gc").stdout.splitlines()]
    assert ["remove", "merged", "b", "merged", "into", "main", "(ancestry)"] == rows[[r[2:3] for r in rows].index(["b"])][:7]
    assert [r[:3] for r in rows if r[2:3] == ["a"]] == [["keep", "kept", "a"]]


def test_target_checked_out_dirty_is_refused_and_nothing_of_the_users_touched(tmp_path: Path) -> None:
    repo = four(tmp_path)
    agent_commit(repo, "a", {"a.txt": "a\n"})
    (repo / "README.md").write_text("my edit\n")
    before = git(repo, "rev-parse", "main")
    proc = hybridiso(repo, "land", ok=False)
    assert proc.returncode == 1
    assert f"the target main is checked out at {repo} with uncommitted changes: README.md" in proc.stderr
    assert "next step: commit or stash them" in proc.stderr
    assert git(repo, "rev-parse", "main") == before and (repo / "README.md").read_text() == "my edit\n"
    # an untracked file the landing does not write does not block it
    (repo / "README.md").write_text("hello\n")
    (repo / "scratch-notes.txt").write_text("mine\n")
    land_json(repo, ok=True)
    assert (repo / "a.txt").read_text() == "a\n" and (repo / "scratch-notes.txt").read_text() == "mine\n"
    # one where it writes does
    agent_commit(repo, "b", {"notes.txt": "theirs\n"})
    (repo / "notes.txt").write_text("mine\n")
    data, _ = land_json(repo, ok=False)
    assert by_agent(data)["b"]["result"] == "refused" and "notes.txt" in by_agent(data)["b"]["why"]
    assert (repo / "notes.txt").read_text() == "mine\n"


def test_target_dirtied_during_a_check_stops_the_queue_untouched(tmp_path: Path) -> None:
    repo = train_repo(tmp_path, f'  check: ["echo edit > {tmp_path}/repo/README.md"]\n', ["a", "b"])
    agent_commit(repo, "a", {"a.txt": "a\n"})
    agent_commit(repo, "b", {"b.txt": "b\n"})
    before = git(repo, "rev-parse", "main")
    data, _ = land_json(repo, ok=False)
    got = by_agent(data)
    assert got["a"]["result"] == "refused" and "README.md" in got["a"]["why"]
    assert got["b"]["result"] == "skipped"
    assert git(repo, "rev-parse", "main") == before and (repo / "README.md").read_text() == "edit\n"


def test_status_shows_each_agents_last_land_result(tmp_path: Path) -> None:
    import json

    repo = four(tmp_path)
    agent_commit(repo, "a", {"a.txt": "a\n"})
    agent_commit(repo, "b", {"BROKEN": "x\n"})
    data, _ = land_json(repo, ok=False)
    rows = {r["agent"]: r for r in json.loads(hybridiso(repo, "status", "--json").stdout)}
    assert rows["a"]["land"]["result"] == "landed" and rows["a"]["land"]["landed"] == git(repo, "rev-parse", "main")
    assert rows["b"]["land"]["result"] == "failed" and rows["b"]["land"]["run"] == data["run"]
    assert rows["c"]["land"] is None  # never a candidate
    table = hybridiso(repo, "status").stdout.splitlines()
    assert "LAND" in table[0].split()
    col = table[0].index("LAND")  # columns are aligned; a state may hold spaces
    got = {line.split()[0]: line[col:].split()[0] for line in table[2:] if line.split() and line.split()[0] in "abcd"}
    assert got == {"a": "landed", "b": "failed", "c": "-", "d": "-"}
