"""Records and registries anyone can edit never make hybridiso act on what
it does not own, nor crash (issue 11, found by an attack on its fixes).

- a record's ``checkout`` (what precious files are compared with) pointed at
  the environment itself would make its ``.env.local`` an "untouched copy";
- a record's ``branch`` pointed at a user's branch would have ``down`` delete
  that branch as the agent's;
- a forged record at a user's directory in the workspace (no env file, no
  git link hybridiso made) would have ``down --force`` remove it;
- JSON nested 100,000 deep or holding ``1e400``, in the state file or the
  machine's port registry, crashed every command (exit 3), even in other
  repositories that lease ports.
Each fault is made for real; the tests compare what must survive.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.support.cli import hybridiso, status_json, write_manifest
from tests.support.gitrepo import git, git_ok, make_repo


def _state_path(repo: Path) -> Path:
    return repo / ".git" / "hybridiso" / "state.json"


def _edit_record(repo: Path, name: str, **fields: object) -> None:
    path = _state_path(repo)
    data = json.loads(path.read_text())
    data["agents"][name].update(fields)
    path.write_text(json.dumps(data))


def _refused_everywhere(repo: Path, name: str, why: str) -> None:
    for args in (("down",), ("down", name, "--force"), ("gc", "--yes"), ("up",)):
        r = hybridiso(repo, *args, ok=False)
        assert r.returncode == 1, (args, r.stdout, r.stderr)
        assert "refusing to act on 1 record" in r.stderr and f"agent {name}:" in r.stderr and why in r.stderr, (args, r.stderr)


@pytest.mark.parametrize("where", ["itself", "another agent", "not a worktree"])
def test_a_checkout_that_is_not_a_worktree_of_the_repository_is_refused(tmp_path: Path, where: str) -> None:
    repo = make_repo(tmp_path / "repo", {".gitignore": ".env.local\n"})
    write_manifest(repo, "agents:\n  - name: a\n  - name: b\n")
    hybridiso(repo, "up")
    env = tmp_path / "repo.agents" / "a"
    (env / ".env.local").write_text("SECRET=the agent's own\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / ".env.local").write_text("SECRET=the agent's own\n")  # same content: it would look untouched
    target = {"itself": env, "another agent": tmp_path / "repo.agents" / "b", "not a worktree": elsewhere}[where]
    if where == "another agent":
        (target / ".env.local").write_text("SECRET=the agent's own\n")
    _edit_record(repo, "a", checkout=str(target))
    _refused_everywhere(repo, "a", "checkout")
    assert (env / ".env.local").read_text() == "SECRET=the agent's own\n"
    assert status_json(repo)["a"]["state"] == "refused"


def test_the_checkout_a_record_names_may_be_any_worktree_of_the_repository(tmp_path: Path) -> None:
    """The positive side: an agent made from a linked worktree of the user's
    records that worktree, and down still compares precious files with it."""
    repo = make_repo(tmp_path / "repo", {".gitignore": ".env.local\n"})
    write_manifest(repo, "agents:\n  - name: a\n")
    git(repo, "add", "hybridiso.yaml")
    git(repo, "commit", "-q", "-m", "manifest")
    hybridiso(repo, "up")
    other = tmp_path / "other"
    git(repo, "worktree", "add", "-q", str(other), "-b", "side")
    _edit_record(repo, "a", checkout=str(other))
    env = tmp_path / "repo.agents" / "a"
    (env / ".env.local").write_text("mine\n")
    r = hybridiso(repo, "down", ok=False)
    assert r.returncode == 1 and ".env.local" in r.stderr, r.stderr  # work, not a copy
    assert (env / ".env.local").read_text() == "mine\n"


def test_a_branch_hybridiso_did_not_make_for_the_agent_is_never_deleted(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    write_manifest(repo, "agents:\n  - name: a\n")
    git(repo, "branch", "userfeat")
    git(repo, "checkout", "-q", "userfeat")
    git(repo, "commit", "-q", "--allow-empty", "-m", "the user's")
    git(repo, "checkout", "-q", "main")
    hybridiso(repo, "up")
    tip = git(repo, "rev-parse", "userfeat")
    _edit_record(repo, "a", branch="userfeat")
    _refused_everywhere(repo, "a", "not one hybridiso makes for it")
    assert git(repo, "rev-parse", "userfeat") == tip
    assert git(repo, "rev-parse", "--verify", "-q", "refs/heads/hybridiso/a")


def test_a_forged_record_at_a_users_directory_is_never_removed(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    write_manifest(repo, "agents:\n  - name: a\n")
    hybridiso(repo, "up")
    ws = tmp_path / "repo.agents"
    mine = ws / "b"
    mine.mkdir()
    (mine / "k").write_text("the user's data\n")
    (mine / "sub").mkdir()
    (mine / "sub" / "notes.txt").write_text("more of it\n")
    path = _state_path(repo)
    data = json.loads(path.read_text())
    forged = dict(data["agents"]["a"], name="b", path=str(mine), strategy="clone", branch="hybridiso/b", created_branch=False)
    data["agents"]["b"] = forged
    path.write_text(json.dumps(data))
    for args in (("down", "b"), ("down", "--force", "b")):
        r = hybridiso(repo, *args, ok=False)
        assert r.returncode == 1 and "nothing shows hybridiso made" in r.stderr and str(mine) in r.stderr, r.stderr
    assert (mine / "k").read_text() == "the user's data\n" and (mine / "sub" / "notes.txt").is_file()
    assert (ws / "a").is_dir(), "the other agent is untouched"
    # a forged worktree record there is refused the same way
    data = json.loads(path.read_text())
    data["agents"]["b"]["strategy"] = "worktree"
    path.write_text(json.dumps(data))
    r = hybridiso(repo, "down", "--force", "b", ok=False)
    assert r.returncode == 1 and "nothing shows hybridiso made" in r.stderr
    assert (mine / "k").is_file()


@pytest.mark.parametrize("text", ["[" * 100_000, '{"version": 1, "agents": {"a": {"ports": {"web": 1e400}}}}', '{"version": 1, "agents": NaN}'])
def test_hostile_json_in_the_state_file_is_a_corrupt_file_not_a_crash(tmp_path: Path, text: str) -> None:
    repo = make_repo(tmp_path / "repo")
    write_manifest(repo, "agents:\n  - name: a\n    ports: [web]\n")
    hybridiso(repo, "up")
    _state_path(repo).write_text(text)
    # every command: one message, the file set aside, the records rebuilt from git
    rows = status_json(repo)
    assert rows["a"]["state"] == "ready", rows
    assert list(_state_path(repo).parent.glob("state.json.corrupt-*"))
    for args in (("up",), ("down",)):
        hybridiso(repo, *args)
    assert not (tmp_path / "repo.agents" / "a").exists()


def test_hostile_json_in_another_repositorys_state_never_crashes_this_one(tmp_path: Path) -> None:
    """The port registry looks into every leasing repository's state file."""
    a = make_repo(tmp_path / "a")
    write_manifest(a, "agents:\n  - name: x\n    ports: [web]\n")
    hybridiso(a, "up")
    _state_path(a).write_text("[" * 100_000)
    b = make_repo(tmp_path / "b")
    write_manifest(b, "agents:\n  - name: y\n    ports: [web]\n")
    hybridiso(b, "up")
    hybridiso(b, "doctor", ok=None)  # no crash (exit 3 fails the helper); doctor may report other things
    # a's lease is kept (its records cannot be judged now), so b got another port
    assert _port(tmp_path / "a.agents" / "x") != _port(tmp_path / "b.agents" / "y")
    hybridiso(b, "down")


def _port(env: Path) -> str:
    lines = [line for line in (env / ".hybridiso.env").read_text().splitlines() if line.startswith("PORT_WEB=")]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("text", ["[" * 100_000, '{"version": 1, "leases": [{"port": 1e400, "project": "p", "repo": "/r", "agent": "a", "name": "web"}]}'])
def test_hostile_json_in_the_port_registry_is_set_aside_and_rebuilt(tmp_path: Path, text: str) -> None:
    registry = Path(os.environ["HOME"]) / ".local" / "state" / "hybridiso" / "ports.json"
    registry.parent.mkdir(parents=True, exist_ok=True)
    registry.write_text(text)
    repo = make_repo(tmp_path / "repo")
    write_manifest(repo, "agents:\n  - name: a\n    ports: [web]\n")
    r = hybridiso(repo, "up")
    assert "port registry" in r.stderr and "unreadable" in r.stderr, r.stderr
    assert list(registry.parent.glob("ports.json.corrupt-*"))
    leases = json.loads(registry.read_text())["leases"]
    assert [lease["agent"] for lease in leases] == ["a"]
    hybridiso(repo, "down")


@pytest.mark.parametrize("proof", ["none", "another directory"])
def test_a_forged_removal_in_progress_never_deletes_a_users_directory(tmp_path: Path, proof: str) -> None:
    """``removing`` lets a retry skip the ownership and work checks; forged
    (or naming another directory), it proves nothing: down and gc refuse."""
    repo = make_repo(tmp_path / "repo")
    write_manifest(repo, "agents:\n  - name: a\n")
    hybridiso(repo, "up")
    ws = tmp_path / "repo.agents"
    mine = ws / "x"
    mine.mkdir()
    (mine / "thesis.txt").write_text("years of it\n")
    path = _state_path(repo)
    data = json.loads(path.read_text())
    forged = dict(data["agents"]["a"], name="x", path=str(mine), branch="hybridiso/x", created_branch=False, removing=True)
    if proof == "another directory":
        st = os.lstat(ws / "a")
        forged["removing_dir"] = f"{st.st_dev}:{st.st_ino}"
    data["agents"]["x"] = forged
    path.write_text(json.dumps(data))
    r = hybridiso(repo, "down", "x", ok=False)
    assert r.returncode == 1 and "nothing shows hybridiso made" in r.stderr, r.stderr
    hybridiso(repo, "gc", "--yes", ok=None)
    assert (mine / "thesis.txt").read_text() == "years of it\n"
    assert (ws / "a").is_dir()


def test_a_forged_unfinished_removal_never_wipes_a_live_environments_work(tmp_path: Path) -> None:
    """phase 'creating' + owns_path + removing on a live environment: the
    next up rolls it back, and must check its work first."""
    repo = make_repo(tmp_path / "repo")
    write_manifest(repo, "agents:\n  - name: a\n  - name: c\n    isolation: clone\n")
    hybridiso(repo, "up")
    ws = tmp_path / "repo.agents"
    (ws / "a" / "notes.txt").write_text("the agent's\n")
    git(ws / "c", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "mine")
    mine = git(ws / "c", "rev-parse", "HEAD")
    path = _state_path(repo)
    data = json.loads(path.read_text())
    for name in ("a", "c"):
        data["agents"][name].update(phase="creating", owns_path=True, removing=True)
    path.write_text(json.dumps(data))
    hybridiso(repo, "up", ok=None)
    assert (ws / "a" / "notes.txt").read_text() == "the agent's\n"
    assert git(ws / "c", "rev-parse", "HEAD") == mine


def test_sync_never_acts_through_a_git_link_an_agent_rewrote(tmp_path: Path) -> None:
    """An agent points its worktree's .git at the main repository's git dir:
    git run there would act on the user's checkout and branch.  status says
    so, sync refuses it, the user's branch and index stay."""
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"})
    write_manifest(repo, "agents:\n  - name: w\n")
    git(repo, "add", "hybridiso.yaml")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "manifest")
    hybridiso(repo, "up")
    git(repo, "checkout", "-q", "-b", "userfeat")
    (repo / "uf.txt").write_text("the user's\n")
    git(repo, "add", "uf.txt")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "user work")
    git(repo, "checkout", "-q", "main")
    (repo / "b.txt").write_text("b\n")
    git(repo, "add", "b.txt")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "base moves")
    git(repo, "checkout", "-q", "userfeat")
    userfeat = git(repo, "rev-parse", "userfeat")
    env = tmp_path / "repo.agents" / "w"
    (env / ".git").write_text(f"gitdir: {repo / '.git'}\n")
    r = hybridiso(repo, "sync", "w", ok=None)
    assert "not at this worktree's own metadata" in r.stdout + r.stderr, r.stdout + r.stderr
    assert git(repo, "rev-parse", "userfeat") == userfeat
    assert git(repo, "status", "--porcelain") == ""
    st = status_json(repo)["w"]
    assert any("not at this worktree's own metadata" in p for p in st["problems"]), st


def test_a_forged_base_commit_never_makes_sync_drop_the_agents_commits(tmp_path: Path) -> None:
    """A record whose base_commit names the agent's own commit would make
    sync treat that commit as what base dropped (a force-push) and leave it
    out; then down would lose it.  Only a commit base really held counts."""
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"})
    write_manifest(repo, "agents:\n  - name: w\n")
    git(repo, "add", "hybridiso.yaml")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "manifest")
    hybridiso(repo, "up")
    env = tmp_path / "repo.agents" / "w"
    (env / "mine.txt").write_text("the agent's\n")
    git(env, "add", "mine.txt")
    git(env, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "agent work")
    tip = git(env, "rev-parse", "HEAD")
    (repo / "b.txt").write_text("b\n")
    git(repo, "add", "b.txt")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "base moves")
    path = _state_path(repo)
    data = json.loads(path.read_text())
    data["agents"]["w"]["base_commit"] = tip
    path.write_text(json.dumps(data))
    hybridiso(repo, "sync", "w", ok=None)
    head = git(env, "rev-parse", "HEAD")
    assert git_ok(env, "merge-base", "--is-ancestor", "main", head), "synced onto base"
    assert (env / "mine.txt").read_text() == "the agent's\n"
    assert git(env, "log", "--format=%s", "main..HEAD") == "agent work", "its commit is still on its branch"
