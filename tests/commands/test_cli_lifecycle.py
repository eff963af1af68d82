"""The core lifecycle through the real CLI on real repositories."""
from __future__ import annotations

import json
import os
from pathlib import Path

from tests.support.cli import hybridiso, state, status_json, write_manifest
from tests.support.gitrepo import commit_file, git, make_repo

MANIFEST = """\
version: 1
base: main
ports: {range: "%(lo)d-%(hi)d"}
defaults:
  include: [".env"]
  setup: ["echo ran for $HYBRIDISO_AGENT on $PORT_WEB >> setup.out"]
agents:
  - name: ui
    ports: [web]
  - name: api
    ports: [web, admin]
  - name: rewriter
    workload: {needs: [own-refs]}
    ports: [web]
"""


def project(tmp_path: Path) -> Path:
    from tests.support.postgres import free_port

    repo = make_repo(tmp_path / "shop", {"README.md": "shop\n", "src/app.py": "print(1)\n", ".gitignore": ".env\nsetup.out\n"})
    (repo / ".env").write_text("SECRET=s3cret\n")
    lo = free_port()
    write_manifest(repo, MANIFEST % {"lo": lo, "hi": lo + 200})
    return repo


def test_up_status_exec_down(tmp_path: Path) -> None:
    """The whole lifecycle, run from a subdirectory of the repository, as a
    user in the middle of their work would (docs/faults.md row 22)."""
    repo = project(tmp_path)
    where = repo / "src" / "deep" / "dir"
    where.mkdir(parents=True)
    plan = json.loads(hybridiso(where, "plan", "--json").stdout)
    assert {a["agent"]: a["strategy"] for a in plan["agents"]} == {"ui": "worktree", "api": "worktree", "rewriter": "clone"}
    assert all(a["reason"] for a in plan["agents"])

    up = hybridiso(where, "up")
    for name in ("ui", "api", "rewriter"):
        assert name in up.stderr and "Created" in up.stderr
    ws = tmp_path / "shop.agents"
    st = status_json(where)
    assert set(st) == {"ui", "api", "rewriter"}
    for name, row in st.items():
        assert row["state"] == "ready" and row["dirty"] == 0, row
        assert row["path"] == str(ws / name)
        assert (ws / name / ".env").read_text() == "SECRET=s3cret\n"  # include copied
        assert f"ran for {name}" in (ws / name / "setup.out").read_text()
    # ports: distinct, in the env file, and the same through exec
    ports = [p for row in st.values() for p in row["ports"].values()]
    assert len(ports) == len(set(ports)) == 4
    env_file = (ws / "api" / ".hybridiso.env").read_text()
    assert f"PORT_ADMIN={st['api']['ports']['admin']}" in env_file and "HYBRIDISO_AGENT=api" in env_file
    out = hybridiso(where, "exec", "api", "--", "sh", "-c", "echo $PORT_WEB:$HYBRIDISO_AGENT:$(pwd)").stdout.strip()
    assert out == f"{st['api']['ports']['web']}:api:{ws / 'api'}"
    # the worktree branch starts at base with no upstream config
    assert git(ws / "ui", "rev-parse", "HEAD") == git(repo, "rev-parse", "main")
    assert git(repo, "config", "--get", "branch.hybridiso/ui.remote", check=False) == ""
    # exit codes pass through exec
    assert hybridiso(where, "exec", "ui", "--", "sh", "-c", "exit 7", ok=None).returncode == 7
    missing = hybridiso(where, "exec", "ui", "--", "no-such-program", ok=None)
    assert missing.returncode == 127 and "command not found: no-such-program" in missing.stderr  # as a shell says it

    # idempotent: nothing changes the second time
    before = state(repo)
    again = hybridiso(where, "up")
    assert "Created" not in again.stderr and "Up to date" in again.stderr
    after = state(repo)
    assert {n: (r["path"], r["ports"], r["created_at"]) for n, r in before["agents"].items()} == {
        n: (r["path"], r["ports"], r["created_at"]) for n, r in after["agents"].items()
    }

    hybridiso(where, "down")
    assert not any((ws / n).exists() for n in ("ui", "api", "rewriter"))
    assert git(repo, "branch", "--list", "hybridiso/*") == ""
    assert state(repo)["agents"] == {}  # ports released


def test_remote_base_worktreeinclude_and_an_env_file_git_never_sees(tmp_path: Path) -> None:
    """base: origin/main would make git write upstream config for the new
    branch (branch.autoSetupMerge); .worktreeinclude names ignored files to
    copy; the env file hybridiso writes never shows in `git status`."""
    upstream = tmp_path / "upstream.git"
    git(tmp_path, "init", "-q", "--bare", str(upstream))
    repo = make_repo(tmp_path / "r", {".gitignore": "config/local.json\n.env\n", ".worktreeinclude": "# local settings\nconfig/local.json\n"})
    (repo / "config").mkdir()
    (repo / "config" / "local.json").write_text('{"db": "local"}\n')
    (repo / ".env").write_text("NOT=listed\n")
    git(repo, "remote", "add", "origin", str(upstream))
    git(repo, "push", "-q", "origin", "main")
    git(repo, "fetch", "-q", "origin")
    write_manifest(repo, "base: origin/main\nagents:\n  - {name: w, ports: [web]}\n  - {name: c, isolation: clone}\n")
    hybridiso(repo, "up")
    ws = tmp_path / "r.agents"
    for name, cfg in (("w", repo), ("c", ws / "c")):
        env = ws / name
        assert git(env, "rev-parse", "HEAD") == git(repo, "rev-parse", "origin/main")
        for key in ("remote", "merge"):
            assert git(cfg, "config", "--get", f"branch.hybridiso/{name}.{key}", check=False) == "", (name, key)
        assert (env / "config" / "local.json").read_text() == '{"db": "local"}\n'  # from .worktreeinclude
        assert not (env / ".env").exists()  # ignored, but listed nowhere
        assert (env / ".hybridiso.env").is_file() and "HYBRIDISO_AGENT=" + name in (env / ".hybridiso.env").read_text()
        assert git(env, "status", "--porcelain", "--ignored=no") == ""  # the env file is invisible to git
    assert git(repo, "status", "--porcelain") == "?? hybridiso.yaml"  # only what the user wrote
    hybridiso(repo, "down")


def test_setup_reruns_only_when_a_lockfile_changes(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r", {"package-lock.json": "{}\n", ".gitignore": "count\n"})
    write_manifest(repo, "agents:\n  - name: a\ndefaults:\n  setup: ['echo x >> count']\n")
    hybridiso(repo, "up")
    env = tmp_path / "r.agents" / "a"
    hybridiso(repo, "up")
    assert (env / "count").read_text() == "x\n"
    (env / "package-lock.json").write_text('{"changed": true}\n')
    hybridiso(repo, "up")
    assert (env / "count").read_text() == "x\nx\n"


def test_failed_setup_reports_log_and_next_up_retries(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r")
    write_manifest(repo, "agents:\n  - name: a\ndefaults:\n  setup: ['echo boom-output; exit 3']\n")
    r = hybridiso(repo, "up", ok=False)
    assert r.returncode == 1 and "exit 3" in r.stderr and "boom-output" in r.stderr and "setup.log" in r.stderr
    assert status_json(repo)["a"]["state"].startswith("creating")
    write_manifest(repo, "agents:\n  - name: a\ndefaults:\n  setup: ['true']\n")
    hybridiso(repo, "up")
    assert status_json(repo)["a"]["state"] == "ready"


def test_clone_is_hardlinked_independent_and_pushes_to_users_origin(tmp_path: Path) -> None:
    upstream = tmp_path / "upstream.git"
    git(tmp_path, "init", "-q", "--bare", str(upstream))
    repo = make_repo(tmp_path / "r", {f"f{i}.txt": f"{i}\n" for i in range(20)})
    git(repo, "remote", "add", "origin", str(upstream))
    git(repo, "push", "-q", "origin", "main")
    git(repo, "gc", "-q")
    write_manifest(repo, "agents:\n  - {name: hist, isolation: clone}\n")
    hybridiso(repo, "up")
    clone = tmp_path / "r.agents" / "hist"
    assert git(clone, "remote", "get-url", "origin") == str(upstream)
    assert git(clone, "remote", "get-url", "hybridiso-base") == str(repo)
    packs = list((clone / ".git" / "objects" / "pack").glob("*.pack"))
    assert packs and all(os.stat(p).st_nlink > 1 for p in packs)  # hard-linked, not copied
    assert not (clone / ".git" / "objects" / "info" / "alternates").exists()  # independent
    assert git(clone, "branch", "--show-current") == "hybridiso/hist"
    # the agent commits in its clone; down --keep-branch brings the branch home
    commit_file(clone, "new.txt", "agent work\n")
    refused = hybridiso(repo, "down", ok=False)
    assert "commits not in base" in refused.stderr and clone.exists()
    hybridiso(repo, "down", "--keep-branch")
    assert not clone.exists()
    assert git(repo, "show", "hybridiso/hist:new.txt") == "agent work"


def test_clone_origin_means_the_same_from_the_clone(tmp_path: Path) -> None:
    """A relative origin (../upstream.git) would point elsewhere from the
    clone's directory, and a pushurl would be lost: both are carried over."""
    for bare in ("upstream.git", "push.git"):
        git(tmp_path, "init", "-q", "--bare", str(tmp_path / bare))
    repo = make_repo(tmp_path / "r")
    git(repo, "remote", "add", "origin", "../upstream.git")
    git(repo, "config", "remote.origin.pushurl", "../push.git")
    git(repo, "config", "--add", "remote.origin.pushurl", "git@example.invalid:team/r.git")
    git(repo, "push", "-q", str(tmp_path / "upstream.git"), "main")
    write_manifest(repo, "agents:\n  - {name: hist, isolation: clone}\n")
    hybridiso(repo, "up")
    clone = tmp_path / "r.agents" / "hist"
    assert git(clone, "config", "remote.origin.url") == str(tmp_path / "upstream.git")
    assert git(clone, "config", "--get-all", "remote.origin.pushurl").splitlines() == [
        str(tmp_path / "push.git"),
        "git@example.invalid:team/r.git",  # a URL is kept as written
    ]
    git(clone, "fetch", "-q", "origin")
    assert git(clone, "rev-parse", "origin/main") == git(repo, "rev-parse", "main")
    commit_file(clone, "new.txt", "agent work\n")
    git(clone, "push", "-q", str(tmp_path / "push.git"), "hybridiso/hist")  # the first pushurl, by path
    assert git(tmp_path / "push.git", "show", "hybridiso/hist:new.txt") == "agent work"


def test_worktree_from_a_linked_worktree_and_submodules(tmp_path: Path) -> None:
    sub = make_repo(tmp_path / "lib", {"lib.txt": "lib\n"})
    repo = make_repo(tmp_path / "r")
    git(repo, "submodule", "add", "-q", str(sub), "vendor/lib")
    git(repo, "commit", "-q", "-m", "add submodule")
    write_manifest(repo, "agents:\n  - name: a\n  - name: b\n")
    git(repo, "worktree", "add", "-q", str(tmp_path / "side"), "-b", "side")
    hybridiso(tmp_path / "side", "up")  # run from another worktree: same project
    for n in ("a", "b"):
        env = tmp_path / "r.agents" / n
        assert (env / "vendor" / "lib" / "lib.txt").read_text() == "lib\n"
    assert set(status_json(repo)) == {"a", "b"}


def test_init_writes_a_manifest_that_loads(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r", {"package-lock.json": "{}\n", ".gitignore": ".env\n"})
    (repo / ".env").write_text("X=1\n")
    r = hybridiso(repo, "init")
    text = (repo / "hybridiso.yaml").read_text()
    assert '"npm ci"' in text and '".env"' in text and "next:" in r.stderr
    hybridiso(repo, "plan")
    again = hybridiso(repo, "init", ok=False)
    assert "already exists" in again.stderr


def test_help_for_every_command(tmp_path: Path) -> None:
    top = hybridiso(tmp_path, "--help").stdout
    from hybridiso.main import COMMANDS

    for verb in COMMANDS:
        assert verb in top
        h = hybridiso(tmp_path, verb, "--help")
        assert "usage: hybridiso " + verb in h.stdout
    bad = hybridiso(tmp_path, "frobnicate", ok=False)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def test_outside_a_repository_is_a_clear_error(tmp_path: Path) -> None:
    r = hybridiso(tmp_path, "status", ok=False)
    assert r.returncode == 1 and "not inside a git repository" in r.stderr


def test_down_never_removes_an_environment_an_exec_still_runs_in(tmp_path: Path) -> None:
    """attack11 #11: `down` removed the directory under a running `exec`;
    what the command wrote next was lost ("Directory nonexistent").  Now
    down refuses naming it, and --force stops its whole tree first."""
    import subprocess
    import sys
    import time

    repo = make_repo(tmp_path / "repo")
    write_manifest(repo, "agents:\n  - name: a\n")
    hybridiso(repo, "up")
    env = tmp_path / "repo.agents" / "a"
    started = env / "started"
    # a tree: the shell starts a child that outlives it unless stopped
    proc = subprocess.Popen(
        [sys.executable, "-m", "hybridiso", "exec", "a", "--", "sh", "-c", "touch started; (sleep 30; echo late > late.txt) & wait"],
        cwd=repo, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.time() + 60
        while not started.exists():
            assert time.time() < deadline and proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        r = hybridiso(repo, "down", ok=False)
        assert r.returncode == 1 and "`hybridiso exec` started still runs" in r.stderr and "pid " in r.stderr, r.stderr
        assert env.is_dir()
        r = hybridiso(repo, "down", "--force")
        assert not env.exists()
        proc.wait(timeout=30)  # exec returns once its command was stopped
        out = subprocess.run(["pgrep", "-f", "sleep 30; echo late"], capture_output=True, text=True, check=False).stdout
        assert out.strip() == "", f"a child of the exec survived: {out}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
