"""Each check gets a fresh database branch from the template (issue 14
items 2 and 7): migrations run there, never in an agent's own database,
and nothing is left behind, also after kill -9 (real PostgreSQL)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.land.test_land_faults import _alive, _wait_for
from tests.land.trains import agent_commit, by_agent, land_json
from tests.support.cli import hybridiso, write_manifest
from tests.support.gitrepo import git, make_repo
from tests.support.postgres import PostgresServer


def _repo(tmp_path: Path, server: PostgresServer, template: str, check: str) -> Path:
    repo = make_repo(tmp_path / "repo", {"README.md": "app\n", "migrations/000_base.sql": "SELECT 1;\n"})
    write_manifest(
        repo,
        f'services:\n  db: {{kind: postgres, url: "{server.url}", template: {template}}}\n'
        f"land:\n  check: [{json.dumps(check)}]\n  timeout: 60s\n"
        "agents:\n  - name: a\n    services: [db]\n  - name: b\n    services: [db]\n  - name: c\n    services: [db]\n",
    )
    git(repo, "add", "hybridiso.yaml")
    git(repo, "commit", "-q", "-m", "manifest")
    return repo


def _land_dbs(server: PostgresServer) -> list[str]:
    return server.psql("SELECT datname FROM pg_database WHERE datname LIKE 'hi\\_%\\_land\\_%' ORDER BY 1").split()


def test_each_check_runs_the_migrations_in_a_fresh_branch_of_the_template(tmp_path: Path, postgres_server: PostgresServer) -> None:
    tpl = postgres_server.make_template("land_tpl_one")
    psql = postgres_server.bindir / "psql"
    urls = tmp_path / "urls.log"
    check = (
        f'echo "$HYBRIDISO_AGENT $DATABASE_URL $DB_URL" >> {urls}; '
        f'for f in migrations/*.sql; do {psql} -X -q -v ON_ERROR_STOP=1 -d "$DATABASE_URL" -f "$f" || exit 1; done; '
        f'test "$({psql} -X -Atq -d "$DATABASE_URL" -c "SELECT count(*) FROM items")" = 1'
    )
    repo = _repo(tmp_path, postgres_server, tpl, check)
    hybridiso(repo, "up", "a")
    a_db = postgres_server.psql("SELECT datname FROM pg_database WHERE datname LIKE 'hi\\_%\\_a\\_db' ").strip()
    assert a_db, "up made a's own branch"
    env_a = Path(f"{repo}.agents") / "a"
    (env_a / "migrations").mkdir(exist_ok=True)
    (env_a / "migrations" / "010_a.sql").write_text("CREATE TABLE orders (id int);\n")
    git(env_a, "add", "migrations/010_a.sql")
    git(env_a, "commit", "-q", "-m", "a: orders")
    # b's migration makes the same table: green alone, red on top of a
    agent_commit(repo, "b", {"migrations/020_b.sql": "CREATE TABLE orders (id bigint);\n"}, "b: orders too")
    agent_commit(repo, "c", {"migrations/030_c.sql": "CREATE TABLE users (id int);\n"}, "c: users")

    data, proc = land_json(repo, ok=False)
    got = by_agent(data)
    assert [got[x]["result"] for x in "abc"] == ["landed", "failed", "landed"], proc.stderr
    assert "orders" in got["b"]["tail"] and "already exists" in got["b"]["tail"]
    lines = [line.split() for line in urls.read_text().splitlines()]
    assert [x[0] for x in lines] == ["a", "b", "c"]
    names = [x[1].rsplit("/", 1)[1] for x in lines]
    assert len(set(names)) == 3 and all("_land_" in n for n in names) and a_db not in names and tpl not in names
    assert all(x[1] == x[2] for x in lines)  # <SERVICE>_URL and DATABASE_URL alike, as up gives them
    # the template and a's own database never saw a migration; nothing is left
    for db in (tpl, a_db):
        assert postgres_server.psql("SELECT count(*) FROM pg_tables WHERE tablename IN ('orders', 'users')", db=db) == "0", db
    assert _land_dbs(postgres_server) == []
    assert "database" in proc.stderr and "from land_tpl_one for db" in proc.stderr


def test_kill_9_during_a_check_leaves_its_database_to_gc_or_the_next_land(tmp_path: Path, postgres_server: PostgresServer) -> None:
    tpl = postgres_server.make_template("land_tpl_two")
    started = tmp_path / "started"
    check = f'if [ -e {tmp_path}/killed ]; then exit 0; fi; echo $$ > {started}.tmp; mv {started}.tmp {started}; sleep 300'
    repo = _repo(tmp_path, postgres_server, tpl, check)
    agent_commit(repo, "a", {"a.txt": "a\n"}, "a: file")
    proc = subprocess.Popen([sys.executable, "-m", "hybridiso", "land", "a"], cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(started)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    (tmp_path / "killed").touch()
    left = _land_dbs(postgres_server)
    assert len(left) == 1
    # gc names it as land's, not as an agent's changed branch to keep
    found = json.loads(hybridiso(repo, "gc", "--json").stdout)["findings"]
    mine = [f for f in found if f["target"] == f"database {left[0]}"]
    assert [(f["kind"], f["action"]) for f in mine] == [("land-database", "remove")]
    assert _land_dbs(postgres_server) == left  # not without --yes
    data, proc2 = land_json(repo, ok=True)
    assert "1 check database dropped" in proc2.stderr
    assert [c["result"] for c in data["candidates"]] == ["landed"]
    assert _land_dbs(postgres_server) == []
    assert not _alive(int(started.read_text()))


def test_a_check_that_would_get_no_fresh_compose_service_is_refused_and_dry_run_says_so(tmp_path: Path) -> None:
    """A service that runs in the agent's compose project (no server url) has
    no fresh copy for a check: land and --dry-run refuse the candidate with
    the reason, nothing is applied or checked; unchecked, it lands."""
    from tests.land.trains import agent_commit, by_agent, land_json
    from tests.support.cli import write_manifest
    from tests.support.gitrepo import git, make_repo

    ran = tmp_path / "ran"
    repo = make_repo(tmp_path / "repo", {"README.md": "hello\n"})
    write_manifest(
        repo,
        "version: 1\nservices:\n  db: {kind: postgres}\n"
        f'land:\n  check: ["touch {ran}"]\n'
        "agents:\n  - name: a\n    image: busybox\n    services: [db]\n  - name: b\n    image: busybox\n    services: [db]\n    land: {check: []}\n",
    )
    git(repo, "add", "hybridiso.yaml")
    git(repo, "commit", "-q", "-m", "manifest")
    agent_commit(repo, "a", {"a.txt": "a\n"})
    agent_commit(repo, "b", {"b.txt": "b\n"})
    before = git(repo, "rev-parse", "main")
    dry, _ = land_json(repo, "--dry-run", "a", ok=False)
    assert by_agent(dry)["a"]["result"] == "refused" and "its check would get no service db (postgres)" in by_agent(dry)["a"]["why"]
    data, proc = land_json(repo, ok=False)
    got = by_agent(data)
    assert got["a"]["result"] == "refused" and "runs in the agent's compose project" in got["a"]["why"] and "`url:` and `template:`" in got["a"]["why"]
    assert got["b"]["result"] == "landed" and "unchecked" in got["b"]["why"]
    assert not ran.exists() and git(repo, "show", "--name-only", "--format=", "main") == "b.txt" and git(repo, "rev-parse", "main~1") == before
