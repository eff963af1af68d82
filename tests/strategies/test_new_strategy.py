"""Adding a strategy is one module, its name in the names table, one registry
line and one test (docs/architecture.md, "Adding a strategy").  This file is
that proof: it is the module of a new strategy, ``copy`` (an independent
repository holding a full copy of the objects: no hard links, no remotes), and
its test, which registers it as ``hybridiso/strategies/__init__.py`` would and
drives the real CLI (``plan``, ``up``, ``status``, ``exec``, ``down``) with it
on a real repository.  Nothing outside this file knows its name.
"""
from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from hybridiso import cleanup, git
from hybridiso.env_context import EnvContext
from hybridiso.strategies import base
from hybridiso.strategies.base import Observation
from hybridiso.work.inventory import MainRepo, WorkReport, store_work
from tests.support.cli import check_no_crash, write_manifest
from tests.support.gitrepo import git as run_git
from tests.support.gitrepo import make_repo

# --- the strategy: what every strategy must define -------------------------------------

NAME = "copy"
SHARES_REFS = False  # a repository of its own: the agent's branch lives in it


def create(ctx: EnvContext) -> None:
    """``ctx.path`` is absent or empty (lifecycle.prepare checked it)."""
    ctx.path.parent.mkdir(parents=True, exist_ok=True)
    git.run(ctx.path.parent, "clone", "-q", "--no-hardlinks", "--no-checkout", "--", str(ctx.project.root), str(ctx.path))
    git.run(ctx.path, "remote", "remove", "origin")  # a copy: it pushes nowhere
    git.checkout_new_branch(ctx.path, ctx.record.branch, ctx.record.base_commit or "HEAD")


def remove(ctx: EnvContext) -> None:
    cleanup.remove_tree_or_explain(ctx.path, f"agent {ctx.name}")


def observe(ctx: EnvContext) -> Observation:
    registered = (ctx.path / ".git").is_dir()
    branch = git.current_branch(ctx.path) if registered else None
    head = git.resolve_commit(ctx.path, "HEAD") if registered else None
    return Observation(ctx.path.is_dir(), registered, branch, head)


def inventory(ctx: EnvContext, main: MainRepo) -> WorkReport:
    """Every ref, the stash and the HEAD reflog of the copy hold work unless
    the main repository's refs reach it."""
    report = WorkReport()
    if not ctx.path.is_dir():
        return report
    found = store_work(ctx.path, ctx.path / ".git", branch=ctx.record.branch, safe_prefixes=(), count_tags=True, main=main)
    report.commits, report.refs, report.stash = found.commits, found.refs, found.stash
    report.detached, report.head, report.tips, report.worktrees = found.detached, found.head, found.tips, found.worktrees
    return report


# --- what it assigns: the shared defaults (a directory on the host, nothing runs) ------

USES_DOCKER = False
UNTRUSTED_FILES = False
REMOVES: tuple[str, ...] = ()
start = base.start_nothing
exec_argv = base.exec_in_directory
after_exec = base.exit_code_as_is
run_setup = base.host_setup
adopt = base.adopt_nothing
before_sync = base.nothing_to_refresh
take_base = base.base_as_is
rebase = base.host_rebase
rebase_by_hand = base.rebase_in_directory
ports_taken_by_others = base.no_ports_taken
render = base.no_compose_file
planned_boundary = base.no_boundary


def register() -> None:
    """What adding it to hybridiso is: its name in the names table (and, as
    a repository of its own, in ``names.OWN_REPOSITORY``), one registry line."""
    from hybridiso import names, strategies

    names.STRATEGY_NAMES = (*names.STRATEGY_NAMES, NAME)
    names.OWN_REPOSITORY = names.OWN_REPOSITORY | {NAME}
    strategies.STRATEGIES[NAME] = sys.modules[__name__]  # type: ignore[assignment]  # mypy checks the real registry's modules
    assert strategies.disagreements(strategies.STRATEGIES) == []


# --- the test ----------------------------------------------------------------------------

# the real CLI, in a process of its own, with the strategy registered first
_RUN = "import sys; from tests.strategies.test_new_strategy import register; register(); from hybridiso.main import main; raise SystemExit(main(sys.argv[1:]))"


def cli(cwd: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-c", _RUN, *args], cwd=cwd, capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
    check_no_crash(proc, args)
    assert (proc.returncode == 0) == ok, f"hybridiso {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def _rows(repo: Path, *args: str) -> Mapping[str, dict[str, object]]:
    return {r["agent"]: r for r in json.loads(cli(repo, *args, "--json").stdout)}


def test_a_strategy_registered_in_one_module_runs_through_the_real_cli(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"README.md": "hello\n", "src/app.py": "print('hi')\n"})
    write_manifest(repo, "version: 1\nbase: main\nagents:\n  - name: cp\n    isolation: copy\n  - name: wt\n")
    run_git(repo, "add", "hybridiso.yaml")
    run_git(repo, "commit", "-q", "-m", "manifest")
    env = tmp_path / "repo.agents" / "cp"

    plan = {r["agent"]: r for r in json.loads(cli(repo, "plan", "--json").stdout)["agents"]}
    assert plan["cp"]["strategy"] == "copy" and plan["wt"]["strategy"] == "worktree", plan

    cli(repo, "up")
    # its own repository, with a copy of the objects (no hard link, no alternates) and no remote
    assert (env / ".git").is_dir() and (env / "src" / "app.py").read_text() == "print('hi')\n"
    assert run_git(env, "remote") == "" and not (env / ".git" / "objects" / "info" / "alternates").exists()
    assert run_git(env, "rev-parse", "--abbrev-ref", "HEAD") == "hybridiso/cp"
    assert run_git(env, "rev-parse", "HEAD") == run_git(repo, "rev-parse", "main")
    rows = _rows(repo, "status")
    assert rows["cp"]["strategy"] == "copy" and rows["cp"]["branch"] == "hybridiso/cp", rows["cp"]
    assert rows["cp"]["state"] == "ready" and rows["cp"]["dirty"] == 0 and rows["cp"]["ahead"] == 0, rows["cp"]
    # as a repository of its own: its git ignores the env file hybridiso wrote,
    # and hybridiso run from inside it acts on this project (its owner marker)
    assert run_git(env, "status", "--porcelain", "--untracked-files=all") == ""
    assert _rows(env, "status") == rows

    # exec runs in its directory, with its variables
    out = cli(repo, "exec", "cp", "--", "sh", "-c", 'pwd; echo "$HYBRIDISO_STRATEGY"').stdout.split()
    assert out == [str(env), "copy"], out

    # a commit there is the agent's work: down refuses, and removes nothing
    (env / "new.txt").write_text("mine\n")
    run_git(env, "add", "new.txt")
    run_git(env, "commit", "-q", "-m", "agent work")
    rows = _rows(repo, "status")
    assert rows["cp"]["ahead"] == 1, rows["cp"]
    refused = cli(repo, "down", "cp", ok=False)
    assert "agent work" in refused.stderr or "1 commit" in refused.stderr, refused.stderr
    assert (env / "new.txt").exists()

    # once it is gone from the copy, down removes the environment and its record
    run_git(env, "reset", "-q", "--hard", "HEAD~1")
    run_git(env, "reflog", "expire", "--expire=now", "--all")
    cli(repo, "down", "cp")
    assert not env.exists()
    assert _rows(repo, "status")["cp"]["state"] == "not created"
    assert "cp" not in json.loads((repo / ".git" / "hybridiso" / "state.json").read_text())["agents"]
    cli(repo, "down", "wt")
