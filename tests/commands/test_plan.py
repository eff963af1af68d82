"""``plan`` says what ``up`` will refuse (issue 16), and ``up`` refuses an
unusable workspace with one message that names it and a fix."""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import hybridiso, hybridiso_as_plain_user, state, write_manifest
from tests.support.gitrepo import git, make_repo


def _plan(repo: Path) -> dict[str, Any]:
    return dict(json.loads(hybridiso(repo, "plan", "--json").stdout))


@pytest.mark.parametrize("isolation", ["worktree", "auto"])
def test_a_branch_an_existing_environment_holds_whatever_the_manifest_order(tmp_path: Path, isolation: str) -> None:
    """Agent ``a`` has ``feat`` checked out; ``w``, listed before it, asks for
    the same branch.  plan used to see the branch free (it looked at the
    agents in order) and said nothing, then up refused ``w``."""
    repo = make_repo(tmp_path / "r", {"a.txt": "a\n"})
    write_manifest(repo, "agents:\n  - {name: a, branch: feat}\n")
    hybridiso(repo, "up")
    write_manifest(repo, f"agents:\n  - {{name: w, isolation: {isolation}, branch: feat}}\n  - {{name: a, branch: feat}}\n")
    plan = {p["agent"]: p for p in _plan(repo)["agents"]}
    # the holder is never told it should be something else
    assert plan["a"]["warnings"] == [] and plan["a"]["strategy"] == "worktree"
    if isolation == "worktree":
        assert plan["w"]["warnings"] == [
            "branch 'feat' is checked out by agent a, and a worktree needs it checked out too: `up` will refuse; give the agent another branch"
        ]
        r = hybridiso(repo, "up", ok=False)
        assert "w: branch feat is checked out at" in r.stderr and "a worktree  Up to date" in r.stderr
        assert "w" not in state(repo)["agents"]
    else:
        # auto: a branch another agent has checked out gets a clone, and up makes just that
        assert plan["w"]["strategy"] == "clone" and plan["w"]["reason"] == "branch 'feat' is already checked out by agent a"
        hybridiso(repo, "up")
        assert state(repo)["agents"]["w"]["strategy"] == "clone"
        assert git(tmp_path / "r.agents" / "w", "branch", "--show-current") == "feat"


def test_plan_says_what_up_will_refuse(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r", {"a.txt": "a\n"})
    write_manifest(repo, "base: nowhere\nagents:\n  - {name: a}\n")
    r = hybridiso(repo, "plan")
    assert "hybridiso: warning: `up` will refuse: base 'nowhere' does not name a commit" in r.stderr
    assert "does not name a commit" in hybridiso(repo, "up", ok=False).stderr
    # a branch that would shadow a remote-tracking one: up refuses every agent
    upstream = make_repo(tmp_path / "up", {"a.txt": "a\n"})
    git(upstream, "branch", "feature")
    git(repo, "remote", "add", "origin", str(upstream))
    git(repo, "fetch", "-q", "origin")
    write_manifest(repo, "agents:\n  - {name: f, branch: origin/feature}\n")
    warnings = _plan(repo)["warnings"]
    assert any(w.startswith("`up` will refuse: agent f: branch 'origin/feature'") for w in warnings), warnings
    assert "would shadow remote-tracking branches" in hybridiso(repo, "up", ok=False).stderr


def test_plan_says_up_will_refuse_an_exhausted_port_range(tmp_path: Path) -> None:
    from tests.support.postgres import free_port

    repo = make_repo(tmp_path / "r", {"a.txt": "a\n"})
    port = free_port()
    write_manifest(repo, f'ports: {{range: "{port}-{port}"}}\nagents:\n  - {{name: a, ports: [web]}}\n  - {{name: b, ports: [web]}}\n')
    r = hybridiso(repo, "plan")
    assert f"`up` will refuse: port range {port}-{port} is exhausted: no free port for b.web" in r.stderr, r.stderr
    assert "is exhausted" in hybridiso(repo, "up", ok=False).stderr
    assert not (tmp_path / "r.agents").exists(), "plan took nothing and up made nothing"
    # one port is enough for one agent: plan says nothing then
    write_manifest(repo, f'ports: {{range: "{port}-{port}"}}\nagents:\n  - {{name: a, ports: [web]}}\n')
    assert "will refuse" not in hybridiso(repo, "plan").stderr


def test_plan_says_up_will_refuse_a_record_it_must_not_act_on(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r", {"a.txt": "a\n"})
    write_manifest(repo, "agents:\n  - {name: a}\n  - {name: b}\n")
    hybridiso(repo, "up")
    path = repo / ".git" / "hybridiso" / "state.json"
    data = json.loads(path.read_text())
    mine = tmp_path / "mine"
    mine.mkdir()
    data["agents"]["b"]["path"] = str(mine)  # a tampered record (docs/faults.md row 30)
    path.write_text(json.dumps(data))
    r = hybridiso(repo, "plan")
    assert "`up` will refuse:" in r.stderr and str(mine) in r.stderr and "(b)" in r.stderr, r.stderr
    assert "refusing to act on" in hybridiso(repo, "up", ok=False).stderr


def test_plan_checks_the_workspace_when_a_made_environment_is_gone(tmp_path: Path) -> None:
    """A ready record whose directory was deleted by hand is made again by
    `up`: the workspace must be writable for it."""
    import shutil

    repo = make_repo(tmp_path / "r", {"a.txt": "a\n"})
    write_manifest(repo, "agents:\n  - {name: a}\n")
    hybridiso(repo, "up")
    shutil.rmtree(tmp_path / "r.agents" / "a")
    (tmp_path / "r.agents").chmod(0o555)
    try:
        r = hybridiso_as_plain_user(repo, "plan")
        assert "`up` will refuse: the workspace" in r.stderr, r.stderr
        up = hybridiso_as_plain_user(repo, "up")
        lines = [line for line in up.stderr.splitlines() if line.strip()]
        assert up.returncode == 1 and lines[0].startswith(f"hybridiso: error: the workspace {tmp_path / 'r.agents'} cannot be created"), up.stderr
        assert len(lines) == 2, up.stderr  # one message and its next step, not git's error per agent
    finally:
        (tmp_path / "r.agents").chmod(0o755)


def _read_only_dir(path: Path) -> Path:
    path.mkdir()
    path.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    return path


@pytest.mark.parametrize("where", ["parent not writable", "workspace not writable"])
def test_a_workspace_that_cannot_be_made_is_one_message_with_the_path_and_a_fix(tmp_path: Path, where: str) -> None:
    repo = make_repo(tmp_path / "r", {"a.txt": "a\n"})
    locked = _read_only_dir(tmp_path / "locked")
    workspace = locked / "ws"
    blocker = locked
    if where == "workspace not writable":
        locked.chmod(0o755)
        _read_only_dir(workspace)
        blocker = workspace
    try:
        write_manifest(repo, f"workspace: {workspace}\nagents:\n  - {{name: a}}\n  - {{name: b, isolation: clone}}\n")
        os.chmod(repo, 0o755)
        plan = hybridiso_as_plain_user(repo, "plan")
        assert plan.returncode == 0, plan.stderr
        assert f"`up` will refuse: the workspace {workspace} cannot be created: {blocker} is not writable by this user" in plan.stderr
        r = hybridiso_as_plain_user(repo, "up")
        assert r.returncode == 1, r.stderr
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        assert lines[0] == f"hybridiso: error: the workspace {workspace} cannot be created: {blocker} is not writable by this user (uid {os.getuid()})", r.stderr
        assert lines[1].startswith("  next step: set `workspace:` in hybridiso.yaml to a directory you can write") and f"mkdir -p '{workspace}'" in lines[1]
        assert len(lines) == 2 and "PermissionError" not in r.stderr
        assert state(repo).get("agents", {}) == {}  # nothing recorded, nothing made
        assert git(repo, "branch", "--list", "hybridiso/*") == ""
    finally:
        for p in (workspace, locked):
            if p.exists():
                p.chmod(0o755)


@pytest.mark.parametrize("top", ["/sys", "/proc"])
def test_a_workspace_the_permission_bits_allow_but_the_kernel_refuses(tmp_path: Path, top: str) -> None:
    """Root may "write" /sys and /proc by the bits; mkdir there fails.  One
    message naming the workspace, not "the disk is full" per agent."""
    repo = make_repo(tmp_path / "r", {"a.txt": "a\n"})
    workspace = Path(top) / f"hybridiso-test-ws-{os.getpid()}"
    write_manifest(repo, f"workspace: {workspace}\nagents:\n  - {{name: a}}\n  - {{name: b, isolation: clone}}\n")
    r = hybridiso(repo, "up", ok=False)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert lines[0].startswith(f"hybridiso: error: the workspace {workspace} cannot be created: "), r.stderr
    assert len(lines) == 2 and lines[1].startswith("  next step: set `workspace:` in hybridiso.yaml"), r.stderr
    assert "disk is full" not in r.stderr
    assert state(repo).get("agents", {}) == {}
    assert git(repo, "branch", "--list", "hybridiso/*") == ""
