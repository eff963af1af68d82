"""Backups (hybridiso/work/backups.py) and ``hybridiso restore`` on real repositories.

docs/faults.md row 27: backup names are unique and written create-only, so nothing ever
overwrites a backup; restoring creates new refs only, all or none.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from hybridiso.work import backups
from hybridiso.work.inventory import Tip
from tests.support.cli import hybridiso, write_manifest
from tests.support.gitrepo import commit_file, git, make_repo


def all_refs(repo: Path) -> dict[str, str]:
    return dict(reversed(line.split()) for line in git(repo, "for-each-ref", "--format=%(objectname) %(refname)").splitlines())


def test_a_backup_name_that_exists_is_never_overwritten(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = make_repo(tmp_path / "r")
    old = git(repo, "rev-parse", "HEAD")
    new = commit_file(repo, "b.txt", "b\n")
    git(repo, "update-ref", f"{backups.PREFIX}/a/TAKEN/files", old)
    ids = iter(["TAKEN", "FREE"])
    monkeypatch.setattr(backups, "new_id", lambda: next(ids))
    namespace = backups.save(repo, repo / ".git", "a", [Tip("files", new, None, "files")])
    assert namespace == f"{backups.PREFIX}/a/FREE"
    assert git(repo, "rev-parse", f"{backups.PREFIX}/a/TAKEN/files") == old  # untouched
    assert git(repo, "rev-parse", f"{namespace}/files") == new


def test_backups_within_one_second_get_their_own_names(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r")
    commits = [commit_file(repo, f"f{i}.txt", f"{i}\n") for i in range(5)]
    names = [backups.save(repo, repo / ".git", "a", [Tip("files", c, None, "files")]) for c in commits]
    assert len(set(names)) == 5 and len({n.split("/")[-1].split("-")[0] for n in names}) <= 2  # same second, mostly
    assert [git(repo, "rev-parse", f"{n}/files") for n in names] == commits


def test_objects_of_another_store_come_in_and_leave_no_temporary_refs(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r")
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(repo), str(clone))
    only_there = commit_file(clone, "c.txt", "only in the clone\n")
    git(clone, "tag", "-a", "-m", "annotated", "t1")
    tag = git(clone, "rev-parse", "t1")
    namespace = backups.save(repo, repo / ".git", "a", [Tip("refs/heads/x", only_there, clone, "refs"), Tip("refs/tags/t1", tag, clone, "refs")])
    assert git(repo, "rev-parse", f"{namespace}/refs/heads/x") == only_there
    assert git(repo, "cat-file", "-t", f"{namespace}/refs/tags/t1") == "tag"
    assert git(repo, "for-each-ref", backups.INCOMING) == ""


# --- hybridiso restore ----------------------------------------------------------------


def forced_backup(tmp_path: Path) -> tuple[Path, str]:
    """A clone agent with files, a side branch, a tag and a stash, removed by
    ``down --force``; returns the repository and the backup id."""
    repo = make_repo(tmp_path / "r", {"README.md": "hello\n"})
    write_manifest(repo, "agents:\n  - {name: a, isolation: clone}\n")
    hybridiso(repo, "up")
    e = tmp_path / "r.agents" / "a"
    (e / "README.md").write_text("stash me\n")
    git(e, "stash", "-q")
    git(e, "switch", "-q", "-c", "side")
    commit_file(e, "side.txt", "side\n")
    git(e, "tag", "-a", "-m", "msg", "v1")
    (e / "loose.txt").write_text("untracked\n")
    forced = hybridiso(repo, "down", "--force", "--json")
    m = re.search(r"hybridiso restore a (\S+)", forced.stderr)
    assert m, forced.stderr
    [row] = json.loads(forced.stdout)
    assert row["backup_ref"] == f"{backups.PREFIX}/a/{m.group(1)}" and row["restore"] == f"hybridiso restore a {m.group(1)}"
    return repo, m.group(1)


def test_restore_lists_dry_runs_restores_and_never_overwrites(tmp_path: Path) -> None:
    repo, backup = forced_backup(tmp_path)
    listing = json.loads(hybridiso(repo, "restore", "--json").stdout)
    assert [(b["agent"], b["backup"]) for b in listing] == [("a", backup)]
    keys = {p["key"] for p in listing[0]["pieces"]}
    assert keys == {"files", "refs/heads/side", "refs/tags/v1", "stash/0"}, keys  # its own branch has no commits: not a piece
    assert listing[0]["restore"] == f"hybridiso restore a {backup}"
    assert f"hybridiso restore a {backup}" in hybridiso(repo, "restore").stdout  # the table
    before = all_refs(repo)
    dry = hybridiso(repo, "restore", "a", backup, "--dry-run")
    assert f"would create restored/a/{backup}/files" in dry.stderr and all_refs(repo) == before
    done = json.loads(hybridiso(repo, "restore", "a", backup, "--json").stdout)
    made = {r["ref"] for r in done["created"]}
    assert made == {
        f"refs/heads/restored/a/{backup}/files",
        f"refs/heads/restored/a/{backup}/heads/side",
        f"refs/tags/restored/a/{backup}/v1",
        f"refs/heads/restored/a/{backup}/stash/0",
    }
    after = all_refs(repo)
    assert {n: o for n, o in after.items() if n not in made} == before  # only new refs, the backup kept
    assert git(repo, "show", f"restored/a/{backup}/files:loose.txt") == "untracked"
    assert git(repo, "cat-file", "-t", f"refs/tags/restored/a/{backup}/v1") == "tag"
    git(repo, "stash", "apply", "-q", f"restored/a/{backup}/stash/0")
    assert (repo / "README.md").read_text() == "stash me\n"
    git(repo, "checkout", "-q", "--", "README.md")
    # again: every name exists, nothing is overwritten
    again = hybridiso(repo, "restore", "a", backup, ok=False)
    assert again.returncode == 1 and "would overwrite" in again.stderr and "nothing was changed" in again.stderr
    assert all_refs(repo) == after


def test_restore_refuses_all_when_a_name_is_in_the_way(tmp_path: Path) -> None:
    repo, backup = forced_backup(tmp_path)
    git(repo, "branch", "restored/a")  # a branch where restore needs a directory of refs
    before = all_refs(repo)
    r = hybridiso(repo, "restore", "a", backup, ok=False)
    assert r.returncode == 1 and "nothing was changed" in r.stderr
    assert all_refs(repo) == before  # all or none


def test_restore_takes_the_ref_down_printed_and_names_unknown_backups(tmp_path: Path) -> None:
    repo, backup = forced_backup(tmp_path)
    wrong = hybridiso(repo, "restore", "a", "20990101T000000Z-000000", ok=False)
    assert wrong.returncode == 1 and f"its backups: {backup}" in wrong.stderr and "hybridiso restore a" in wrong.stderr
    assert "no backups of agent b" in hybridiso(repo, "restore", "b").stderr
    hybridiso(repo, "restore", f"{backups.PREFIX}/a/{backup}")
    assert git(repo, "rev-parse", "--verify", f"restored/a/{backup}/heads/side")


def test_a_backup_from_before_namespaces_is_listed_and_restored(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r")
    commit = commit_file(repo, "x.txt", "x\n")
    git(repo, "update-ref", f"{backups.PREFIX}/old/20250101-120000", commit)
    listing = json.loads(hybridiso(repo, "restore", "old", "--json").stdout)
    assert [(b["backup"], [p["key"] for p in b["pieces"]]) for b in listing] == [("20250101-120000", ["files"])]
    hybridiso(repo, "restore", "old", "20250101-120000")
    assert git(repo, "rev-parse", "restored/old/20250101-120000/files") == commit


def test_temporary_refs_a_killed_run_left_go_with_the_next_backup(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r")
    left = commit_file(repo, "l.txt", "l\n")
    git(repo, "update-ref", f"{backups.INCOMING}/123-dead/0/0", left)  # a down killed between its push and its transaction
    namespace = backups.save(repo, repo / ".git", "a", [Tip("files", left, None, "files")])
    assert git(repo, "for-each-ref", backups.INCOMING) == "" and git(repo, "rev-parse", f"{namespace}/files") == left
