"""What proves a clone's commits safe, and what gc makes of a clone whose
record is gone (attack11 #3, #4, #5).

- A clone's own linked worktree (``git -C <clone> worktree add /elsewhere``)
  keeps its HEAD and reflog in the clone's git dir: its commits are work, and
  one placed outside the clone makes ``down`` refuse, naming it.
- Only the main repository's refs prove a commit safe: the clone's own
  remote-tracking refs (``hybridiso-base/*``, ``origin/*``) are refs the
  agent can write, and may name a branch the user deleted since.
- gc judges an orphan clone with down's own inventory.

Every fault is made for real (git repositories in temp dirs, the CLI), and
each story ends with nothing lost: refused, kept by gc, saved by
``down --force`` and brought back by ``hybridiso restore``.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.support.cli import hybridiso, write_manifest
from tests.support.gitrepo import commit_file, git
from tests.work.test_work import Expect, env, merge_agent_branch, project, refs, run_the_story


# --- #3: a linked worktree of the clone, outside it -----------------------------------


def test_commits_in_a_linked_worktree_of_the_clone_outside_it_are_never_lost(tmp_path: Path) -> None:
    repo = project(tmp_path, "clone")
    merge_agent_branch(repo, "clone")
    e, outside = env(repo, "a"), tmp_path / "outwt"
    git(e, "worktree", "add", "-q", "--detach", str(outside), "HEAD")
    commit = commit_file(outside, "out.txt", "made in the outside worktree\n", "OUTWT work")
    run_the_story(
        repo,
        Expect(
            ["1 linked worktree of it elsewhere", str(outside), "1 commit on no branch (HEAD reflog)", "OUTWT work"],
            {"detached/0": commit},
            {"detached/0:out.txt": "made in the outside worktree\n"},
        ),
    )
    # the worktree's own files are outside the clone: down never touched them
    assert (outside / "out.txt").read_text() == "made in the outside worktree\n"


def test_a_clean_outside_worktree_of_the_clone_still_refuses_plain_down(tmp_path: Path) -> None:
    """No commit of its own, but removing the clone breaks it (its .git file
    names the clone's git dir): refused, its path named; --force goes on."""
    repo = project(tmp_path, "clone")
    e, outside = env(repo, "a"), tmp_path / "clean-wt"
    git(e, "worktree", "add", "-q", "--detach", str(outside), "HEAD")
    refused = hybridiso(repo, "down", "a", ok=False)
    assert refused.returncode == 1
    assert f"1 linked worktree of it elsewhere: {outside} (removal breaks it)" in refused.stderr, refused.stderr
    assert "worktree remove" in refused.stderr and e.is_dir()
    git(e, "worktree", "remove", str(outside))
    hybridiso(repo, "down", "a")
    assert not e.exists()


# --- #4: the clone's remote-tracking refs prove nothing -------------------------------


def test_a_branch_pushed_to_the_repository_then_deleted_there_is_not_safe(tmp_path: Path) -> None:
    repo = project(tmp_path, "clone")
    merge_agent_branch(repo, "clone")
    e = env(repo, "a")
    git(e, "switch", "-q", "-c", "wip")
    commit = commit_file(e, "wip.txt", "pushed, then deleted upstream\n", "WIP work")
    git(e, "push", "-q", "hybridiso-base", "wip")
    git(e, "switch", "-q", "hybridiso/a")
    git(repo, "branch", "-q", "-D", "wip")  # the user deletes it in the repository
    assert git(e, "rev-parse", "refs/remotes/hybridiso-base/wip") == commit  # only the clone's copy is left
    hint = hybridiso(repo, "down", "a", ok=False).stderr
    assert "only its own refs prove a commit safe" in hint, hint
    run_the_story(
        repo,
        Expect(
            ["branch wip (1 commit)", "remote-tracking ref hybridiso-base/wip (1 commit)"],
            {"heads/wip": commit, "remotes/hybridiso-base/wip": commit},
            {"heads/wip:wip.txt": "pushed, then deleted upstream\n"},
        ),
    )


def test_a_forged_remote_tracking_ref_hides_nothing(tmp_path: Path) -> None:
    """``git update-ref refs/remotes/origin/x``: the repository has no
    remote named origin at all, and the clone's ref is the only one."""
    repo = project(tmp_path, "clone")
    merge_agent_branch(repo, "clone")
    e = env(repo, "a")
    git(e, "checkout", "-q", "--detach")
    commit = commit_file(e, "hidden.txt", "hidden behind a forged ref\n", "forged-ref work")
    git(e, "update-ref", "refs/remotes/origin/x", "HEAD")
    git(e, "checkout", "-q", "hybridiso/a")
    git(e, "reflog", "expire", "--expire=now", "--all")  # only the forged ref holds it now
    run_the_story(
        repo,
        Expect(["remote-tracking ref origin/x (1 commit)"], {"remotes/origin/x": commit}, {"remotes/origin/x:hidden.txt": "hidden behind a forged ref\n"}),
    )


def test_commits_the_repository_holds_are_still_safe(tmp_path: Path) -> None:
    """The other side: a branch pushed into the repository and kept there is
    proof (the clone's copies of it are not work), so down goes through."""
    repo = project(tmp_path, "clone")
    e = env(repo, "a")
    commit = commit_file(e, "kept.txt", "in the repository too\n", "pushed work")
    git(e, "push", "-q", "hybridiso-base", "hybridiso/a:refs/heads/kept")
    git(e, "fetch", "-q", "hybridiso-base")
    hybridiso(repo, "down", "a")
    assert git(repo, "rev-parse", "refs/heads/kept") == commit


# --- #5: gc and a clone whose record is gone ------------------------------------------


def lose_the_state(repo: Path) -> None:
    write_manifest(repo, "version: 1\nbase: main\nagents:\n  - {name: bystander, isolation: worktree}\n")
    (repo / ".git" / "hybridiso" / "state.json").unlink()


def gc_orphan(repo: Path, path: Path) -> dict[str, object]:
    data = json.loads(hybridiso(repo, "gc", "--yes", "--json").stdout)
    return {f["target"]: f for f in data["findings"]}[str(path)]


def test_gc_keeps_an_orphan_clone_with_a_commit_on_a_detached_head(tmp_path: Path) -> None:
    repo = project(tmp_path, "clone")
    e = env(repo, "a")
    git(e, "checkout", "-q", "--detach")
    commit = commit_file(e, "d.txt", "detached\n", "DETACHED-WORK")
    git(e, "checkout", "-q", "hybridiso/a")
    refused = hybridiso(repo, "down", "a", "--dry-run", ok=False)
    assert "1 commit on no branch (HEAD reflog)" in refused.stderr, refused.stderr
    before = refs(repo)
    lose_the_state(repo)
    finding = gc_orphan(repo, e)
    assert finding["action"] == "keep" and finding["kind"] == "orphan-dir", finding
    assert "1 commit on no branch (HEAD reflog)" in str(finding["reason"]) and "DETACHED-WORK" in str(finding["reason"]), finding
    assert git(e, "cat-file", "-t", commit) == "commit" and git(e, "reflog", "show", "--format=%H", "HEAD").count(commit)
    assert refs(repo) == before


def test_gc_keeps_an_orphan_clone_with_an_edited_agent_level_include(tmp_path: Path) -> None:
    repo = project(tmp_path, "clone", extra=", include: [secrets.json]")
    (repo / ".gitignore").write_text(".env\nsecrets.json\n")
    git(repo, "commit", "-q", "-am", "ignore secrets")
    (repo / "secrets.json").write_text('{"token": "the user\'s"}\n')
    hybridiso(repo, "down", "a")
    hybridiso(repo, "up")
    e = env(repo, "a")
    assert (e / "secrets.json").read_text() == '{"token": "the user\'s"}\n'  # copied in
    (e / "secrets.json").write_text('{"token": "edited by the agent"}\n')
    lose_the_state(repo)  # the agent-level pattern goes with the manifest entry and the record
    finding = gc_orphan(repo, e)
    assert finding["action"] == "keep", finding
    assert "1 ignored but precious: secrets.json" in str(finding["reason"]), finding
    assert (e / "secrets.json").read_text() == '{"token": "edited by the agent"}\n'


def test_gc_still_removes_a_clean_orphan_clone_with_an_unchanged_include(tmp_path: Path) -> None:
    """The control: a copy nobody changed is no work, and a clone with
    nothing else is removed as before."""
    repo = project(tmp_path, "clone", extra=", include: [secrets.json]")
    (repo / ".gitignore").write_text(".env\nsecrets.json\n")
    git(repo, "commit", "-q", "-am", "ignore secrets")
    (repo / "secrets.json").write_text("{}\n")
    hybridiso(repo, "down", "a")
    hybridiso(repo, "up")
    e = env(repo, "a")
    assert (e / "secrets.json").is_file()
    lose_the_state(repo)
    finding = gc_orphan(repo, e)
    assert finding["action"] == "remove" and finding["result"] == "removed", finding
    assert not e.exists()


def test_gc_keeps_an_orphan_clone_whose_worktree_elsewhere_holds_commits(tmp_path: Path) -> None:
    repo = project(tmp_path, "clone")
    e, outside = env(repo, "a"), tmp_path / "outwt"
    git(e, "worktree", "add", "-q", "--detach", str(outside), "HEAD")
    commit = commit_file(outside, "o.txt", "o\n", "outside work")
    lose_the_state(repo)
    finding = gc_orphan(repo, e)
    assert finding["action"] == "keep", finding
    assert str(outside) in str(finding["reason"]) and "outside work" in str(finding["reason"]), finding
    assert git(outside, "rev-parse", "HEAD") == commit
    shutil.rmtree(outside)  # gone and not locked: its commit still counts (the reflog is in the clone)
    finding = gc_orphan(repo, e)
    assert finding["action"] == "keep" and "outside work" in str(finding["reason"]), finding
    assert git(e, "cat-file", "-t", commit) == "commit"
