"""``hybridiso sync`` on real repositories with a local bare repository as origin.

Covers: one fetch then rebase of clean envs, dirty ones skipped, a conflict in
one agent while the others succeed (aborted cleanly), setup re-run in exactly
the agents whose lockfile changed, clones fed from the local repository,
docs/faults.md row 11 (a git lock left in one env) and #18 (state file lost).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from tests.support.cli import hybridiso, state
from tests.support.gitrepo import commit_file, git, git_ok
from tests.gc.test_gc import env, make_project


def upstream_commit(tmp_path: Path, name: str, text: str) -> str:
    """Someone else pushes to origin/main."""
    other = tmp_path / "other"
    if not other.exists():
        git(tmp_path, "clone", "-q", str(tmp_path / "origin.git"), str(other))
    git(other, "pull", "-q", "--ff-only")
    return (commit_file(other, name, text) and git(other, "push", "-q", "origin", "main")) or git(other, "rev-parse", "HEAD")


def sync_rows(repo: Path, *args: str, ok: bool | None = True) -> tuple[dict[str, dict[str, Any]], str]:
    proc = hybridiso(repo, "sync", "--json", *args, ok=ok)
    data = json.loads(proc.stdout)
    return {r["agent"]: r for r in data["agents"]}, proc.stderr


def test_rebase_clean_skip_dirty_abort_conflict(tmp_path: Path) -> None:
    repo = make_project(
        tmp_path,
        "  - name: clean\n  - name: dirty\n  - name: clash\n  - name: fresh\n  - name: cl\n    isolation: clone\n",
    )
    hybridiso(repo, "up")
    commit_file(env(repo, "clean"), "clean.txt", "mine\n")
    commit_file(env(repo, "dirty"), "dirty.txt", "mine\n")
    (env(repo, "dirty") / "README.md").write_text("uncommitted\n")
    commit_file(env(repo, "clash"), "notes.txt", "1\nCLASH\n3\n")
    clash_tip = git(env(repo, "clash"), "rev-parse", "HEAD")
    commit_file(env(repo, "cl"), "cl.txt", "clone work\n")
    new_main = upstream_commit(tmp_path, "notes.txt", "1\nUPSTREAM\n3\n")

    rows, err = sync_rows(repo, ok=False)
    assert rows["clean"]["result"] == "rebased" and rows["fresh"]["result"] == "rebased"
    assert rows["cl"]["result"] == "rebased"
    assert rows["dirty"]["result"] == "skipped" and "README.md" in rows["dirty"]["detail"]
    assert rows["clash"]["result"] == "conflict" and "notes.txt" in rows["clash"]["detail"]
    assert "1 of 5 agents could not be synced" in err and "clash" in err
    assert git(repo, "rev-parse", "main") == new_main  # base fast-forwarded (it is checked out, clean)
    for name in ("clean", "fresh"):
        assert git_ok(repo, "merge-base", "--is-ancestor", new_main, f"hybridiso/{name}")
        assert (env(repo, name) / "notes.txt").read_text() == "1\nUPSTREAM\n3\n"
    assert (env(repo, "clean") / "clean.txt").exists()
    # the clone got base from the local repository and rebased its own branch
    assert (env(repo, "cl") / "notes.txt").read_text() == "1\nUPSTREAM\n3\n"
    assert (env(repo, "cl") / "cl.txt").exists()
    # the conflict was aborted cleanly: same tip, clean tree, no rebase in progress
    clash = env(repo, "clash")
    assert git(clash, "rev-parse", "HEAD") == clash_tip
    assert git(clash, "status", "--porcelain", "--untracked-files=no") == ""
    assert not Path(git(clash, "rev-parse", "--git-path", "rebase-merge")).is_absolute() or not Path(
        git(clash, "rev-parse", "--git-path", "rebase-merge")
    ).exists()
    assert not (clash / git(clash, "rev-parse", "--git-path", "rebase-merge")).exists()
    # dirty work untouched
    assert (env(repo, "dirty") / "README.md").read_text() == "uncommitted\n"
    # the table for people
    proc = hybridiso(repo, "sync", ok=False)
    assert "conflict" in proc.stdout and "up to date" in proc.stdout
    assert "in clash's environment `git rebase main`, and resolve it by hand" in proc.stderr, proc.stderr


def test_setup_reruns_only_where_a_lockfile_changed(tmp_path: Path) -> None:
    log = tmp_path / "setup-runs.log"
    agents = "  - name: a\n  - name: b\n  - name: c\n"
    repo = make_project(tmp_path, agents)
    manifest = (repo / "hybridiso.yaml").read_text().replace(
        "agents:\n", f"defaults:\n  setup: ['echo $HYBRIDISO_AGENT >> {log}']\nagents:\n"
    )
    (repo / "hybridiso.yaml").write_text(manifest)
    git(repo, "commit", "-q", "-am", "setup")
    git(repo, "push", "-q", "origin", "main")
    hybridiso(repo, "up")

    def runs() -> dict[str, int]:
        names = log.read_text().split()
        return {n: names.count(n) for n in ("a", "b", "c")}

    assert runs() == {"a": 1, "b": 1, "c": 1}
    # a's own branch changes its lockfile; nothing upstream
    commit_file(env(repo, "a"), "requirements.txt", "flask==3.0\n")
    rows, _ = sync_rows(repo)
    assert {n: r["setup"] for n, r in rows.items()} == {"a": "re-ran", "b": "unchanged", "c": "unchanged"}
    assert runs() == {"a": 2, "b": 1, "c": 1}
    # upstream changes a lockfile; c is dirty and skipped, so only a and b get it
    (env(repo, "c") / "wip.txt").write_text("wip\n")
    upstream_commit(tmp_path, "uv.lock", "version = 1\n")
    rows, _ = sync_rows(repo)
    assert rows["c"]["result"] == "skipped"
    assert {n: r["setup"] for n, r in rows.items()} == {"a": "re-ran", "b": "re-ran", "c": "-"}
    assert runs() == {"a": 3, "b": 2, "c": 1}
    # nothing changed: nothing re-runs
    os.unlink(env(repo, "c") / "wip.txt")
    rows, _ = sync_rows(repo, "a", "b")
    assert set(rows) == {"a", "b"} and {r["setup"] for r in rows.values()} == {"unchanged"}
    assert runs() == {"a": 3, "b": 2, "c": 1}


def test_stale_git_lock_in_one_env_is_reported_others_sync(tmp_path: Path) -> None:
    repo = make_project(tmp_path, "  - name: stuck\n  - name: ok\n")
    hybridiso(repo, "up")
    commit_file(env(repo, "stuck"), "s.txt", "s\n")
    commit_file(env(repo, "ok"), "o.txt", "o\n")
    upstream_commit(tmp_path, "up.txt", "up\n")
    lock = repo / ".git" / "worktrees" / "stuck" / "index.lock"
    lock.write_text("")
    an_hour_ago = time.time() - 3600
    os.utime(lock, (an_hour_ago, an_hour_ago))
    rows, err = sync_rows(repo, ok=False)
    assert rows["ok"]["result"] == "rebased"
    assert rows["stuck"]["result"] == "failed"
    detail = rows["stuck"]["detail"]
    age = re.search(rf"{re.escape(str(lock))} is (\d+) s old", detail)
    assert age is not None and 3600 <= int(age.group(1)) < 3700, detail
    doctor = json.loads(hybridiso(repo, "doctor", "--json").stdout)
    locks = next(c for c in doctor if c["name"] == "stale git locks")
    assert locks["status"] == "warn" and str(lock) in locks["detail"]
    # a lock that its owner releases shortly is waited for (bounded retry)
    lock.unlink()
    commit_file(repo, "local.txt", "local\n")
    lock.write_text("")
    threading.Timer(0.4, lock.unlink).start()
    rows, _ = sync_rows(repo, "stuck")
    assert rows["stuck"]["result"] == "rebased"


def test_sync_with_lost_state_and_base_checked_out_dirty(tmp_path: Path) -> None:
    repo = make_project(tmp_path, "  - name: a\n")
    hybridiso(repo, "up")
    commit_file(env(repo, "a"), "a.txt", "a\n")
    (repo / ".git" / "hybridiso" / "state.json").unlink()
    old_main = git(repo, "rev-parse", "main")
    upstream_commit(tmp_path, "README.md", "upstream readme\n")
    (repo / "README.md").write_text("local edit git must not overwrite\n")
    rows, err = sync_rows(repo)
    assert "left alone" in err
    assert git(repo, "rev-parse", "main") == old_main
    assert (repo / "README.md").read_text() == "local edit git must not overwrite\n"
    assert rows["a"]["result"] == "up to date"  # onto the local main, which did not move
    assert "a" in state(repo)["agents"]  # adopted from git


def test_a_base_checked_out_nowhere_is_moved_too(tmp_path: Path) -> None:
    """The user works on another branch: main is checked out in no worktree,
    so nothing can be overwritten, and it is fast-forwarded to origin/main
    like a checked-out one; the agents rebase onto the new main."""
    repo = make_project(tmp_path, "  - name: a\n  - {name: cl, isolation: clone}\n")
    hybridiso(repo, "up")
    commit_file(env(repo, "a"), "a.txt", "a\n", "a work")
    git(repo, "switch", "-q", "-c", "elsewhere")
    new_main = upstream_commit(tmp_path, "up.txt", "upstream\n")
    assert git(repo, "rev-parse", "main") != new_main
    rows, err = sync_rows(repo)
    assert git(repo, "rev-parse", "main") == new_main, err
    assert "main fast-forwarded to origin/main" in err
    assert git(repo, "rev-parse", "--abbrev-ref", "HEAD") == "elsewhere" and not (repo / "up.txt").exists()  # the user's checkout untouched
    for name in ("a", "cl"):
        assert rows[name]["result"] == "rebased", rows[name]
        assert (env(repo, name) / "up.txt").read_text() == "upstream\n"
    assert git(env(repo, "a"), "log", "--format=%s", f"{new_main}..HEAD").splitlines() == ["a work"]


def test_sync_with_no_environments_says_so(tmp_path: Path) -> None:
    repo = make_project(tmp_path, "  - name: a\n")
    r = hybridiso(repo, "sync")
    assert r.stdout == "" and "no environments to sync: `hybridiso up` creates them" in r.stderr


def test_down_after_sync_counts_only_the_clones_own_commits(tmp_path: Path) -> None:
    """Issue 11: the clone's copy of base must move with sync, or `down` takes
    base's new commits for the agent's own ("3 commits not in base")."""
    repo = make_project(tmp_path, "  - name: cl\n    isolation: clone\n")
    hybridiso(repo, "up")
    mine = commit_file(env(repo, "cl"), "mine.txt", "agent work\n", "agent work")
    upstream_commit(tmp_path, "u1.txt", "1\n")
    new_main = upstream_commit(tmp_path, "u2.txt", "2\n")
    rows, _ = sync_rows(repo)
    assert rows["cl"]["result"] == "rebased"
    clone = env(repo, "cl")
    assert git(clone, "rev-parse", "refs/remotes/hybridiso-base/main") == new_main
    r = hybridiso(repo, "down", "--dry-run", ok=False)
    assert "1 commits not in base" in r.stderr and "agent work" in r.stderr, r.stderr
    assert "u1.txt" not in r.stderr and "u2.txt" not in r.stderr
    assert git(clone, "log", "-1", "--format=%s") == "agent work" and mine  # nothing touched
    hybridiso(repo, "down", "--keep-branch")
    assert git(repo, "show", "hybridiso/cl:mine.txt") == "agent work"


# --- docs/faults.md row 35: base force-pushed upstream --------------------------------------


def _push_secret_then_purge(tmp_path: Path, repo: Path) -> tuple[str, str]:
    """Upstream pushes a commit with a secret, the repository takes it, and
    the agents are made on top of it; returns (secret commit, repo)."""
    secret = upstream_commit(tmp_path, "secret.txt", "password=hunter2\n")
    git(repo, "pull", "-q", "--ff-only")
    assert git(repo, "rev-parse", "main") == secret
    return secret, git(repo, "rev-parse", "main")


def _purge(tmp_path: Path) -> str:
    """Upstream drops the secret commit (reset + force-push) and moves on."""
    other = tmp_path / "other"
    git(other, "fetch", "-q")
    git(other, "reset", "-q", "--hard", "origin/main~1")
    commit_file(other, "after.txt", "after the purge\n", "after the purge")
    git(other, "push", "-q", "--force", "origin", "main")
    return git(other, "rev-parse", "HEAD")


def _branches_containing(cwd: Path, commit: str) -> list[str]:
    return git(cwd, "branch", "--format=%(refname:short)", "--contains", commit).split()


def test_force_pushed_base_never_brings_the_removed_commit_back(tmp_path: Path) -> None:
    repo = make_project(tmp_path, "  - name: wt\n  - name: fresh\n  - name: cl\n    isolation: clone\n")
    secret, _ = _push_secret_then_purge(tmp_path, repo)
    hybridiso(repo, "up")
    mine = {n: commit_file(env(repo, n), f"{n}.txt", f"{n} work\n", f"{n} work") for n in ("wt", "cl")}
    assert git(env(repo, "cl"), "branch", "--format=%(refname:short)") == "hybridiso/cl"  # no stale copy of main
    # clones made before that kept git clone's local main: it must follow too
    git(env(repo, "cl"), "branch", "main", "refs/remotes/hybridiso-base/main")
    purged = _purge(tmp_path)

    rows, err = sync_rows(repo)
    assert "origin/main was rewritten (force-pushed): main had no commits of its own" in err, err
    assert git(repo, "rev-parse", "main") == purged  # followed the rewrite: it had nothing of its own
    assert (repo / "after.txt").exists() and not (repo / "secret.txt").exists()
    for n in ("wt", "fresh", "cl"):
        assert rows[n]["result"] == "rebased", rows[n]
        assert rows[n]["dropped"] == 1 and "base was rewritten" in rows[n]["detail"]
        assert rows[n]["old_base"] == secret[:8] and rows[n]["old_base_from"] == "record"
        e = env(repo, n)
        assert not (e / "secret.txt").exists() and (e / "after.txt").read_text() == "after the purge\n"
        assert git_ok(e, "merge-base", "--is-ancestor", purged, "HEAD")
        assert git_ok(e, "merge-base", "--is-ancestor", secret, "HEAD") is False
    # no branch of the repository or of the clone holds the secret any more
    assert _branches_containing(repo, secret) == []
    assert _branches_containing(env(repo, "cl"), secret) == []
    assert git(env(repo, "cl"), "rev-parse", "main") == purged
    # the agents' own commits are kept, one each, on top of the new base
    for n in ("wt", "cl"):
        e = env(repo, n)
        assert (e / f"{n}.txt").read_text() == f"{n} work\n"
        assert git(e, "log", "--format=%s", f"{purged}..HEAD").splitlines() == [f"{n} work"]
        assert git(e, "rev-parse", "HEAD") != mine[n]  # replayed, not the old commit
    assert git(env(repo, "fresh"), "rev-parse", "HEAD") == purged
    # the record forks from the new base now: a second sync changes nothing
    rows, _ = sync_rows(repo)
    assert {r["result"] for r in rows.values()} == {"up to date"}
    # down of the clone counts its one commit, not base's
    r = hybridiso(repo, "down", "cl", "--dry-run", ok=False)
    assert "1 commits not in base: " in r.stderr and "cl work" in r.stderr


def test_force_pushed_remote_base_and_a_record_that_lost_its_base(tmp_path: Path) -> None:
    """``base: origin/main`` moves with the fetch; an agent whose recorded base
    is not in its history (a tampered or rebuilt record) falls back to the
    fork point from base's reflog and says so; one whose recorded base is
    gone entirely gets the merge base, also said."""
    repo = make_project(tmp_path, "  - name: a\n  - name: b\n")
    (repo / "hybridiso.yaml").write_text((repo / "hybridiso.yaml").read_text().replace("base: main", "base: origin/main"))
    git(repo, "commit", "-q", "-am", "base: origin/main")
    secret = upstream_commit(tmp_path, "secret.txt", "password=hunter2\n")
    git(repo, "fetch", "-q", "origin")
    hybridiso(repo, "up")
    for n in ("a", "b"):
        commit_file(env(repo, n), f"{n}.txt", f"{n}\n", f"{n} work")
    purged = _purge(tmp_path)
    # a's record names a commit that is not in its history
    data = state(repo)
    data["agents"]["a"]["base_commit"] = git(repo, "rev-parse", "main")  # the local main: not under a's branch
    (repo / ".git" / "hybridiso" / "state.json").write_text(json.dumps(data))
    rows, err = sync_rows(repo)
    for n in ("a", "b"):
        assert rows[n]["result"] == "rebased"
        assert git_ok(env(repo, n), "merge-base", "--is-ancestor", secret, "HEAD") is False
        assert not (env(repo, n) / "secret.txt").exists()
        assert git(env(repo, n), "log", "--format=%s", f"{purged}..HEAD").splitlines() == [f"{n} work"]
    assert rows["a"]["old_base_from"] == "fork point"
    assert rows["a"]["old_base"] == secret[:8] and "its recorded base is older or not in its history" in rows["a"]["detail"]
    assert rows["b"]["old_base_from"] == "record"
    assert _branches_containing(repo, secret) == []  # the local main never took it


def test_force_push_while_base_has_commits_or_changes_of_its_own(tmp_path: Path) -> None:
    """main with a local commit of its own is never moved (diverged, said);
    main with uncommitted changes the move would overwrite is left alone too."""
    repo = make_project(tmp_path, "  - name: a\n")
    _push_secret_then_purge(tmp_path, repo)
    hybridiso(repo, "up")
    _purge(tmp_path)
    (repo / "secret.txt").write_text("edited locally, not committed\n")
    before = git(repo, "rev-parse", "main")
    rows, err = sync_rows(repo)
    assert "was rewritten (force-pushed) and main has none of its own commits" in err
    assert "left alone" in err and "reset --keep" in err
    assert git(repo, "rev-parse", "main") == before
    assert (repo / "secret.txt").read_text() == "edited locally, not committed\n"
    assert rows["a"]["result"] == "up to date"  # onto the local main, which did not move
    # a commit of its own: diverged, main untouched
    (repo / "secret.txt").write_text("password=hunter2\n")
    mine = commit_file(repo, "local.txt", "local\n", "local work on main")
    rows, err = sync_rows(repo)
    assert "main and origin/main have diverged; main was left alone" in err
    assert git(repo, "rev-parse", "main") == mine


def test_recorded_base_gone_and_no_reflog_falls_back_to_the_merge_base(tmp_path: Path) -> None:
    repo = make_project(tmp_path, "  - name: a\n")
    hybridiso(repo, "up")
    commit_file(env(repo, "a"), "a.txt", "a\n", "a work")
    new_main = upstream_commit(tmp_path, "up.txt", "up\n")
    data = state(repo)
    data["agents"]["a"]["base_commit"] = "0" * 40  # not a commit at all
    (repo / ".git" / "hybridiso" / "state.json").write_text(json.dumps(data))
    git(repo, "config", "core.logAllRefUpdates", "false")  # and no reflog to find a fork point in
    shutil.rmtree(repo / ".git" / "logs")
    rows, _ = sync_rows(repo)
    row = rows["a"]
    assert row["result"] == "rebased" and row["old_base_from"] == "merge base" and row["dropped"] == 0
    assert "replayed its commits after the merge base" in row["detail"]
    assert git(env(repo, "a"), "log", "--format=%s", f"{new_main}..HEAD").splitlines() == ["a work"]
    assert state(repo)["agents"]["a"]["base_commit"] == new_main


def test_a_sync_killed_mid_rebase_is_named_on_the_next_sync(tmp_path: Path) -> None:
    """kill -9 during an agent's rebase leaves git mid-rebase there: the next
    sync skips it and says what to run, the others sync, nothing is lost."""
    repo = make_project(tmp_path, "  - name: a\n  - name: b\n")
    hybridiso(repo, "up")
    mine = commit_file(env(repo, "a"), "notes.txt", "1\nMINE\n3\n", "a work")
    upstream_commit(tmp_path, "notes.txt", "1\nTHEIRS\n3\n")
    upstream_commit(tmp_path, "other.txt", "x\n")
    # what a killed sync leaves: a rebase stopped half-way (here on a conflict)
    git(repo, "fetch", "-q", "origin")
    git(env(repo, "a"), "rebase", "-q", "origin/main", check=False)
    assert (repo / ".git" / "worktrees" / "a" / "rebase-merge").is_dir()
    rows, _ = sync_rows(repo)
    assert rows["a"]["result"] == "skipped"
    assert "a rebase is in progress there: finish it (git rebase --continue) or undo it (git rebase --abort)" in rows["a"]["detail"]
    assert rows["b"]["result"] == "rebased"
    git(env(repo, "a"), "rebase", "--abort")
    assert git(env(repo, "a"), "rev-parse", "HEAD") == mine


def test_an_agent_that_merged_base_itself_loses_the_purged_commit_too(tmp_path: Path) -> None:
    """The secret reached the agent through its own `git merge main`, after
    its recorded base: the fork point from base's reflog is later, and the
    rebase starts there, so the secret is not replayed as a plain commit."""
    repo = make_project(tmp_path, "  - name: a\n")
    hybridiso(repo, "up")
    commit_file(env(repo, "a"), "a1.txt", "1\n", "a work 1")
    secret = upstream_commit(tmp_path, "secret.txt", "password=hunter2\n")
    git(repo, "pull", "-q", "--ff-only")
    git(env(repo, "a"), "merge", "-q", "--no-edit", "main")  # the agent takes base in itself
    commit_file(env(repo, "a"), "a2.txt", "2\n", "a work 2")
    purged = _purge(tmp_path)
    rows, _ = sync_rows(repo)
    row = rows["a"]
    assert row["result"] == "rebased" and row["old_base_from"] == "fork point" and row["old_base"] == secret[:8]
    assert "change secret.txt" in row["detail"] and "left out" in row["detail"]
    a = env(repo, "a")
    assert not (a / "secret.txt").exists()
    assert "change secret.txt" not in git(a, "log", "--format=%s", f"{purged}..HEAD")
    assert (a / "a1.txt").exists() and (a / "a2.txt").exists()
