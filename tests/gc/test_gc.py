"""``hybridiso gc`` on real repositories, with a local bare repository as origin.

docs/faults.md row 5 (dirty envs kept), 6 (unmerged kept, squash/rebase
merges found by content, a fresh branch is not merged), 7 (directory deleted by
hand), 8 (removal that fails half-way), 18 (corrupt state file).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from hybridiso.gc.rules import KEPT, MERGED, ZOMBIE, AgentFacts, decide
from hybridiso.gc.merged import Verdict
from tests.support.cli import hybridiso, hybridiso_as_plain_user, state, status_json, write_manifest
from tests.support.gitrepo import commit_file, git, make_repo
from tests.support import needs


def make_project(tmp_path: Path, agents: str, *, ports: str = "") -> Path:
    """A repository whose ``main`` tracks ``origin/main`` in a local bare repo."""
    repo = make_repo(tmp_path / "repo", {"README.md": "hello\n", "src/app.py": "print('hi')\n", "notes.txt": "1\n2\n3\n"})
    git(tmp_path, "clone", "-q", "--bare", str(repo), str(tmp_path / "origin.git"))
    git(repo, "remote", "add", "origin", str(tmp_path / "origin.git"))
    git(repo, "fetch", "-q", "origin")
    git(repo, "branch", "-q", "--set-upstream-to=origin/main", "main")
    write_manifest(repo, f"version: 1\nbase: main\n{ports}agents:\n{agents}")
    git(repo, "add", "hybridiso.yaml")
    git(repo, "commit", "-q", "-m", "manifest")
    git(repo, "push", "-q", "origin", "main")
    return repo


def env(repo: Path, name: str) -> Path:
    return repo.parent / "repo.agents" / name


def gc_json(repo: Path, *args: str, ok: bool | None = True) -> dict[str, Any]:
    proc = hybridiso(repo, "gc", "--json", *args, ok=ok)
    data = json.loads(proc.stdout)
    data["stderr"] = proc.stderr
    data["by_target"] = {f["target"]: f for f in data["findings"]}
    return data


def removed_targets(data: dict[str, Any]) -> set[str]:
    return {f["target"] for f in data["findings"] if f["action"] == "remove"}


def ignore(repo: Path, pattern: str) -> None:
    """Ignored in every worktree of the repository (info/exclude is shared)."""
    with (repo / ".git" / "info" / "exclude").open("a") as f:
        f.write(pattern + "\n")


def branch_tip(repo: Path, branch: str) -> str:
    return git(repo, "rev-parse", "--verify", "-q", f"refs/heads/{branch}", check=False)


# --- the rules as a table ---------------------------------------------------------


def _facts(**kw: Any) -> AgentFacts:
    base = dict(name="a", phase="ready", exists=True, registered=True, work="", verdict=Verdict(False, "", 1), owns_branch=True, branch="hybridiso/a")
    base.update(kw)
    return AgentFacts(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "facts, remove, kind, delete_branch",
    [
        (_facts(verdict=Verdict(True, "squash", 2, "main")), True, MERGED, True),
        (_facts(verdict=Verdict(True, "squash", 2, "main"), work="1 modified: x"), False, KEPT, False),
        (_facts(verdict=Verdict(False, "", 0)), False, KEPT, False),  # fresh is not merged
        (_facts(verdict=Verdict(False, "", 3)), False, KEPT, False),
        (_facts(exists=False, registered=True, verdict=Verdict(False, "", 0)), True, ZOMBIE, True),
        (_facts(exists=False, registered=True, verdict=Verdict(False, "", 2)), True, ZOMBIE, False),  # branch kept
        (_facts(upstream_gone="origin/x", verdict=Verdict(False, "", 0)), True, "upstream-gone", True),
        (_facts(upstream_gone="origin/x", verdict=Verdict(False, "", 1)), False, KEPT, False),
        (_facts(registered=False), False, KEPT, False),
        (_facts(registered=False, removing=True), True, "leftovers", False),
        (_facts(phase="creating", verdict=Verdict(False, "", 0)), True, "interrupted", True),
        (_facts(verdict=Verdict(True, "ancestry", 1, "main"), owns_branch=False), True, MERGED, False),
    ],
)
def test_decide_table(facts: AgentFacts, remove: bool, kind: str, delete_branch: bool) -> None:
    d = decide(facts)
    assert (d.remove, d.kind, d.delete_branch) == (remove, kind, delete_branch), d.reason


# --- the user story -------------------------------------------------------


def test_user_story_merge_two_delete_one_then_gc_and_sync(tmp_path: Path) -> None:
    agents = "".join(f"  - name: {n}\n    ports: [web]\n" for n in ("merged", "squashed", "deleted", "busy", "fresh"))
    repo = make_project(tmp_path, agents, ports='ports: {range: "21000-21099"}\n')
    hybridiso(repo, "up")
    commit_file(env(repo, "merged"), "merged.txt", "merged work\n")
    commit_file(env(repo, "squashed"), "sq1.txt", "one\n")
    commit_file(env(repo, "squashed"), "sq2.txt", "two\n")
    commit_file(env(repo, "busy"), "busy.txt", "unmerged work\n")
    git(repo, "merge", "-q", "--no-ff", "-m", "merge merged", "hybridiso/merged")
    git(repo, "merge", "-q", "--squash", "hybridiso/squashed")
    git(repo, "commit", "-q", "-m", "squash of squashed")
    shutil.rmtree(env(repo, "deleted"))
    busy_tip = branch_tip(repo, "hybridiso/busy")
    fresh_tip = branch_tip(repo, "hybridiso/fresh")

    assert "directory was deleted" in " ".join(status_json(repo)["deleted"]["problems"])
    plan = gc_json(repo)
    assert removed_targets(plan) == {"merged", "squashed", "deleted"}
    assert "squash" in plan["by_target"]["squashed"]["reason"]
    assert plan["by_target"]["busy"]["action"] == "keep" and "1 commit not in base" in plan["by_target"]["busy"]["reason"]
    assert "no commits of its own" in plan["by_target"]["fresh"]["reason"]
    assert "would remove 3" in plan["stderr"]
    assert env(repo, "merged").is_dir() and branch_tip(repo, "hybridiso/squashed")  # dry run changed nothing
    leases_before = {n: r["ports"] for n, r in state(repo)["agents"].items()}

    done = gc_json(repo, "--yes")
    assert {f["target"] for f in done["findings"] if f["result"] == "removed"} == {"merged", "squashed", "deleted"}
    assert "removed 3" in done["stderr"] and "kept 2" in done["stderr"]
    for name in ("merged", "squashed", "deleted"):
        assert not env(repo, name).exists()
        assert not branch_tip(repo, f"hybridiso/{name}")
    listed = git(repo, "worktree", "list", "--porcelain")
    assert "deleted" not in listed and "squashed" not in listed
    records = state(repo)["agents"]
    assert set(records) == {"busy", "fresh"}
    assert {n: r["ports"] for n, r in records.items()} == {n: leases_before[n] for n in ("busy", "fresh")}
    assert branch_tip(repo, "hybridiso/busy") == busy_tip and branch_tip(repo, "hybridiso/fresh") == fresh_tip
    assert (env(repo, "busy") / "busy.txt").read_text() == "unmerged work\n"

    # upstream moves; one `sync` brings the rest up to date
    git(repo, "push", "-q", "origin", "main")
    other = tmp_path / "other"
    git(tmp_path, "clone", "-q", str(tmp_path / "origin.git"), str(other))
    commit_file(other, "upstream.txt", "from upstream\n")
    git(other, "push", "-q", "origin", "main")
    proc = hybridiso(repo, "sync", "--json")
    rows = {r["agent"]: r for r in json.loads(proc.stdout)["agents"]}
    assert rows["busy"]["result"] == "rebased" and rows["fresh"]["result"] == "rebased"
    assert (env(repo, "busy") / "upstream.txt").exists() and (env(repo, "fresh") / "upstream.txt").exists()
    assert (env(repo, "busy") / "busy.txt").exists()
    assert git(repo, "rev-parse", "main") == git(repo, "rev-parse", "origin/main")  # base fast-forwarded
    assert hybridiso(repo, "gc", "--json").returncode == 0
    assert removed_targets(gc_json(repo)) == set()  # a synced fresh branch is still not "merged"


# --- docs/faults.md row 6: merged by content, unmerged kept ------------------------------------


def test_rebase_merge_and_squash_after_base_moved_are_merged(tmp_path: Path) -> None:
    repo = make_project(tmp_path, "  - name: rebased\n  - name: squashed\n  - name: partly\n")
    hybridiso(repo, "up")
    commit_file(env(repo, "rebased"), "r1.txt", "r1\n")
    commit_file(env(repo, "rebased"), "r2.txt", "r2\n")
    commit_file(env(repo, "squashed"), "notes.txt", "1\nTWO\n3\n")
    commit_file(env(repo, "squashed"), "sq.txt", "two commits, so the squash is one new patch\n")
    commit_file(env(repo, "partly"), "p1.txt", "p1\n")
    commit_file(env(repo, "partly"), "p2.txt", "p2\n")
    commit_file(repo, "elsewhere.txt", "base moved first\n")
    # a rebase merge: the same patches, new commits
    git(repo, "cherry-pick", "main..hybridiso/rebased")
    # a squash merge, then base changes the same line again
    git(repo, "merge", "-q", "--squash", "hybridiso/squashed")
    git(repo, "commit", "-q", "-m", "squash")
    commit_file(repo, "notes.txt", "1\nTWO!\n3\n", "edit after the squash")
    # only half of partly's work is in base
    git(repo, "cherry-pick", git(repo, "rev-list", "-n1", "hybridiso/partly~1"))
    plan = gc_json(repo)
    assert plan["by_target"]["rebased"]["action"] == "remove" and "rebase" in plan["by_target"]["rebased"]["reason"]
    assert plan["by_target"]["squashed"]["action"] == "remove" and "squash" in plan["by_target"]["squashed"]["reason"]
    assert plan["by_target"]["partly"]["action"] == "keep"
    gc_json(repo, "--yes")
    assert branch_tip(repo, "hybridiso/partly") and env(repo, "partly").is_dir()
    assert not branch_tip(repo, "hybridiso/rebased") and not branch_tip(repo, "hybridiso/squashed")


def test_unpushed_and_unmerged_work_is_kept(tmp_path: Path) -> None:
    repo = make_project(tmp_path, "  - name: unpushed\n  - name: pushed\n  - name: fresh\n  - name: cloned\n    isolation: clone\n")
    hybridiso(repo, "up")
    commit_file(env(repo, "unpushed"), "u.txt", "u\n")
    commit_file(env(repo, "pushed"), "p.txt", "p\n")
    git(env(repo, "pushed"), "push", "-q", "-u", "origin", "hybridiso/pushed")
    commit_file(env(repo, "cloned"), "c.txt", "c\n")
    tips = {n: branch_tip(repo, f"hybridiso/{n}") for n in ("unpushed", "pushed", "fresh")}
    data = gc_json(repo, "--yes")
    assert removed_targets(data) == set()
    assert all(f["action"] == "keep" for f in data["findings"])
    assert {n: branch_tip(repo, f"hybridiso/{n}") for n in tips} == tips
    assert git(env(repo, "cloned"), "log", "-1", "--format=%s") == "change c.txt"


def test_merged_clone_is_removed(tmp_path: Path) -> None:
    repo = make_project(tmp_path, "  - name: c\n    isolation: clone\n")
    hybridiso(repo, "up")
    commit_file(env(repo, "c"), "c.txt", "from the clone\n")
    # the agent's work reaches main as a squash (through origin)
    git(env(repo, "c"), "push", "-q", "origin", "hybridiso/c")
    git(repo, "fetch", "-q", "origin")
    git(repo, "merge", "-q", "--squash", "origin/hybridiso/c")
    git(repo, "commit", "-q", "-m", "squash c")
    data = gc_json(repo, "--yes")
    assert data["by_target"]["c"]["result"] == "removed", data["by_target"]["c"]
    assert not env(repo, "c").exists()


# --- docs/faults.md row 5: dirty environments are kept ----------------------------------------


def test_dirty_merged_env_is_kept(tmp_path: Path) -> None:
    repo = make_project(tmp_path, "  - name: mod\n  - name: untracked\n  - name: precious\n")
    hybridiso(repo, "up")
    for name in ("mod", "untracked", "precious"):
        commit_file(env(repo, name), f"{name}.txt", "work\n")
        git(repo, "merge", "-q", "--no-ff", "-m", f"merge {name}", f"hybridiso/{name}")
    (env(repo, "mod") / "README.md").write_text("changed, not committed\n")
    (env(repo, "untracked") / "new.txt").write_text("never added\n")
    ignore(repo, ".env")
    (env(repo, "precious") / ".env").write_text("SECRET=1\n")
    data = gc_json(repo, "--yes")
    assert removed_targets(data) == set()
    assert "README.md" in data["by_target"]["mod"]["reason"]
    assert "new.txt" in data["by_target"]["untracked"]["reason"]
    assert ".env" in data["by_target"]["precious"]["reason"]
    assert (env(repo, "precious") / ".env").read_text() == "SECRET=1\n"
    assert (env(repo, "mod") / "README.md").read_text() == "changed, not committed\n"


# --- docs/faults.md rows 7 and 18: deleted by hand, state lost ---------------------------------


def test_deleted_directory_prunes_metadata_keeps_unmerged_branch(tmp_path: Path) -> None:
    repo = make_project(tmp_path, "  - name: gone\n    ports: [web]\n  - name: gonework\n", ports='ports: {range: "21100-21199"}\n')
    hybridiso(repo, "up")
    commit_file(env(repo, "gonework"), "w.txt", "w\n")
    tip = branch_tip(repo, "hybridiso/gonework")
    shutil.rmtree(env(repo, "gone"))
    shutil.rmtree(env(repo, "gonework"))
    rows = status_json(repo)
    assert rows["gone"]["state"] == "missing"
    data = gc_json(repo, "--yes")
    assert removed_targets(data) == {"gone", "gonework"}
    assert "port web=" in " ".join(data["by_target"]["gone"]["owns"])
    assert "branch hybridiso/gonework kept" in data["by_target"]["gonework"]["reason"]
    assert branch_tip(repo, "hybridiso/gonework") == tip  # its commit is not lost
    assert not branch_tip(repo, "hybridiso/gone")
    assert "prunable" not in git(repo, "worktree", "list", "--porcelain")
    assert state(repo)["agents"] == {}
    hybridiso(repo, "up")  # and up converges again, on the kept branch
    assert (env(repo, "gonework") / "w.txt").exists()


def test_corrupt_state_is_rebuilt_and_nothing_looks_orphaned(tmp_path: Path) -> None:
    repo = make_project(tmp_path, "  - name: a\n  - name: b\n  - name: c\n    isolation: clone\n")
    hybridiso(repo, "up")
    commit_file(env(repo, "a"), "a.txt", "a\n")
    git(repo, "merge", "-q", "--no-ff", "-m", "merge a", "hybridiso/a")
    (repo / ".git" / "hybridiso" / "state.json").write_text("{not json")
    shutil.rmtree(env(repo, "b"))
    data = gc_json(repo)
    assert "rebuilt" in data["stderr"]
    assert data["by_target"]["a"]["action"] == "remove"  # adopted from git, judged merged
    assert data["by_target"]["c"]["action"] == "keep"  # the clone is adopted, not an orphan
    zombie = [f for f in data["findings"] if f["kind"] == "zombie"]
    assert [Path(f["target"]).name for f in zombie] == ["b"]  # found from git's own list
    gc_json(repo, "--yes")
    assert "prunable" not in git(repo, "worktree", "list", "--porcelain")
    assert not branch_tip(repo, "hybridiso/b") and not branch_tip(repo, "hybridiso/a")
    assert env(repo, "c").is_dir()


def test_orphan_directories(tmp_path: Path) -> None:
    repo = make_project(tmp_path, "  - name: a\n")
    hybridiso(repo, "up")
    ws = env(repo, "a").parent
    (ws / "empty").mkdir()
    git(ws, "clone", "-q", str(repo), "stray-clone")
    (ws / "stuff").mkdir()
    (ws / "stuff" / "notes.md").write_text("mine\n")
    git(ws, "clone", "-q", str(repo), "stray-work")
    commit_file(ws / "stray-work", "x.txt", "unpushed\n")
    # clean by `git status`, but holding work all the same
    git(ws, "clone", "-q", str(repo), "stray-stash")
    (ws / "stray-stash" / "README.md").write_text("stashed edit\n")
    git(ws / "stray-stash", "stash", "-q")
    git(ws, "clone", "-q", str(repo), "stray-env")
    ignore(ws / "stray-env", ".env")
    (ws / "stray-env" / ".env").write_text("TOKEN=only-here\n")
    # docs/faults.md row 29: only a directory with hybridiso's mark for this project and
    # its own name is one hybridiso made (its record lost); the rest is the user's
    project_line = next(line for line in (env(repo, "a") / ".hybridiso.env").read_text().splitlines() if line.startswith("HYBRIDISO_PROJECT="))
    for name in ("stray-clone", "stray-work", "stray-stash", "stray-env"):
        (ws / name / ".hybridiso.env").write_text(f"{project_line}\nHYBRIDISO_AGENT={name}\n")
    data = gc_json(repo, "--yes")
    by_name = {Path(t).name: f for t, f in data["by_target"].items()}
    assert by_name["stray-clone"]["result"] == "removed"
    assert by_name["empty"]["action"] == "keep" and "not made by hybridiso" in by_name["empty"]["reason"]
    assert by_name["stuff"]["action"] == "keep" and by_name["stray-work"]["action"] == "keep"
    assert (ws / "empty").is_dir()
    assert by_name["stray-stash"]["action"] == "keep" and "stash" in by_name["stray-stash"]["reason"]
    assert by_name["stray-env"]["action"] == "keep" and ".env" in by_name["stray-env"]["reason"]
    assert (ws / "stuff" / "notes.md").exists() and (ws / "stray-work").exists() and not (ws / "stray-clone").exists()
    assert git(ws / "stray-stash", "stash", "list") and (ws / "stray-env" / ".env").read_text() == "TOKEN=only-here\n"
    assert env(repo, "a").is_dir()


# --- the branch was deleted upstream --------------------------------------------------


def test_branch_deleted_upstream(tmp_path: Path) -> None:
    repo = make_project(
        tmp_path, "  - name: landed\n  - name: dropped\n  - name: empty\n  - name: cl\n    isolation: clone\n"
    )
    hybridiso(repo, "up")
    commit_file(env(repo, "landed"), "landed.txt", "l\n")
    commit_file(env(repo, "dropped"), "dropped.txt", "d\n")
    commit_file(env(repo, "cl"), "cl.txt", "c\n")
    for name in ("landed", "dropped", "empty", "cl"):
        git(env(repo, name), "push", "-q", "-u", "origin", f"hybridiso/{name}")
    # on the hosting side: landed is squash-merged, cl merged, all four branches deleted
    other = tmp_path / "other"
    git(tmp_path, "clone", "-q", str(tmp_path / "origin.git"), str(other))
    git(other, "merge", "-q", "--squash", "origin/hybridiso/landed")
    git(other, "commit", "-q", "-m", "landed (squash)")
    git(other, "merge", "-q", "--no-ff", "-m", "merge cl", "origin/hybridiso/cl")
    git(other, "push", "-q", "origin", "main")
    for name in ("landed", "dropped", "empty", "cl"):
        git(other, "push", "-q", "origin", "--delete", f"hybridiso/{name}")

    git(repo, "fetch", "-q", "--prune", "origin")  # local main is NOT updated yet
    data = gc_json(repo)
    landed = data["by_target"]["landed"]
    assert landed["action"] == "remove" and "origin/main" in landed["reason"] and "deleted" in landed["reason"]
    assert data["by_target"]["empty"]["action"] == "remove" and data["by_target"]["empty"]["kind"] == "upstream-gone"
    dropped = data["by_target"]["dropped"]
    assert dropped["action"] == "keep" and "deleted" in dropped["reason"] and "not in base" in dropped["reason"]

    # the clone learns that its upstream is gone through sync (no network of its own)
    sync = json.loads(hybridiso(repo, "sync", "--json").stdout)
    assert {r["agent"]: r["result"] for r in sync["agents"]}["cl"] == "merged"
    assert "gone" in git(env(repo, "cl"), "for-each-ref", "--format=%(upstream:track)", "refs/heads/hybridiso/cl")
    data = gc_json(repo, "--yes")
    assert {f["target"] for f in data["findings"] if f["result"] == "removed"} == {"landed", "empty", "cl"}
    assert env(repo, "dropped").is_dir() and branch_tip(repo, "hybridiso/dropped")


# --- docs/faults.md row 8: removal that fails half-way -------------------------------------------


def test_removal_fixes_permissions_it_can(tmp_path: Path) -> None:
    repo = make_project(tmp_path, "  - name: locked\n")
    hybridiso(repo, "up")
    commit_file(env(repo, "locked"), "w.txt", "w\n")
    git(repo, "merge", "-q", "--no-ff", "-m", "merge", "hybridiso/locked")
    e = env(repo, "locked")
    ignore(repo, "build/")
    cache = e / "build" / "cache"
    cache.mkdir(parents=True)
    (cache / "blob").write_text("x")
    (e / "build" / "ro.txt").write_text("read-only\n")
    os.chmod(e / "build" / "ro.txt", 0o444)
    os.chmod(cache, 0)  # chmod 000: not even listable
    os.chmod(e / "build", 0o555)  # read-only directory
    proc = hybridiso_as_plain_user(repo, "gc", "--yes")
    assert proc.returncode == 0, proc.stderr
    assert not e.exists()
    assert "removed 1" in proc.stderr


def test_removal_reports_exactly_what_is_left(tmp_path: Path) -> None:
    needs.root("making files another user owns (a container does it as root)")
    repo = make_project(tmp_path, "  - name: foreign\n  - name: other\n")
    hybridiso(repo, "up")
    commit_file(env(repo, "foreign"), "w.txt", "w\n")
    git(repo, "merge", "-q", "--no-ff", "-m", "merge", "hybridiso/foreign")
    e = env(repo, "foreign")
    ignore(repo, "out/")
    out = e / "out"
    out.mkdir()
    (out / "root.bin").write_text("written by a container as another uid\n")
    os.chown(out / "root.bin", 65534, 65534)
    os.chown(out, 65534, 65534)
    os.chmod(out, 0o555)  # as a container would leave it: not ours, not writable
    proc = hybridiso_as_plain_user(repo, "gc", "--yes")
    assert proc.returncode == 1, proc.stderr
    assert "could not finish" in proc.stderr and str(out / "root.bin") in proc.stderr
    assert "owned by uid 65534" in proc.stderr
    assert "foreign" in state(repo)["agents"]  # the record stays, so the next gc retries
    assert env(repo, "other").is_dir()
    # the user fixes ownership as told; the next gc finishes the job
    os.chmod(out, 0o755)
    for p in (out, out / "root.bin"):
        os.chown(p, 0, 0)
    data = gc_json(repo, "--yes")
    assert data["by_target"]["foreign"]["result"] == "removed" and data["by_target"]["foreign"]["kind"] == "leftovers"
    assert not e.exists() and "foreign" not in state(repo)["agents"]
    assert "prunable" not in git(repo, "worktree", "list", "--porcelain")

