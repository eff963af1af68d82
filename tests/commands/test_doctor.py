"""``hybridiso doctor`` and the health lines of ``status`` (issue 5).

docs/faults.md row 20 (a container agent's process crashes) does not apply to worktree
and clone agents, which run no process of their own; the container work tests
it where ``status`` shows container state.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import hybridiso, state, write_manifest
from tests.support.gitrepo import commit_file, git, make_repo
from tests.gc.test_gc import env, make_project


def checks(cwd: Path, ok: bool | None = True) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in json.loads(hybridiso(cwd, "doctor", "--json", ok=ok).stdout)}


def test_healthy_project(tmp_path: Path) -> None:
    repo = make_project(tmp_path, "  - name: a\n    ports: [web]\n")
    hybridiso(repo, "up")
    c = checks(repo)
    assert c["git"]["status"] == "ok" and c["git"]["detail"].startswith("git ")
    assert "relative worktree paths" in " ".join(c)  # says whether git >= 2.48 has them
    assert c["git relative worktree paths"]["detail"].startswith(("available", "not available"))
    # no container agents: a missing Docker is at most a warning
    assert c["docker"]["status"] in ("ok", "warn")
    assert c["disk"]["status"] in ("ok", "warn") and "free" in c["disk"]["detail"]
    assert c["ports"]["status"] == "ok" and "1 leased" in c["ports"]["detail"]
    for name in ("interrupted creations", "prunable worktrees", "stale git locks", "state file"):
        assert c[name]["status"] == "ok", c[name]
    table = hybridiso(repo, "doctor").stdout
    assert "STATUS" in table and "git" in table


def test_stale_state_and_prunable_worktrees_are_warned(tmp_path: Path) -> None:
    repo = make_project(tmp_path, "  - name: a\n  - name: b\n")
    hybridiso(repo, "up")
    shutil.rmtree(env(repo, "a"))
    path = repo / ".git" / "hybridiso" / "state.json"
    data = json.loads(path.read_text())
    data["agents"]["b"]["phase"] = "creating"  # as an interrupted `up` leaves it
    path.write_text(json.dumps(data))
    c = checks(repo)
    assert c["prunable worktrees"]["status"] == "warn" and str(env(repo, "a")) in c["prunable worktrees"]["detail"]
    assert c["interrupted creations"]["status"] == "warn" and "b" in c["interrupted creations"]["detail"]
    assert "gc --yes" in c["prunable worktrees"]["fix"]
    # status flags the same, and drift from base
    commit_file(repo, "new.txt", "base moves\n")
    proc = hybridiso(repo, "status")
    assert "b: creation did not finish (it failed or was interrupted)" in proc.stderr
    # asked about one agent, status shows that agent's problems only
    assert "creation did not finish" not in hybridiso(repo, "status", "a").stderr
    assert "deleted" in proc.stderr  # a's row: directory gone
    rows = {r["agent"]: r for r in json.loads(hybridiso(repo, "status", "--json").stdout)}
    assert rows["a"]["state"] == "missing"
    # gc cleans both up; doctor is quiet again
    hybridiso(repo, "gc", "--yes")
    c = checks(repo)
    assert c["prunable worktrees"]["status"] == "ok" and c["interrupted creations"]["status"] == "ok"
    assert state(repo)["agents"] == {}


def test_status_flags_drift_and_leaves_a_foreign_prunable_worktree_alone(tmp_path: Path) -> None:
    repo = make_project(tmp_path, "  - name: a\n")
    hybridiso(repo, "up")
    git(repo, "worktree", "add", "-q", str(tmp_path / "mine"), "-b", "mine")
    shutil.rmtree(tmp_path / "mine")  # or on a disk not mounted right now
    commit_file(repo, "x.txt", "x\n")
    commit_file(repo, "y.txt", "y\n")
    proc = hybridiso(repo, "status")
    assert "2 commits behind main" in proc.stderr and "hybridiso sync" in proc.stderr
    # docs/faults.md row 28: not hybridiso's, so never advised for removal
    assert str(tmp_path / "mine") not in proc.stderr and "prunable" not in proc.stderr
    assert checks(repo)["prunable worktrees"]["status"] == "ok"
    rows = {r["agent"]: r for r in json.loads(hybridiso(repo, "status", "--json").stdout)}
    assert rows["a"]["behind"] == 2


def test_exhausted_port_range_fails(tmp_path: Path) -> None:
    repo = make_project(
        tmp_path,
        "  - name: a\n    ports: [web]\n  - name: b\n    ports: [web]\n  - name: c\n    ports: [web]\n",
        ports='ports: {range: "21500-21501"}\n',
    )
    proc = hybridiso(repo, "doctor", ok=False)
    assert proc.returncode == 1
    assert "1 check failed: ports" in proc.stderr and "ports.range" in proc.stderr


def test_outside_a_project_checks_the_machine(tmp_path: Path) -> None:
    plain = make_repo(tmp_path / "plain")  # a repository without hybridiso.yaml
    proc = hybridiso(plain, "doctor", "--json")
    names = {c["name"] for c in json.loads(proc.stdout)}
    assert "git" in names and "docker" in names and "ports" not in names
    assert "repository checks skipped" in proc.stderr


@pytest.mark.parametrize(
    "agent",
    [
        "{name: box, isolation: container, image: busybox}",
        # isolation auto, but resources: only a container gives: the planner picks one
        "{name: box, image: busybox, resources: {memory: 256m}}",
    ],
)
def test_container_agents_make_docker_mandatory(tmp_path: Path, monkeypatch: Any, agent: str) -> None:
    repo = make_repo(tmp_path / "repo")
    write_manifest(repo, f"version: 1\nagents:\n  - {agent}\n")
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    c = checks(repo, ok=False)
    assert c["docker"]["status"] == "fail"
    if shutil.which("docker"):
        assert "/nonexistent/docker.sock" in c["docker"]["detail"] and "start the Docker engine" in c["docker"]["fix"]


def test_corrupt_state_file_is_reported(tmp_path: Path) -> None:
    repo = make_project(tmp_path, "  - name: a\n")
    hybridiso(repo, "up")
    (repo / ".git" / "hybridiso" / "state.json").write_text("{not json")
    c = checks(repo)
    assert c["state file"]["status"] == "warn" and "rebuilt" in c["state file"]["fix"]
    assert "moved" in c["state file"]["detail"] or "corrupt" in c["state file"]["detail"], c["state file"]
    assert json.loads(hybridiso(repo, "status", "--json").stdout)[0]["agent"] == "a"  # rebuilt from git


def test_ports_taken_by_other_programs_are_counted_apart(tmp_path: Path) -> None:
    import socket

    from tests.support.postgres import free_port

    lo = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", lo))
        taken.listen()
        repo = make_project(tmp_path, "  - name: a\n    ports: [web]\n", ports=f'ports: {{range: "{lo}-{lo + 9}"}}\n')
        hybridiso(repo, "up")
        detail = checks(repo)["ports"]["detail"]
    assert f"8 of 10 ports free in {lo}-{lo + 9} (1 leased to agents, 1 in use by other programs)" in detail, detail
