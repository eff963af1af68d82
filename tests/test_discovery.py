"""Repository discovery and project identity (docs/faults.md row 22, issue 11).

Every command acts on the repository it stands in, with the same project
(manifest, workspace, state, names) from every directory of it: a deep
subdirectory, a linked worktree the user made, inside a worktree agent's and
a clone agent's environment, a nested repository, and each worktree of a bare
repository.  Real repositories, the real CLI.
"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import hybridiso, state, status_json, write_manifest
from tests.support.gitrepo import commit_file, git, make_repo
from tests.support.postgres import free_port

MANIFEST = """\
version: 1
base: main
ports: {range: "%(lo)d-%(hi)d"}
defaults:
  include: [".env"]
agents:
  - name: ui
    ports: [web]
  - name: api
  - name: rewriter
    workload: {needs: [own-refs]}
  - name: box
    isolation: container
    image: hybridiso-test/busybox:1
    command: ["sleep", "3600"]
"""
RUN = ("ui", "api", "rewriter")  # box is only rendered: its compose project name is the identity under test


def shop(tmp_path: Path) -> Path:
    repo = make_repo(tmp_path / "shop", {"README.md": "shop\n", "src/app.py": "print(1)\n", ".gitignore": ".env\n"})
    (repo / ".env").write_text("SECRET=main-checkout\n")
    lo = free_port()
    write_manifest(repo, MANIFEST % {"lo": lo, "hi": lo + 100})
    git(repo, "add", "hybridiso.yaml")
    git(repo, "commit", "-q", "-m", "manifest")
    return repo


def snapshot(repo: Path) -> dict[str, Any]:
    """What must not change when a command runs from elsewhere: refs, worktrees, state."""
    return {
        "refs": git(repo, "for-each-ref", "--format=%(refname) %(objectname)"),
        "worktrees": git(repo, "worktree", "list", "--porcelain"),
        "state": {n: (r["path"], r["ports"], r["created_at"]) for n, r in state(repo).get("agents", {}).items()},
    }


def every_command(where: Path, repo: Path, ws: Path) -> None:
    """init, plan, up, status, exec, render, sync, gc, report, doctor, down
    from ``where``: each acts on ``repo`` and its workspace ``ws``."""
    # init targets the repository's root, wherever it runs
    assert "agents:" in hybridiso(where, "init", "--print").stdout
    again = hybridiso(where, "init", ok=False)
    assert again.returncode == 1 and f"{repo / 'hybridiso.yaml'} already exists" in again.stderr
    plan = json.loads(hybridiso(where, "plan", "--json").stdout)
    assert {a["agent"]: a["path"] for a in plan["agents"]} == {n: str(ws / n) for n in (*RUN, "box")}
    before = snapshot(repo)
    up = hybridiso(where, "up", *RUN)
    assert "Created" not in up.stderr and "Up to date" in up.stderr, up.stderr
    assert snapshot(repo) == before  # nothing new made anywhere
    rows = status_json(where)
    assert {n: (r["state"], r["path"]) for n, r in rows.items() if n in RUN} == {n: ("ready", str(ws / n)) for n in RUN}
    assert hybridiso(where, "exec", "ui", "--", "pwd").stdout.strip() == str(ws / "ui")
    rendered = json.loads(hybridiso(where, "render", "--json", "box").stdout)
    assert rendered[0]["project"] == render_name(repo)  # one compose project name from everywhere
    assert rendered[0]["file"] == str(repo / ".git" / "hybridiso" / "compose" / "box" / "compose.yaml")
    synced = json.loads(hybridiso(where, "sync", "--json").stdout)
    assert {a["agent"]: a["result"] for a in synced["agents"]} == {n: "up to date" for n in RUN}
    gc = json.loads(hybridiso(where, "gc", "--json").stdout)
    assert not [f for f in gc["findings"] if f["action"] == "remove"], gc  # nothing of ours looks removable
    report = hybridiso(where, "report", "--format", "json")
    assert {e["agent"] for e in json.loads(report.stdout)["envs"]} == set(RUN)
    doctor = {c["name"]: c for c in json.loads(hybridiso(where, "doctor", "--json", ok=None).stdout)}
    assert doctor["state file"]["detail"] == "3 agents recorded"
    assert snapshot(repo) == before
    down = hybridiso(where, "down", "api")
    assert f"removed {ws / 'api'}" in down.stderr and not (ws / "api").exists()
    assert set(state(repo)["agents"]) == {"ui", "rewriter"}


def render_name(repo: Path) -> str:
    """The compose project name, as rendered from the repository's root."""
    return json.loads(hybridiso(repo, "render", "--json", "box").stdout)[0]["project"]


def linked_worktree(repo: Path, path: Path) -> Path:
    git(repo, "worktree", "add", "-q", str(path), "-b", "side")
    return path


@pytest.mark.parametrize("where", ["subdirectory", "user worktree", "user worktree subdirectory", "worktree agent", "clone agent"])
def test_every_command_from_anywhere_in_the_repository(tmp_path: Path, where: str) -> None:
    repo = shop(tmp_path)
    ws = tmp_path / "shop.agents"
    hybridiso(repo, "up", *RUN)
    if where == "subdirectory":
        cwd = repo / "src" / "deep" / "dir"
        cwd.mkdir(parents=True)
    elif where.startswith("user worktree"):
        cwd = linked_worktree(repo, tmp_path / "side")
        if where.endswith("subdirectory"):
            cwd = cwd / "src"
    elif where == "worktree agent":
        cwd = ws / "ui" / "src"
    else:
        cwd = ws / "rewriter" / "src"
        assert (ws / "rewriter" / ".git" / "hybridiso-owner").read_text().strip() == str(repo / ".git")
    every_command(cwd, repo, ws)
    # nothing was made beside the place we stood in
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({"shop", "shop.agents", *(["side"] if "user" in where else [])})
    assert git(cwd, "status", "--porcelain") == ""  # and nothing written where we stood


def test_up_from_a_subdirectory_makes_the_repositorys_agents(tmp_path: Path) -> None:
    """The filer's case: from repo/src the manifest was looked for in the
    parent, and with -f the lock landed in <parent>/.git (exit 3)."""
    repo = shop(tmp_path)
    sub = repo / "src"
    up = hybridiso(sub, "up", *RUN)
    assert all(n in up.stderr for n in RUN)
    assert set(state(repo)["agents"]) == set(RUN)
    assert not (tmp_path / ".git").exists() and not (tmp_path / "src.agents").exists()
    forced = hybridiso(sub, "-f", "../hybridiso.yaml", "status", "--json")
    assert {r["agent"] for r in json.loads(forced.stdout)} == {*RUN, "box"}
    assert not (tmp_path / ".git").exists()


def test_nested_repository_acts_on_the_inner_one(tmp_path: Path) -> None:
    outer = make_repo(tmp_path / "outer", {"README.md": "outer\n", ".gitignore": "inner/\n"})
    write_manifest(outer, "agents:\n  - name: outer-agent\n")
    inner = make_repo(outer / "inner", {"README.md": "inner\n", "sub/x.txt": "x\n"})
    write_manifest(inner, "agents:\n  - name: inner-agent\n")
    up = hybridiso(inner / "sub", "up")
    assert "inner-agent" in up.stderr and "outer-agent" not in up.stderr
    assert (outer / "inner.agents" / "inner-agent" / "README.md").read_text() == "inner\n"
    assert not (outer / ".git" / "hybridiso").exists() and not (tmp_path / "outer.agents").exists()
    assert git(outer, "worktree", "list", "--porcelain").count("worktree ") == 1
    assert set(status_json(inner / "sub")) == {"inner-agent"}
    hybridiso(inner / "sub", "down")
    assert not (outer / "inner.agents" / "inner-agent").exists()


def test_dash_c_a_file_or_nothing_is_a_clear_error(tmp_path: Path) -> None:
    repo = shop(tmp_path)
    for verb in ("status", "up", "init", "doctor"):
        r = hybridiso(tmp_path, "-C", str(repo / "README.md"), verb, ok=False)
        assert r.returncode == 1 and "is not a directory" in r.stderr and "next step:" in r.stderr, r.stderr
    r = hybridiso(tmp_path, "-C", str(tmp_path / "nowhere"), "status", ok=False)
    assert r.returncode == 1 and "no such directory" in r.stderr
    # -C a subdirectory (relative) is the repository
    assert set(json.loads(hybridiso(tmp_path, "-C", "shop/src", "plan", "--json").stdout)["agents"][0]) >= {"agent", "path"}


def test_a_current_directory_that_was_removed_is_a_clear_error(tmp_path: Path) -> None:
    """`hybridiso down api` from inside api's environment removes the
    directory the shell stands in: the next command says so (was exit 3)."""
    import sys

    repo = shop(tmp_path)
    hybridiso(repo, "up", "api")
    inside = tmp_path / "shop.agents" / "api" / "src"
    down = hybridiso(inside, "down", "api")
    assert "removed" in down.stderr and not inside.exists()

    def from_a_removed_directory(*args: str) -> subprocess.CompletedProcess[str]:
        gone = tmp_path / "gone"
        gone.mkdir()
        script = 'cd "$1" && rmdir "$1" && shift && exec "$@"'
        return subprocess.run(["sh", "-c", script, "sh", str(gone), sys.executable, "-m", "hybridiso", *args],
                              capture_output=True, text=True, timeout=60, check=False)

    r = from_a_removed_directory("status")
    assert r.returncode == 1 and "does not exist any more" in r.stderr and "next step:" in r.stderr, r.stderr
    r = from_a_removed_directory("-C", str(repo), "status", "--json")
    assert r.returncode == 0 and [row["agent"] for row in json.loads(r.stdout)] == ["ui", "api", "rewriter", "box"]


def test_a_worktree_whose_link_broke_is_named(tmp_path: Path) -> None:
    repo = shop(tmp_path)
    git(repo, "worktree", "add", "-q", str(tmp_path / "w"))
    shutil.rmtree(repo / ".git" / "worktrees" / "w")
    r = hybridiso(tmp_path / "w", "status", ok=False)
    assert r.returncode == 1 and "link to its repository is broken" in r.stderr and "worktree repair" in r.stderr


def test_inside_the_git_directory_is_the_repository(tmp_path: Path) -> None:
    repo = shop(tmp_path)
    hybridiso(repo, "up", "ui")
    rows = status_json(repo / ".git" / "hybridiso")
    assert rows["ui"]["state"] == "ready"


def test_a_tampered_clone_marker_redirects_nowhere(tmp_path: Path) -> None:
    """A clone's marker names its owner; it is believed only when the owner's
    records list the clone there, so an agent cannot aim hybridiso at another
    repository (or at nothing) by rewriting it."""
    repo = shop(tmp_path)
    hybridiso(repo, "up", "rewriter")
    other = make_repo(tmp_path / "other")
    write_manifest(other, "agents:\n  - name: victim\n")
    hybridiso(other, "up")
    before = snapshot(other)
    clone = tmp_path / "shop.agents" / "rewriter"
    (clone / ".git" / "hybridiso-owner").write_text(str(other / ".git") + "\n")
    for verb in (("status",), ("down", "--force"), ("up",), ("gc", "--yes")):
        r = hybridiso(clone, *verb, ok=False)
        assert r.returncode == 1 and "do not list it there" in r.stderr and "next step:" in r.stderr, r.stderr
    assert snapshot(other) == before and (tmp_path / "other.agents" / "victim").is_dir()
    assert clone.is_dir() and state(repo)["agents"]["rewriter"]["path"] == str(clone)
    # a symlinked marker is never followed
    (clone / ".git" / "hybridiso-owner").unlink()
    (clone / ".git" / "hybridiso-owner").symlink_to(tmp_path / "other" / ".git" / "HEAD")
    r = hybridiso(clone, "status", ok=False)
    assert r.returncode == 1 and "is a symlink" in r.stderr


def test_a_clone_made_before_the_marker_gets_it_from_up(tmp_path: Path) -> None:
    repo = shop(tmp_path)
    hybridiso(repo, "up", "rewriter")
    marker = tmp_path / "shop.agents" / "rewriter" / ".git" / "hybridiso-owner"
    marker.unlink()  # as older versions left it
    hybridiso(repo, "up", "rewriter")
    assert marker.read_text() == f"{repo / '.git'}\n"
    assert set(status_json(tmp_path / "shop.agents" / "rewriter")) == {*RUN, "box"}


# --- a bare repository with linked worktrees ----------------------------------------


def bare_layout(tmp_path: Path, manifest: str) -> tuple[Path, Path, Path]:
    """``shop.git`` (bare) with worktrees ``wa`` (main) and ``wb`` (branch b)."""
    seed = make_repo(tmp_path / "seed", {"README.md": "shop\n", ".gitignore": ".env\n"})
    write_manifest(seed, manifest)
    git(seed, "add", "hybridiso.yaml")
    git(seed, "commit", "-q", "-m", "manifest")
    bare = tmp_path / "shop.git"
    git(tmp_path, "clone", "-q", "--bare", str(seed), str(bare))
    shutil.rmtree(seed)
    git(bare, "worktree", "add", "-q", str(tmp_path / "wa"), "main")
    git(bare, "worktree", "add", "-q", "-b", "b", str(tmp_path / "wb"), "main")
    for wt in ("wa", "wb"):
        (tmp_path / wt / ".env").write_text(f"FROM={wt}\n")
    return bare, tmp_path / "wa", tmp_path / "wb"


def test_bare_repository_one_project_from_every_worktree(tmp_path: Path) -> None:
    lo = free_port()
    bare, wa, wb = bare_layout(tmp_path, f'ports: {{range: "{lo}-{lo + 50}"}}\ndefaults: {{include: [".env"]}}\n'
                               "agents:\n  - {name: ui, ports: [web]}\n  - {name: hist, isolation: clone}\n")
    ws = tmp_path / "shop.agents"  # beside the bare dir, named without .git
    hybridiso(wa, "up")
    assert (ws / "ui" / ".env").read_text() == "FROM=wa\n"  # includes come from where you stand
    assert (bare / "hybridiso" / "state.json").is_file()
    again = hybridiso(wb, "up")
    assert "Created" not in again.stderr and "Up to date" in again.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shop.agents", "shop.git", "wa", "wb"]
    assert {n: r["path"] for n, r in status_json(wb).items()} == {"ui": str(ws / "ui"), "hist": str(ws / "hist")}
    # from inside the agents' environments too: the worktree they were made from
    for inside in (ws / "ui", ws / "hist"):
        assert set(status_json(inside)) == {"ui", "hist"}
    assert git(ws / "hist", "remote", "get-url", "hybridiso-base") == str(bare)  # not a worktree that may go
    # a relative workspace resolves against the bare dir itself
    write_manifest(wb, "workspace: ../elsewhere.agents\nagents:\n  - {name: other}\n")
    plan = json.loads(hybridiso(wb, "plan", "--json").stdout)
    assert plan["agents"][0]["path"] == str(tmp_path / "elsewhere.agents" / "other")
    git(wb, "checkout", "-q", "--", "hybridiso.yaml")
    hybridiso(wb, "down")
    assert not (ws / "ui").exists() and not (ws / "hist").exists()
    assert git(bare, "worktree", "list", "--porcelain").count("worktree ") == 3  # bare, wa, wb


def test_bare_repository_itself_is_a_clear_error(tmp_path: Path) -> None:
    bare, wa, _ = bare_layout(tmp_path, "agents:\n  - {name: ui}\n")
    for cwd, args in ((bare, ("status",)), (tmp_path, ("-C", str(bare), "up"))):
        r = hybridiso(cwd, *args, ok=False)
        assert r.returncode == 1 and "is a bare repository" in r.stderr and str(wa) in r.stderr, r.stderr
    lone = tmp_path / "lone.git"
    git(tmp_path, "init", "-q", "--bare", str(lone))
    r = hybridiso(lone, "plan", ok=False)
    assert r.returncode == 1 and "worktree add" in r.stderr


def test_hidden_bare_dir_layout(tmp_path: Path) -> None:
    """``proj/.bare`` with ``proj/.git`` pointing at it, worktrees inside
    ``proj``: the workspace is ``proj.agents`` beside ``proj``."""
    seed = make_repo(tmp_path / "seed")
    write_manifest(seed, "agents:\n  - {name: ui}\n")
    git(seed, "add", "hybridiso.yaml")
    git(seed, "commit", "-q", "-m", "manifest")
    proj = tmp_path / "proj"
    proj.mkdir()
    git(proj, "clone", "-q", "--bare", str(seed), ".bare")
    (proj / ".git").write_text("gitdir: ./.bare\n")
    git(proj, "worktree", "add", "-q", "main", "main")
    hybridiso(proj / "main", "up")
    assert (tmp_path / "proj.agents" / "ui" / "README.md").is_file()
    r = hybridiso(proj, "status", ok=False)
    assert "bare repository" in r.stderr and str(proj / "main") in r.stderr


@pytest.mark.docker
def test_bare_repository_one_container_per_agent(tmp_path: Path, busybox_image: str) -> None:
    from tests.support.docker_fixtures import TEST_LABEL, TEST_RUN

    lo = free_port()
    _, wa, wb = bare_layout(
        tmp_path,
        f'labels: {{{TEST_LABEL}: "{TEST_RUN}"}}\nports: {{range: "{lo}-{lo + 50}"}}\n'
        f'agents:\n  - {{name: box, isolation: container, image: "{busybox_image}", command: ["sleep", "3600"], ports: [web]}}\n',
    )
    try:
        hybridiso(wa, "up")
        hybridiso(wb, "up")
        hybridiso(tmp_path / "shop.agents" / "box", "up")
        ids = containers_of(tmp_path / "shop.agents" / "box")
        assert len(ids) == 1, ids  # one container, whichever worktree `up` ran from
        assert status_json(wb)["box"]["process"].startswith("running")
    finally:
        hybridiso(wa, "down", "--force", ok=None)
    assert containers_of(tmp_path / "shop.agents" / "box") == []


def containers_of(env: Path) -> list[str]:
    r = subprocess.run(
        ["docker", "ps", "-aq", "--filter", "label=dev.hybridiso.agent=box", "--filter", f"label=dev.hybridiso.project={project_id_of(env)}"],
        capture_output=True, text=True, check=True,
    )
    return r.stdout.split()


def project_id_of(env: Path) -> str:
    text = (env / ".hybridiso.env").read_text() if (env / ".hybridiso.env").exists() else ""
    for line in text.splitlines():
        if line.startswith("HYBRIDISO_PROJECT="):
            return line.partition("=")[2]
    return "none"


def test_project_identity_is_one_id(tmp_path: Path) -> None:
    """The env file's mark, the database key and the Docker label are one id,
    the same from every worktree (and the label keeps its historic value)."""
    import hashlib

    from hybridiso.names import compose_project_name as project_name
    from hybridiso.project import load_project
    from hybridiso.services.branches import project_key

    repo = shop(tmp_path)
    hybridiso(repo, "up", "ui")
    side = linked_worktree(repo, tmp_path / "side")
    ids = set()
    for where in (repo, repo / "src", side, tmp_path / "shop.agents" / "ui"):
        p = load_project(where)
        ids.add((p.id, project_key(p), p.compose_project("box"), p.workspace))
    assert len(ids) == 1, ids
    pid, key, compose, _ = ids.pop()
    # the values existing containers, volumes and databases already carry
    assert pid == hashlib.sha256(str((repo / ".git").resolve()).encode()).hexdigest()[:12]
    assert key == f"shop_{pid[:6]}"
    assert compose == project_name(str(repo), "box")
    assert f"HYBRIDISO_PROJECT={pid}\n" in (tmp_path / "shop.agents" / "ui" / ".hybridiso.env").read_text()
    commit_file(repo, "x.txt", "x\n")  # unrelated to identity: a commit changes nothing
    assert load_project(side).id == pid
