"""Work outside the agent branch: ``down``, ``gc`` and rollback see it, ``--force``
saves all of it, ``hybridiso restore`` brings every piece back (issue 11).

docs/faults.md row 23 (stash, other branches and tags, detached HEAD, HEAD on another
branch, submodule commits), 24 (an environment git cannot read), 25 (work in an
unfinished environment), 27 (two forced removals within a second), 5 (an
include edited after its agent left the manifest).

Every place work can hide is made for real, in an agent whose branch is
MERGED into main -- so ``gc --yes`` would remove it if it judged the branch
alone -- and then: ``down`` refuses naming it, ``gc --yes`` keeps it,
``down --force`` saves it, the restore command ``down`` printed brings each
piece back (same commit ids, same file content), and no other ref or
environment was touched.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.cli import hybridiso, state, status_json, write_manifest
from tests.support.gitrepo import commit_file, git, git_ok, make_repo

RESTORE_RE = re.compile(r"bring it back: (hybridiso restore (\S+) (\S+))")


# --- a project with one agent under test and one bystander ---------------------------


def project(tmp_path: Path, isolation: str, *, submodule: bool = False, extra: str = "") -> Path:
    repo = make_repo(tmp_path / "r", {"README.md": "hello\n", "src/app.py": "print(1)\n", ".gitignore": ".env\n"})
    if submodule:
        lib = make_repo(tmp_path / "lib", {"lib.txt": "lib\n"})
        git(repo, "submodule", "add", "-q", str(lib), "vendor/lib")
        git(repo, "commit", "-q", "-m", "add submodule")
    write_manifest(repo, f"agents:\n  - {{name: a, isolation: {isolation}{extra}}}\n  - {{name: bystander, isolation: worktree}}\n")
    git(repo, "add", "hybridiso.yaml")
    git(repo, "commit", "-q", "-m", "manifest")
    hybridiso(repo, "up")
    (env(repo, "bystander") / "busy.txt").write_text("the bystander's own work\n")
    return repo


def env(repo: Path, name: str) -> Path:
    return repo.parent / "r.agents" / name


def merge_agent_branch(repo: Path, isolation: str) -> str:
    """Commit on the agent's branch and merge it into main, as a finished
    agent would: gc's verdict on the branch is then "merged"."""
    e = env(repo, "a")
    commit_file(e, "feature.txt", "done\n", "the feature")
    if isolation == "clone":
        git(e, "push", "-q", str(repo), "hybridiso/a:refs/heads/to-merge")
        git(repo, "merge", "-q", "--no-ff", "-m", "merge the feature", "to-merge")
        git(repo, "branch", "-q", "-D", "to-merge")
    else:
        git(repo, "merge", "-q", "--no-ff", "-m", "merge the feature", "hybridiso/a")
    return git(e, "rev-parse", "HEAD")


def refs(repo: Path) -> dict[str, str]:
    """Every ref of the repository but the backups and what restore made."""
    lines = git(repo, "for-each-ref", "--format=%(refname) %(objectname)").splitlines()
    return {n: o for n, o in (line.split() for line in lines) if not n.startswith(("refs/hybridiso/", "refs/heads/restored/", "refs/tags/restored/", "refs/notes/restored/"))}


def gc_finding(repo: Path, target: str) -> dict[str, object]:
    data = json.loads(hybridiso(repo, "gc", "--yes", "--json").stdout)
    return {f["target"]: f for f in data["findings"]}[target]


def restored(repo: Path, agent: str, backup: str, piece: str) -> str:
    return git(repo, "rev-parse", "--verify", f"restored/{agent}/{backup}/{piece}")


def bystander_intact(repo: Path) -> None:
    assert (env(repo, "bystander") / "busy.txt").read_text() == "the bystander's own work\n"
    assert status_json(repo)["bystander"]["state"] == "ready"


@dataclass
class Expect:
    words: list[str]  # in down's refusal and gc's reason
    pieces: dict[str, str] = field(default_factory=dict)  # restored piece -> the commit (or tag) id it must have
    files: dict[str, str] = field(default_factory=dict)  # "piece:path" -> content
    kept_refs: dict[str, str] = field(default_factory=dict)  # refs of the repository that must survive down --force


def run_the_story(repo: Path, expect: Expect) -> None:
    e = env(repo, "a")
    before = refs(repo)
    refused = hybridiso(repo, "down", "a", ok=False)
    assert refused.returncode == 1
    for word in expect.words:
        assert word in refused.stderr, refused.stderr
    assert "--force" in refused.stderr and e.is_dir()
    finding = gc_finding(repo, "a")
    assert finding["action"] == "keep" and finding["result"] == "kept", finding
    for word in expect.words:
        assert word in str(finding["reason"]), finding
    assert e.is_dir() and refs(repo) == before  # gc --yes took nothing
    forced = hybridiso(repo, "down", "a", "--force")
    m = RESTORE_RE.search(forced.stderr)
    assert m, forced.stderr
    assert not e.exists()
    agent, backup = m.group(2), m.group(3)
    restore = hybridiso(repo, *m.group(1).split()[1:])
    assert "created" in restore.stderr
    for piece, oid in expect.pieces.items():
        ref = f"refs/tags/restored/{agent}/{backup}/{piece.removeprefix('tags/')}" if piece.startswith("tags/") else f"restored/{agent}/{backup}/{piece}"
        assert git(repo, "rev-parse", "--verify", ref) == oid, piece
    for where, text in expect.files.items():
        piece, _, path = where.partition(":")
        assert git(repo, "show", f"restored/{agent}/{backup}/{piece}:{path}") + "\n" == text, where
    after = refs(repo)
    expected_after = {n: o for n, o in before.items() if n != "refs/heads/hybridiso/a"}  # down deletes the (merged) branch it made
    assert {n: o for n, o in after.items() if n != "refs/heads/hybridiso/a"} == expected_after
    for name, oid in expect.kept_refs.items():
        assert after.get(name) == oid, name
    bystander_intact(repo)


# --- the places work hides -------------------------------------------------------------


def clone_stash(repo: Path) -> Expect:
    e = env(repo, "a")
    (e / "README.md").write_text("stashed change\n")
    git(e, "stash", "-q")
    (e / "brand-new.txt").write_text("stashed untracked file\n")
    git(e, "stash", "-q", "-u")
    first, second = git(e, "rev-parse", "stash@{0}"), git(e, "rev-parse", "stash@{1}")
    return Expect(
        ["2 stash entries", "stash@{0}", "stash@{1}"],
        {"stash/0": first, "stash/1": second},
        {"stash/1:README.md": "stashed change\n"},
    )


def clone_side_branch(repo: Path) -> Expect:
    e = env(repo, "a")
    git(e, "switch", "-q", "-c", "side")
    tip = commit_file(e, "side.txt", "on a side branch\n", "side work")
    git(e, "switch", "-q", "hybridiso/a")
    return Expect(["branch side (1 commit)"], {"heads/side": tip}, {"heads/side:side.txt": "on a side branch\n"})


def clone_tag(repo: Path) -> Expect:
    e = env(repo, "a")
    git(e, "checkout", "-q", "--detach")
    commit_file(e, "tagged.txt", "only a tag holds me\n", "tagged work")
    git(e, "tag", "-a", "-m", "release notes", "v1")
    git(e, "tag", "light", "HEAD~1")  # a name the repository lacks, at a commit it has
    git(e, "checkout", "-q", "hybridiso/a")
    tag = git(e, "rev-parse", "v1")
    expect = Expect(["tag v1 (1 commit)", "tag light"], {"tags/v1": tag, "tags/light": git(e, "rev-parse", "light")})
    expect.files["files:feature.txt"] = "done\n"
    return expect


def clone_head_on_another_branch(repo: Path) -> Expect:
    e = env(repo, "a")
    git(e, "switch", "-q", "-c", "other")
    tip = commit_file(e, "other.txt", "committed on other\n", "other work")
    (e / "README.md").write_text("uncommitted on other\n")
    return Expect(
        ["HEAD is on branch other, not on branch hybridiso/a", "branch other (1 commit)", "modified: README.md"],
        {"heads/other": tip, "files~1": tip},
        {"files:README.md": "uncommitted on other\n", "files:other.txt": "committed on other\n"},
    )


def worktree_detached_commits(repo: Path) -> Expect:
    e = env(repo, "a")
    git(e, "checkout", "-q", "--detach")
    first = commit_file(e, "d1.txt", "one\n", "detached one")
    second = commit_file(e, "d2.txt", "two\n", "detached two")
    git(e, "checkout", "-q", "hybridiso/a")
    return Expect(
        ["2 commits on no branch (HEAD reflog)", "detached two", "detached one"],
        {"detached/0": second, "detached/0~1": first},
        {"detached/0:d1.txt": "one\n"},
    )


def worktree_switched_to_a_new_branch(repo: Path) -> Expect:
    e = env(repo, "a")
    git(e, "switch", "-q", "-c", "newbranch")
    tip = commit_file(e, "n.txt", "on the new branch\n", "new branch work")
    # it lives in the repository (not lost), but the environment is not the agent's branch any more
    return Expect(["HEAD is on branch newbranch, not on branch hybridiso/a"], {"heads/newbranch": tip, "files~1": tip}, kept_refs={"refs/heads/newbranch": tip})


def submodule_work(repo: Path) -> Expect:
    sub = env(repo, "a") / "vendor" / "lib"
    commit = commit_file(sub, "sub.txt", "made in the submodule\n", "submodule work")
    (sub / "lib.txt").write_text("changed, not committed\n")
    key = "submodules/vendor%2Flib"
    return Expect(
        ["1 submodule with work: vendor/lib", "submodule work (on no remote)", "changed file"],
        {f"{key}/files~1": commit},
        {f"{key}/files:lib.txt": "changed, not committed\n", f"{key}/files:sub.txt": "made in the submodule\n"},
    )


PLACES: list[tuple[str, str, Callable[[Path], Expect], bool]] = [
    ("clone", "stash", clone_stash, False),
    ("clone", "side-branch", clone_side_branch, False),
    ("clone", "tag", clone_tag, False),
    ("clone", "head-on-another-branch", clone_head_on_another_branch, False),
    ("worktree", "detached-head", worktree_detached_commits, False),
    ("worktree", "switched-branch", worktree_switched_to_a_new_branch, False),
    ("worktree", "submodule", submodule_work, True),
    ("clone", "submodule", submodule_work, True),
]


@pytest.mark.parametrize(("isolation", "place", "make", "with_submodule"), PLACES, ids=[f"{i}-{p}" for i, p, _, _ in PLACES])
def test_work_outside_the_branch_is_never_lost(tmp_path: Path, isolation: str, place: str, make: Callable[[Path], Expect], with_submodule: bool) -> None:
    repo = project(tmp_path, isolation, submodule=with_submodule)
    merge_agent_branch(repo, isolation)
    run_the_story(repo, make(repo))


def test_submodule_commit_is_in_the_backup_the_gitlink_points_at(tmp_path: Path) -> None:
    """The superproject's saved files record the submodule's new commit; the
    backup holds that commit too (it used to point at nothing)."""
    repo = project(tmp_path, "worktree", submodule=True)
    sub = env(repo, "a") / "vendor" / "lib"
    commit = commit_file(sub, "sub.txt", "x\n", "submodule work")
    forced = hybridiso(repo, "down", "a", "--force")
    m = RESTORE_RE.search(forced.stderr)
    assert m
    hybridiso(repo, *m.group(1).split()[1:])
    files = f"restored/a/{m.group(3)}/files"
    gitlink = git(repo, "ls-tree", files, "vendor/lib").split()
    assert gitlink[:3] == ["160000", "commit", commit]
    assert git(repo, "cat-file", "-t", commit) == "commit"  # the object is in the repository now
    assert git(repo, "rev-parse", f"restored/a/{m.group(3)}/submodules/vendor%2Flib/files~1") == commit


def test_worktree_stash_and_tags_stay_in_the_repository_and_down_says_so(tmp_path: Path) -> None:
    """A worktree's stash and tags live in the repository's shared refs: not
    lost by down (nothing to refuse), but said, and still there after."""
    repo = project(tmp_path, "worktree")
    tip = merge_agent_branch(repo, "worktree")
    e = env(repo, "a")
    git(e, "tag", "v2", tip)
    (e / "README.md").write_text("stashed in the worktree\n")
    git(e, "stash", "-q")
    stash = git(repo, "rev-parse", "stash@{0}")
    r = hybridiso(repo, "down", "a")
    assert "note: 1 stash entry made here (stash@{0}) stay in the repository's shared stash" in r.stderr
    assert "note: tag v2 stays in the repository" in r.stderr
    assert git(repo, "rev-parse", "stash@{0}") == stash and git(repo, "rev-parse", "v2") == tip
    assert git(repo, "show", "stash@{0}:README.md") == "stashed in the worktree"


# --- an environment git cannot read (docs/faults.md row 24) -----------------------------------------


def break_link(e: Path, how: str) -> None:
    dotgit = e / ".git"
    if how == "removed":
        if dotgit.is_dir():
            subprocess.run(["rm", "-rf", str(dotgit)], check=True)
        else:
            dotgit.unlink()
    elif how == "garbage":
        dotgit.write_text("this is not a gitdir line\n")
    elif how == "replaced-by-a-file":
        subprocess.run(["rm", "-rf", str(dotgit)], check=True)
        dotgit.write_text("gitdir: /nowhere\n")
    elif how == "points-at-another-agent":
        dotgit.write_text((e.parent / "bystander" / ".git").read_text())


@pytest.mark.parametrize(("isolation", "how", "words"), [
    ("worktree", "removed", "its .git file is missing"),
    ("worktree", "garbage", "invalid gitfile format"),
    ("clone", "removed", "its .git directory is missing"),
    ("clone", "replaced-by-a-file", "its .git is not the clone's own directory"),
    ("worktree", "points-at-another-agent", "not at this worktree's own metadata"),
])
def test_an_environment_git_cannot_read_is_work(tmp_path: Path, isolation: str, how: str, words: str) -> None:
    repo = project(tmp_path, isolation)
    merge_agent_branch(repo, isolation)
    e = env(repo, "a")
    (e / "README.md").write_text("edited, then the link broke\n")
    (e / "notes.txt").write_text("a new file\n")
    break_link(e, how)
    first = "its .git file points at" if how == "points-at-another-agent" else "git cannot read"
    expect = Expect([first, words], files={"files:README.md": "edited, then the link broke\n", "files:notes.txt": "a new file\n"})
    run_the_story(repo, expect)


def test_a_clone_whose_git_dir_is_broken_is_never_deleted_even_forced(tmp_path: Path) -> None:
    """Its .git may hold the only copy of commits that git cannot read now:
    --force refuses too, and says how to repair it."""
    repo = project(tmp_path, "clone")
    e = env(repo, "a")
    commit_file(e, "only-here.txt", "x\n", "only in the clone")
    (e / ".git" / "HEAD").write_text("garbage\n")
    before = refs(repo)
    for args in (("down", "a"), ("down", "a", "--force")):
        r = hybridiso(repo, *args, ok=False)
        assert r.returncode == 1 and "git cannot read its .git directory" in r.stderr, r.stderr
    assert "--force cannot save" in r.stderr and "fsck" in r.stderr
    assert gc_finding(repo, "a")["action"] == "keep"
    assert (e / "only-here.txt").exists() and (e / ".git" / "objects").is_dir() and refs(repo) == before
    assert git(repo, "for-each-ref", "refs/hybridiso/") == ""


def test_a_repository_made_inside_a_worktree_env_is_never_deleted_even_forced(tmp_path: Path) -> None:
    """``git init`` in a worktree env replaces its .git link by a repository
    of its own, whose commits --force could not save: it refuses."""
    repo = project(tmp_path, "worktree")
    e = env(repo, "a")
    (e / ".git").unlink()
    git(e, "init", "-q")
    commit_file(e, "own.txt", "in a repository of its own\n")
    r = hybridiso(repo, "down", "a", "--force", ok=False)
    assert r.returncode == 1 and "its .git is a directory, a repository of its own" in r.stderr and "nothing was removed" in r.stderr
    assert git(e, "log", "--format=%s") == "change own.txt"


def test_a_clones_notes_remote_and_custom_refs_come_back(tmp_path: Path) -> None:
    repo = project(tmp_path, "clone")
    merge_agent_branch(repo, "clone")
    e = env(repo, "a")
    git(e, "notes", "add", "-m", "a note", "HEAD")
    notes = git(e, "rev-parse", "refs/notes/commits")
    git(e, "checkout", "-q", "--detach")
    x = commit_file(e, "x.txt", "x\n", "held by odd refs")
    git(e, "update-ref", "refs/remotes/mine/x", x)
    git(e, "update-ref", "refs/wip/y", x)
    git(e, "checkout", "-q", "hybridiso/a")
    expect = Expect(["notes commits (1 commit)", "remote-tracking ref mine/x (1 commit)", "refs/wip/y (1 commit)"], {"remotes/mine/x": x, "refs/wip/y": x})
    run_the_story(repo, expect)
    backup = git(repo, "for-each-ref", "--format=%(refname)", "refs/notes/restored/").split("/")[4]
    assert git(repo, "rev-parse", f"refs/notes/restored/a/{backup}/commits") == notes


# --- an include edited after its agent left the manifest -------------------------------


def test_an_include_stays_precious_after_its_agent_left_the_manifest(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r", {"README.md": "x\n", ".gitignore": "secret.cfg\n"})
    (repo / "secret.cfg").write_text("original\n")
    write_manifest(repo, "agents:\n  - name: a\n    include: [secret.cfg]\n  - {name: bystander}\n")
    git(repo, "add", "hybridiso.yaml")
    git(repo, "commit", "-q", "-m", "manifest")
    hybridiso(repo, "up")
    (env(repo, "bystander") / "busy.txt").write_text("the bystander's own work\n")
    merge_agent_branch(repo, "worktree")
    (env(repo, "a") / "secret.cfg").write_text("edited in the agent\n")
    write_manifest(repo, "agents:\n  - {name: bystander}\n")  # the agent leaves the manifest
    run_the_story(repo, Expect(["ignored but precious: secret.cfg"], files={"files:secret.cfg": "edited in the agent\n"}))
    assert (repo / "secret.cfg").read_text() == "original\n"


# --- work written into an unfinished environment (docs/faults.md row 25) ------------------------------


def _killed_during_setup(repo: Path, tmp_path: Path) -> None:
    """A real ``up`` killed with SIGKILL while its setup runs: the record
    stays ``creating``, the worktree is checked out."""
    marker = tmp_path / "setup-pid"
    write_manifest(repo, f"agents:\n  - name: a\n    setup: ['echo $$ > {marker}.tmp && mv {marker}.tmp {marker}; sleep 60']\n  - {{name: bystander}}\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "hybridiso", "up"], cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    deadline = time.time() + 60

    def bystander_ready() -> bool:
        try:
            return bool(state(repo)["agents"]["bystander"]["phase"] == "ready")
        except (KeyError, ValueError):
            return False

    # the bystander finished (so no git of the killed run still writes into it)
    while not (marker.exists() and bystander_ready()):
        assert time.time() < deadline and proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # up and any git it runs
    proc.communicate()
    os.killpg(int(marker.read_text()), signal.SIGKILL)  # the setup leads its own group
    assert state(repo)["agents"]["a"]["phase"] == "creating"
    write_manifest(repo, "agents:\n  - name: a\n  - {name: bystander}\n")


def test_work_written_into_an_unfinished_environment_is_kept_by_the_next_up(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r", {"README.md": "hello\n"})
    _killed_during_setup(repo, tmp_path)
    e = env(repo, "a")
    # exec refuses to run anything in it ...
    r = hybridiso(repo, "exec", "a", "--", "sh", "-c", "echo written by exec > exec.txt", ok=False)
    assert r.returncode == 1 and "environment is not ready: its creation was interrupted" in r.stderr and "hybridiso up a" in r.stderr
    assert not (e / "exec.txt").exists()
    # ... but a user (or an agent) can still write there directly
    (e / "README.md").write_text("edited after the crash\n")
    (e / "new.txt").write_text("new after the crash\n")
    commit = commit_file(e, "committed.txt", "committed after the crash\n", "work after the crash")
    before = refs(repo)
    up = hybridiso(repo, "up", ok=False)
    assert up.returncode == 1
    assert "its unfinished environment (an earlier `up` stopped half-way) holds work" in up.stderr
    for word in ("modified: README.md", "untracked: new.txt"):
        assert word in up.stderr
    assert "commits not in base" not in up.stderr  # a rollback keeps a branch that moved: the commit is not at risk
    assert "kept it and its record" in up.stderr and "bystander" in up.stderr  # the others went on
    assert (e / "new.txt").read_text() == "new after the crash\n" and state(repo)["agents"]["a"]["phase"] == "creating"
    assert refs(repo)["refs/heads/hybridiso/a"] == commit
    assert status_json(repo)["bystander"]["state"] == "ready", up.stderr
    # gc keeps it too: an interrupted creation with work is not removable
    finding = gc_finding(repo, "a")
    assert finding["action"] == "keep" and "untracked: new.txt" in str(finding["reason"])
    assert refs(repo) == before and e.is_dir()
    # down --force saves it, restore brings it back, up makes it anew
    forced = hybridiso(repo, "down", "a", "--force")
    m = RESTORE_RE.search(forced.stderr)
    assert m
    hybridiso(repo, *m.group(1).split()[1:])
    files = f"restored/a/{m.group(3)}/files"
    assert git(repo, "show", f"{files}:README.md") == "edited after the crash"
    assert git(repo, "show", f"{files}:new.txt") == "new after the crash"
    assert git(repo, "rev-parse", f"{files}~1") == commit
    assert git(repo, "rev-parse", f"restored/a/{m.group(3)}/heads/hybridiso/a") == commit
    assert "Created" in hybridiso(repo, "up").stderr and status_json(repo)["a"]["state"] == "ready"


def test_rollback_of_an_unfinished_environment_keeps_a_branch_that_moved(tmp_path: Path) -> None:
    """Commits made in an interrupted creation, the files left clean: the
    files are not at risk, so the environment is rolled back, but the branch
    hybridiso made has moved past where it started, and a rollback that
    deleted it would drop the commits (docs/faults.md row 25)."""
    repo = make_repo(tmp_path / "r", {"README.md": "hello\n"})
    _killed_during_setup(repo, tmp_path)
    e = env(repo, "a")
    base = git(repo, "rev-parse", "main")
    assert git(repo, "rev-parse", "refs/heads/hybridiso/a") == base  # hybridiso made it, at base
    commit = commit_file(e, "committed.txt", "committed after the crash\n", "work after the crash")
    assert git(e, "status", "--porcelain") == ""
    up = hybridiso(repo, "up")
    assert "holds work" not in up.stderr and "Created" in up.stderr  # rolled back, then made anew
    assert refs(repo)["refs/heads/hybridiso/a"] == commit
    assert git(e, "rev-parse", "HEAD") == commit and (e / "committed.txt").read_text() == "committed after the crash\n"
    assert status_json(repo)["a"]["state"] == "ready"


def test_an_unfinished_environment_without_work_is_rolled_back_as_before(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r", {"README.md": "hello\n", ".gitignore": ".env\n"})
    (repo / ".env").write_text("X=1\n")
    _killed_during_setup(repo, tmp_path)
    r = hybridiso(repo, "up")
    assert "Created" in r.stderr and "holds work" not in r.stderr
    assert status_json(repo)["a"]["state"] == "ready"


def test_a_checkout_killed_half_way_is_not_work(tmp_path: Path) -> None:
    """``kill -9`` of the whole ``up`` (git included) while git checks the
    worktree out: what git had written, and what it had not, is not work."""
    from tests.support.gitrepo import many_files_repo

    repo = many_files_repo(tmp_path / "r", 6000)
    write_manifest(repo, "agents:\n  - name: a\n")
    admin_lock = repo / ".git" / "worktrees" / "a" / "index.lock"
    half = False
    for _ in range(5):
        proc = subprocess.Popen([sys.executable, "-m", "hybridiso", "up"], cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.time() + 60
        while not admin_lock.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.002)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        data = state(repo).get("agents", {})
        if data.get("a", {}).get("phase") == "creating" and admin_lock.exists():
            half = True
            break
        if "a" in data:
            hybridiso(repo, "down", "a", "--force")
    if not half:
        pytest.skip("the checkout always finished before the kill landed")
    files = sum(len(f) for _, _, f in os.walk(env(repo, "a")))
    assert 0 < files < 6000 + 1  # part of it was written
    r = hybridiso(repo, "up")
    assert "Created" in r.stderr and "holds work" not in r.stderr
    assert status_json(repo)["a"]["state"] == "ready"


# --- two forced removals within a second (docs/faults.md row 27) ------------------------------------


def test_two_forced_removals_within_a_second_make_two_backups(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r", {"README.md": "hello\n"})
    for isolation in ("worktree", "clone"):
        write_manifest(repo, f"agents:\n  - {{name: a, isolation: {isolation}}}\n")
        hybridiso(repo, "up")
        saved = []
        for text in ("first\n", "second\n"):
            (env(repo, "a") / "README.md").write_text(text)
            saved.append(RESTORE_RE.search(hybridiso(repo, "down", "a", "--force").stderr))
            hybridiso(repo, "up")
        first, second = saved
        assert first and second and first.group(3) != second.group(3)
        for m, text in zip(saved, ("first\n", "second\n"), strict=True):
            assert git(repo, "show", f"refs/hybridiso/backup/a/{m.group(3)}/files:README.md") + "\n" == text
        hybridiso(repo, "down", "a")


def test_two_forced_removals_racing_remove_once_and_lose_nothing(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r", {"README.md": "hello\n"})
    write_manifest(repo, "agents:\n  - {name: a, isolation: clone}\n")
    hybridiso(repo, "up")
    (env(repo, "a") / "README.md").write_text("raced\n")
    procs = [subprocess.Popen([sys.executable, "-m", "hybridiso", "down", "a", "--force"], cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(*p.communicate(timeout=120), p.returncode) for p in procs]
    assert [code for _, _, code in results] == [0, 0], results
    assert sum("bring it back" in err for _, err, _ in results) == 1 and sum("a: no environment" in err for _, err, _ in results) == 1
    backups = git(repo, "for-each-ref", "--format=%(refname)", "refs/hybridiso/backup/a/").splitlines()
    assert len(backups) == 1 and git(repo, "show", f"{backups[0]}:README.md") == "raced"
    assert git(repo, "for-each-ref", "refs/hybridiso/incoming/") == ""


# --- history the agent rewrote is not work ---------------------------------------------


@pytest.mark.parametrize("isolation", ["worktree", "clone"])
def test_amended_and_synced_commits_do_not_hold_a_merged_agent_back(tmp_path: Path, isolation: str) -> None:
    """``commit --amend`` and ``sync``'s rebase leave the old commits in the
    HEAD reflog; they were the branch's own and were replaced on purpose:
    once the branch is merged, gc removes the environment as before."""
    repo = project(tmp_path, isolation)
    e = env(repo, "a")
    commit_file(e, "feature.txt", "draft\n", "the feature")
    (e / "feature.txt").write_text("final\n")
    git(e, "commit", "-q", "-a", "--amend", "-m", "the feature, amended")
    commit_file(repo, "upstream.txt", "base moved on\n", "base moves")
    hybridiso(repo, "sync")
    tip = git(e, "rev-parse", "HEAD")
    assert git(e, "show", "HEAD:upstream.txt") == "base moved on"  # rebased
    if isolation == "clone":
        git(e, "push", "-q", str(repo), "hybridiso/a:refs/heads/to-merge")
        git(repo, "merge", "-q", "--no-ff", "-m", "merge", "to-merge")
        git(repo, "branch", "-q", "-D", "to-merge")
    else:
        git(repo, "merge", "-q", "--no-ff", "-m", "merge", "hybridiso/a")
    assert git_ok(repo, "merge-base", "--is-ancestor", tip, "main")
    finding = gc_finding(repo, "a")
    assert finding["action"] == "remove" and finding["result"] == "removed", finding
    assert not e.exists()
    bystander_intact(repo)


def test_exec_refuses_an_environment_a_running_up_is_creating(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r", {"README.md": "hello\n"})
    marker = tmp_path / "in-setup"
    write_manifest(repo, f"agents:\n  - name: a\n    setup: ['touch {marker}; sleep 30']\n")
    proc = subprocess.Popen([sys.executable, "-m", "hybridiso", "up"], cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while not marker.exists():
            assert time.time() < deadline and proc.poll() is None
            time.sleep(0.05)
        r = hybridiso(repo, "exec", "a", "--", "touch", "from-exec", ok=False)
        assert r.returncode == 1 and "a running `hybridiso up` is creating it" in r.stderr and "wait for that `up` to finish" in r.stderr
        assert not (env(repo, "a") / "from-exec").exists()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)


def test_every_backup_holds_all_of_its_work_by_itself(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two agents that made the very same commits (same content, author and
    second: the same ids): the second backup does not lean on the first, so
    deleting the first loses nothing of the second."""
    repo = make_repo(tmp_path / "r", {"README.md": "x\n"})
    write_manifest(repo, "agents:\n  - {name: a}\n  - {name: b}\n")
    hybridiso(repo, "up")
    monkeypatch.setenv("GIT_AUTHOR_DATE", "2026-01-01T00:00:00Z")
    monkeypatch.setenv("GIT_COMMITTER_DATE", "2026-01-01T00:00:00Z")
    made = {}
    for n in ("a", "b"):
        e = env(repo, n)
        git(e, "checkout", "-q", "--detach")
        made[n] = commit_file(e, "d.txt", "identical\n", "identical detached work")
        git(e, "checkout", "-q", f"hybridiso/{n}")
    assert made["a"] == made["b"]
    out = hybridiso(repo, "down", "--force").stderr
    ids = dict(re.findall(r"hybridiso restore (\S+) (\S+)", out))
    assert git(repo, "rev-parse", f"refs/hybridiso/backup/b/{ids['b']}/detached/0") == made["b"]
    git(repo, "update-ref", "-d", f"refs/hybridiso/backup/a/{ids['a']}/detached/0")
    hybridiso(repo, "restore", "b", ids["b"])
    assert git(repo, "rev-parse", f"restored/b/{ids['b']}/detached/0") == made["b"]


def test_gc_looks_again_right_before_it_deletes(tmp_path: Path) -> None:
    """gc holds the lock, which keeps hybridiso out, not the agent: work
    written between gc's judgement and its removal keeps the environment."""
    from hybridiso.gc import finders as gc_finders
    from hybridiso.errors import UserError
    from hybridiso.project import load_project

    repo = project(tmp_path, "worktree")
    merge_agent_branch(repo, "worktree")
    proj = load_project(repo, None)
    findings = {f.target: f for f in gc_finders.agent_findings(proj, proj.store.load(), False)}
    assert findings["a"].remove and findings["a"].apply is not None
    (env(repo, "a") / "late.txt").write_text("written while gc ran\n")
    with pytest.raises(UserError, match=r"work appeared in it since gc judged it \(1 untracked: late.txt\)"):
        findings["a"].apply()
    assert (env(repo, "a") / "late.txt").read_text() == "written while gc ran\n"
    assert "a" in state(repo)["agents"]


def _kill_during_clone(repo: Path) -> bool:
    """``kill -9`` of the whole ``up`` while ``git clone`` makes the clone's
    .git: True once a half-made one that git cannot read is left."""
    dotgit = env(repo, "c") / ".git"
    for _ in range(10):
        proc = subprocess.Popen([sys.executable, "-m", "hybridiso", "up"], cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.time() + 60
        while not dotgit.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.001)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        readable = subprocess.run(["git", "rev-parse", "--git-dir"], cwd=dotgit.parent, capture_output=True, env={**os.environ, "GIT_CEILING_DIRECTORIES": str(dotgit.parent.parent)})
        if dotgit.is_dir() and readable.returncode != 0 and state(repo)["agents"]["c"]["phase"] == "creating":
            return True
        hybridiso(repo, "down", "--force", ok=None)
    return False


@pytest.mark.parametrize("written_after", [False, True])
def test_a_clone_killed_before_its_git_dir_was_whole(tmp_path: Path, written_after: bool) -> None:
    """Its .git cannot be read yet: with nothing else in it, the next up
    rolls it back and makes it; with a file written into it since, the
    next up keeps it (git cannot tell what that file is)."""
    from tests.support.gitrepo import many_files_repo

    repo = many_files_repo(tmp_path / "r", 4000)
    write_manifest(repo, "agents:\n  - {name: c, isolation: clone}\n")
    if not _kill_during_clone(repo):
        pytest.skip("the clone always finished (or never started) before the kill landed")
    if written_after:
        (env(repo, "c") / "mine.txt").write_text("written into the half-made clone\n")
        r = hybridiso(repo, "up", ok=False)
        assert "holds work" in r.stderr and "git cannot read its .git directory" in r.stderr
        assert (env(repo, "c") / "mine.txt").exists()
    else:
        assert "Created" in hybridiso(repo, "up").stderr
        assert status_json(repo)["c"]["state"] == "ready"


def test_a_branch_that_moves_while_down_removes_its_env_is_kept(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """down deletes the agent branch only at the commit its work check saw:
    a commit made in the window between the check and the deletion stays."""
    from hybridiso.envs import lifecycle
    from hybridiso.env_context import context
    from hybridiso.project import load_project

    repo = project(tmp_path, "worktree")
    merge_agent_branch(repo, "worktree")
    proj = load_project(repo, None)
    ctx = context(proj, proj.store.load(), "a")
    late: list[str] = []

    def commit_from_another_shell() -> None:
        late.append(commit_file(env(repo, "a"), "late.txt", "late\n", "made while down ran"))

    lifecycle.remove(ctx, force=False, keep_branch=False, starting=commit_from_another_shell)
    assert not env(repo, "a").exists()
    assert git(repo, "rev-parse", "refs/heads/hybridiso/a") == late[0]
    assert "branch hybridiso/a moved while it was being removed" in capsys.readouterr().err
