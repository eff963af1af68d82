"""Data an agent wrote into its database branch is work (docs/faults.md row 26): seen by
`down`, `gc` and rollback, refused, or dumped by `down --force` with the path
said; against a real PostgreSQL server, with writers that stay connected
(whose counters PostgreSQL has not flushed yet)."""
from __future__ import annotations

import json
import re
import shutil
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path, PurePosixPath

import psycopg
import pytest

from hybridiso.services import databases
from hybridiso.errors import UserError
from tests.support.cli import hybridiso, state, write_manifest
from tests.support.gitrepo import git, make_repo
from tests.support.postgres import PostgresServer

pytestmark = pytest.mark.postgres


def _counters(server: PostgresServer, name: str) -> tuple[int, int, int]:
    with psycopg.connect(server.url, autocommit=True) as c:
        c.execute("SELECT pg_stat_clear_snapshot()")
        row = c.execute("SELECT tup_inserted, tup_updated, tup_deleted FROM pg_stat_database WHERE datname = %s", (name,)).fetchone()
    assert row is not None
    return row


def _url(server: PostgresServer, name: str) -> str:
    return databases.branch_url(server.url, name)


def _pending_writer(server: PostgresServer, name: str, sql: str) -> psycopg.Connection:
    """A session that has written and stays connected, with its counters not
    flushed yet: PostgreSQL flushes a backend's counters at most once a
    second (the first right away), so a write right after a first statement
    waits for the next flush, up to ten seconds later."""
    writer = psycopg.connect(_url(server, name), autocommit=True, application_name="agent-writer")
    writer.execute("SELECT 1")
    writer.execute(sql)
    return writer


def _fresh(server: PostgresServer, template: str, name: str) -> str:
    databases.create_branch(server.url, template, name)
    return name


@pytest.fixture(scope="module")
def tpl(postgres_server: PostgresServer) -> str:
    return postgres_server.make_template("tpl_work")


def test_a_new_branch_is_unchanged_and_its_counters_stay_at_zero(postgres_server: PostgresServer, tpl: str) -> None:
    name = _fresh(postgres_server, tpl, "hi_w_fresh")
    assert databases.changes(postgres_server.url, name) is None
    assert _counters(postgres_server, name) == (0, 0, 0)  # taking the baseline wrote nothing
    # readers are not writers
    with psycopg.connect(_url(postgres_server, name)) as c:
        c.execute("SELECT * FROM items").fetchall()
        assert databases.changes(postgres_server.url, name) is None  # still connected: the exact check says so too
    assert databases.changes(postgres_server.url, name) is None
    databases.drop_branch(postgres_server.url, name)


WRITES = {
    "insert": ("INSERT INTO items VALUES (2, 'agent')", "public.items: 1 row more, 1 written"),
    "update": ("UPDATE items SET label = 'edited'", "public.items: 1 written"),
    "delete": ("DELETE FROM items", "public.items: 1 row fewer"),
    "truncate": ("TRUNCATE items", "public.items: 1 row fewer"),
    "empty table": ("CREATE TABLE notes (body text)", "public.notes: new table (0 rows); the schema changed"),
    "drop table": ("DROP TABLE items", "the schema changed"),
    "add column": ("ALTER TABLE items ADD COLUMN extra int", "the schema changed"),
    "function": ("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'", "the schema changed"),
    "large object": ("SELECT lo_from_bytea(0, 'blob')", "the schema changed"),
}


@pytest.mark.parametrize("kind", sorted(WRITES))
def test_every_kind_of_write_is_seen_while_the_writer_stays_connected(postgres_server: PostgresServer, tpl: str, kind: str, tmp_path: Path) -> None:
    sql, expected = WRITES[kind]
    name = _fresh(postgres_server, tpl, f"hi_w_{kind.replace(' ', '_')}")
    writer = _pending_writer(postgres_server, name, sql)
    try:
        # the fault is real: the server's counters do not show the write yet
        assert _counters(postgres_server, name) == (0, 0, 0), "the writer's counters were flushed already"
        change = databases.changes(postgres_server.url, name)
        assert change is not None and change.certain and expected in change.what, change
        # and dropping it is refused: nothing dropped, the writer's data is there
        with pytest.raises(databases.DataChanged) as e:
            databases.drop_branch(postgres_server.url, name)
        assert f"database {name} changed: " in e.value.message and "--force" in (e.value.hint or "")
        assert name in databases.list_branches(postgres_server.url, name)
    finally:
        writer.close()
    # the writer has gone (its counters flushed on exit): the same verdict, through the counters
    assert databases.changes(postgres_server.url, name) is not None
    with psycopg.connect(_url(postgres_server, name), autocommit=True) as c:
        c.execute("SELECT 1")  # the database takes connections again after the refused drop
    dropped = databases.drop_branch(postgres_server.url, name, dump_to=_target(tmp_path))
    assert dropped.dump is not None and dropped.dump.is_file() and expected in dropped.change
    assert name not in databases.list_branches(postgres_server.url, name)


def _target(tmp_path: Path) -> databases.DumpTarget:
    return databases.DumpTarget(tmp_path, PurePosixPath("dumps"))


def test_an_open_transaction_that_wrote_is_work(postgres_server: PostgresServer, tpl: str) -> None:
    name = _fresh(postgres_server, tpl, "hi_w_open_txn")
    writer = psycopg.connect(_url(postgres_server, name), application_name="half-done")
    writer.execute("INSERT INTO items VALUES (3, 'not committed yet')")
    try:
        change = databases.changes(postgres_server.url, name)
        assert change is not None and "a transaction still open has written" in change.what and "half-done" in change.what
    finally:
        writer.rollback()
        writer.close()
    assert databases.changes(postgres_server.url, name) is None  # rolled back: nothing was written
    assert databases.drop_branch(postgres_server.url, name).existed


def test_temp_tables_and_undone_writes_are_not_work(postgres_server: PostgresServer, tpl: str) -> None:
    name = _fresh(postgres_server, tpl, "hi_w_undone")
    with psycopg.connect(_url(postgres_server, name), autocommit=True) as c:
        c.execute("CREATE TEMP TABLE scratch AS SELECT 1 AS x")
        c.execute("INSERT INTO items VALUES (9, 'gone again')")
        c.execute("DELETE FROM items WHERE id = 9")
    assert sum(_counters(postgres_server, name)) > 0  # the counters did move
    assert databases.changes(postgres_server.url, name) is None  # but the rows are as they were
    assert databases.drop_branch(postgres_server.url, name).existed


def test_planner_statistics_are_not_work(postgres_server: PostgresServer, tpl: str) -> None:
    """ANALYZE rewrites pg_statistic; autovacuum does it for the shared
    catalogs (pg_database, changed by every CREATE DATABASE on the server)
    from whichever database it visits: an untouched branch stays untouched."""
    name = _fresh(postgres_server, tpl, "hi_w_analyze")
    with psycopg.connect(_url(postgres_server, name), autocommit=True) as c:
        c.execute("ANALYZE pg_catalog.pg_database")  # what autovacuum did in the full suite
        c.execute("ANALYZE")
    assert sum(_counters(postgres_server, name)) > 0  # statistics rows were written
    assert databases.changes(postgres_server.url, name) is None
    assert databases.drop_branch(postgres_server.url, name).existed


def test_counters_lost_by_a_reset_fall_back_to_the_rows(postgres_server: PostgresServer, tpl: str, tmp_path: Path) -> None:
    name = _fresh(postgres_server, tpl, "hi_w_reset")
    with psycopg.connect(_url(postgres_server, name), autocommit=True) as c:
        c.execute("INSERT INTO items VALUES (4, 'kept')")
        c.execute("SELECT pg_stat_force_next_flush()")
    with psycopg.connect(_url(postgres_server, name), autocommit=True) as c:
        c.execute("SELECT pg_stat_reset()")  # what a crash does to them too
    assert _counters(postgres_server, name) == (0, 0, 0)
    change = databases.changes(postgres_server.url, name)
    assert change is not None and "public.items: 1 row more" in change.what
    assert databases.drop_branch(postgres_server.url, name, dump_to=_target(tmp_path)).dump is not None


def test_a_database_made_again_by_someone_else_is_not_ours_to_drop_silently(postgres_server: PostgresServer, tpl: str) -> None:
    name = _fresh(postgres_server, tpl, "hi_w_remade")
    baseline = databases.baseline_of(postgres_server.url, name)
    assert baseline is not None
    postgres_server.psql(f'DROP DATABASE "{name}"')
    postgres_server.psql(f'CREATE DATABASE "{name}" TEMPLATE "{tpl}"')
    change = databases.changes(postgres_server.url, name, baseline)
    assert change is not None and "not the database hybridiso created" in change.what
    with pytest.raises(databases.DataChanged):
        databases.drop_branch(postgres_server.url, name, baseline)
    postgres_server.psql(f'DROP DATABASE "{name}"')


def test_a_dump_that_fails_keeps_the_database_under_its_name(postgres_server: PostgresServer, tmp_path: Path) -> None:
    """A non-superuser owns the branch but cannot read one table of it:
    pg_dump fails for real; nothing is dropped, no partial file is left."""
    postgres_server.psql("DO $$ BEGIN CREATE ROLE limited LOGIN CREATEDB; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
    postgres_server.psql('CREATE DATABASE "tpl_limited" OWNER limited')
    postgres_server.psql("CREATE TABLE secret (x int); REVOKE ALL ON secret FROM PUBLIC", db="tpl_limited")
    url = postgres_server.url.replace("postgres@", "limited@", 1)
    name = "hi_w_limited"
    databases.create_branch(url, "tpl_limited", name)
    with psycopg.connect(databases.branch_url(url, name), autocommit=True) as c:
        c.execute("CREATE TABLE mine (x int)")
        c.execute("INSERT INTO mine VALUES (1)")
    target = _target(tmp_path)
    with pytest.raises(databases.DataChanged) as e:
        databases.drop_branch(url, name, dump_to=target)
    assert "pg_dump failed" in e.value.message and "permission denied" in e.value.message
    assert name in databases.list_branches(postgres_server.url, name)
    assert postgres_server.psql("SELECT count(*) FROM mine", db=name) == "1"  # there, under its own name, taking connections
    assert list((tmp_path / "dumps").iterdir()) == []  # no partial dump, no service file
    postgres_server.psql(f'DROP DATABASE "{name}"')
    postgres_server.psql('DROP DATABASE "tpl_limited"')


def test_pg_dump_gets_no_secret_in_argv(tmp_path: Path) -> None:
    service = tmp_path / "svc"
    argv, env = databases.dump_command(Path("/usr/bin/pg_dump"), service)
    text = databases._service_file("postgresql://u:hunter2@db.example:5433/x?sslmode=require", "hi_x")
    assert "hunter2" not in " ".join(argv) and not any("hunter2" in v for v in env.values())
    assert env["PGSERVICEFILE"] == str(service) and "password=hunter2" in text and "dbname=hi_x" in text
    with pytest.raises(UserError):
        databases._service_file("postgresql://u:a%0Ab@h/x", "hi_x")  # a line break would inject a line


def test_the_pg_dump_found_matches_the_server_or_says_what_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    found = databases.pg_dump_for(15)
    assert re.search(r"/postgresql/1[5-9]/bin/pg_dump$", str(found)) or found.name == "pg_dump"
    monkeypatch.setattr(databases, "PG_BINDIRS", str(tmp_path / "none" / "*"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(UserError) as e:
        databases.pg_dump_for(15)
    assert "pg_dump for PostgreSQL 15 is not installed" in e.value.message and "postgresql-client-15" in (e.value.hint or "")


# --- through the CLI --------------------------------------------------------------


def _repo(tmp_path: Path, server: PostgresServer, template: str, url: str | None = None, setup: str = "") -> Path:
    repo = make_repo(tmp_path / "shop")
    setup_line = f"    setup: [{json.dumps(setup)}]\n" if setup else ""
    write_manifest(repo, f'services:\n  db: {{kind: postgres, url: "{url or server.url}", template: {template}}}\nagents:\n  - name: api\n    services: [db]\n{setup_line}')
    return repo


def _agent_db(repo: Path) -> tuple[str, str]:
    db = state(repo)["agents"]["api"]["databases"]["db"]
    return db["name"], databases.branch_url(db["server"], db["name"])


def test_down_refuses_a_changed_database_and_force_dumps_it_and_says_where(tmp_path: Path, postgres_server: PostgresServer, tpl: str) -> None:
    repo = _repo(tmp_path, postgres_server, tpl)
    hybridiso(repo, "up")
    name, url = _agent_db(repo)
    env = tmp_path / "shop.agents" / "api"
    writer = _pending_writer(postgres_server, name, "INSERT INTO items VALUES (2, 'the agent''s row')")
    try:
        assert _counters(postgres_server, name) == (0, 0, 0)
        r = hybridiso(repo, "down", ok=False)
        assert r.returncode == 1
        assert f"agent api has work that `down` would lose: database {name} changed: public.items: 1 row more" in r.stderr
        assert "--force` dumps the changed databases" in r.stderr and "commit it" not in r.stderr
        assert env.is_dir() and name in databases.list_branches(postgres_server.url, name)
        dry = hybridiso(repo, "down", "--dry-run", ok=False)
        assert "would refuse" in dry.stderr and f"database {name} changed" in dry.stderr
        # gc keeps it, and says why
        found = json.loads(hybridiso(repo, "gc", "--json").stdout)["findings"]
        assert [(f["target"], f["action"]) for f in found] == [("api", "keep")]
        assert found[0]["reason"].startswith(f"work gc would lose: database {name} changed")
        hybridiso(repo, "gc", "--yes")
        assert env.is_dir() and name in databases.list_branches(postgres_server.url, name)
        # --force: the writer is still connected, still unflushed
        r = hybridiso(repo, "down", "--force")
    finally:
        writer.close()
    m = re.search(rf"database {name} changed \((.*?)\); dumped to (\S+) \(restore: createdb NAME && psql -d NAME -f \S+\)", r.stderr)
    assert m, r.stderr
    dump = Path(m.group(2))
    assert dump.parent == repo / ".git" / "hybridiso" / "dumps" / "api" and dump.name.startswith(name + "-") and dump.suffix == ".sql"
    assert stat.S_IMODE(dump.stat().st_mode) == 0o600
    assert "the agent''s row" in dump.read_text() or "the agent's row" in dump.read_text()
    assert [p.name for p in dump.parent.iterdir()] == [dump.name]  # no service file, no partial left
    assert name not in databases.list_branches(postgres_server.url, name) and not env.exists()
    assert "api" not in state(repo)["agents"]
    # the dump brings the data back
    postgres_server.psql('CREATE DATABASE "restored_api"')
    subprocess.run([str(postgres_server.bindir / "psql"), "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(postgres_server.port),
                    "-U", "postgres", "-d", "restored_api", "-f", str(dump)], check=True, capture_output=True)
    assert postgres_server.psql("SELECT label FROM items ORDER BY id", db="restored_api").splitlines() == ["from the template", "the agent's row"]
    postgres_server.psql('DROP DATABASE "restored_api"')


def test_down_of_an_untouched_database_drops_it_even_with_a_reader_connected(tmp_path: Path, postgres_server: PostgresServer, tpl: str) -> None:
    repo = _repo(tmp_path, postgres_server, tpl)
    hybridiso(repo, "up")
    name, url = _agent_db(repo)
    reader = psycopg.connect(url, autocommit=True)
    reader.execute("SELECT * FROM items").fetchall()
    try:
        r = hybridiso(repo, "down")
    finally:
        reader.close()
    assert "dumped" not in r.stderr and name not in databases.list_branches(postgres_server.url, name)
    assert not (repo / ".git" / "hybridiso" / "dumps").exists()


def test_what_setup_writes_is_not_the_agents_work(tmp_path: Path, postgres_server: PostgresServer, tpl: str) -> None:
    """Migrations and seeds in setup write into the new branch: that is what
    hybridiso made, so `down` drops it; what the agent writes after is work."""
    migrate = f"{postgres_server.bindir}/psql \"$DATABASE_URL\" -qc 'CREATE TABLE IF NOT EXISTS migrated (x int); INSERT INTO migrated VALUES (1)'"
    repo = _repo(tmp_path, postgres_server, tpl, setup=migrate)
    hybridiso(repo, "up")
    name, url = _agent_db(repo)
    assert postgres_server.psql("SELECT count(*) FROM migrated", db=name) == "1"
    (finding,) = json.loads(hybridiso(repo, "gc", "--json").stdout)["findings"]
    assert finding["target"] == "api" and "database" not in finding["reason"]  # kept for being fresh, not for its data
    hybridiso(repo, "down", "--dry-run")
    assert "would refuse" not in hybridiso(repo, "down", "--dry-run").stderr
    # a lockfile change re-runs setup: the branch was untouched, so the new baseline takes it in
    (tmp_path / "shop.agents" / "api" / "requirements.txt").write_text("x\n")
    git(tmp_path / "shop.agents" / "api", "add", "requirements.txt")
    git(tmp_path / "shop.agents" / "api", "commit", "-qm", "deps")
    hybridiso(repo, "up")
    assert postgres_server.psql("SELECT count(*) FROM migrated", db=name) == "2"
    # now the agent writes; the next setup run must not hide that
    postgres_server.psql("INSERT INTO items VALUES (7, 'agent data')", db=name)
    (tmp_path / "shop.agents" / "api" / "requirements.txt").write_text("y\n")
    hybridiso(repo, "up")
    r = hybridiso(repo, "down", "--keep-branch", ok=False)
    assert f"database {name} changed" in r.stderr and "public.items: 1 row more" in r.stderr
    hybridiso(repo, "down", "--force", "--keep-branch")


def test_a_killed_up_whose_database_the_agent_wrote_is_not_rolled_back(tmp_path: Path, postgres_server: PostgresServer, tpl: str) -> None:
    """docs/faults.md row 25 + #26: up is killed during setup; someone writes into the
    branch with the URL the env file holds; the next up keeps it."""
    started, flag = tmp_path / "started", tmp_path / "slow"
    flag.touch()
    repo = _repo(tmp_path, postgres_server, tpl, setup=f"if [ -e {flag} ]; then touch {started}; sleep 30; fi")
    proc = subprocess.Popen([sys.executable, "-m", "hybridiso", "up"], cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not started.exists():
        assert time.time() < deadline
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    flag.unlink()
    name, url = _agent_db(repo)
    env_file = (tmp_path / "shop.agents" / "api" / ".hybridiso.env").read_text()
    assert url in env_file
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("INSERT INTO items VALUES (5, 'written after the crash')")
    r = hybridiso(repo, "up", ok=False)
    assert r.returncode == 1 and f"database {name} changed" in r.stderr and "nothing was rolled back" in r.stderr
    assert "down --force api" in r.stderr
    assert postgres_server.psql("SELECT label FROM items WHERE id = 5", db=name) == "written after the crash"
    assert (tmp_path / "shop.agents" / "api").is_dir()
    r = hybridiso(repo, "down", "--force")
    assert "dumped to" in r.stderr
    hybridiso(repo, "up")
    assert state(repo)["agents"]["api"]["phase"] == "ready"
    hybridiso(repo, "down")


def test_a_lost_state_file_keeps_the_baseline_in_the_database(tmp_path: Path, postgres_server: PostgresServer, tpl: str) -> None:
    """docs/faults.md row 18 with #26: the state file is gone; the adopted record reads
    the baseline back from the database's comment; gc keeps a changed branch
    whose agent is gone and drops an untouched one."""
    repo = make_repo(tmp_path / "shop")
    write_manifest(repo, f'services:\n  db: {{kind: postgres, url: "{postgres_server.url}", template: {tpl}}}\n'
                         "agents:\n  - {name: kept, services: [db]}\n  - {name: gone, services: [db]}\n  - {name: idle, services: [db]}\n")
    hybridiso(repo, "up")
    names = {a: r["databases"]["db"]["name"] for a, r in state(repo)["agents"].items()}
    for agent in ("kept", "gone"):
        postgres_server.psql(f"INSERT INTO items VALUES (8, 'by {agent}')", db=names[agent])
    statefile = repo / ".git" / "hybridiso" / "state.json"
    statefile.unlink()
    r = hybridiso(repo, "down", "kept", ok=False)
    assert f"database {names['kept']} changed: public.items: 1 row more" in r.stderr
    # two environments go behind hybridiso's back: their branches are leftovers now
    for agent in ("gone", "idle"):
        git(repo, "worktree", "remove", "--force", str(tmp_path / "shop.agents" / agent))
        git(repo, "branch", "-D", f"hybridiso/{agent}")
    statefile.unlink(missing_ok=True)
    found = {f["target"]: f for f in json.loads(hybridiso(repo, "gc", "--json").stdout)["findings"] if f["kind"] == "database"}
    assert found[f"database {names['gone']}"]["action"] == "keep"
    assert "its data changed: public.items: 1 row more" in found[f"database {names['gone']}"]["reason"]
    assert found[f"database {names['idle']}"]["action"] == "remove"
    hybridiso(repo, "gc", "--yes")
    left = databases.list_branches(postgres_server.url, names["kept"][: names["kept"].rindex("_kept")])
    assert names["gone"] in left and names["kept"] in left and names["idle"] not in left
    hybridiso(repo, "down", "--force", "kept")
    postgres_server.psql(f'DROP DATABASE "{names["gone"]}"')


def test_a_state_file_from_before_keeps_its_databases(tmp_path: Path, postgres_server: PostgresServer, tpl: str) -> None:
    """Records of older versions kept the branches in ``extra``: they load
    into the named field, and the branch is still judged and dropped."""
    repo = _repo(tmp_path, postgres_server, tpl)
    hybridiso(repo, "up")
    name, _ = _agent_db(repo)
    path = repo / ".git" / "hybridiso" / "state.json"
    data = json.loads(path.read_text())
    record = data["agents"]["api"]
    data["version"] = 1
    record["extra"] = {
        "databases": {svc: {"name": db["name"], "server": db["server"]} for svc, db in record.pop("databases").items()},
        "env": record.pop("service_env"),
        "owns_path": record.pop("owns_path"),
    }
    record.pop("setup_processes")
    path.write_text(json.dumps(data))
    postgres_server.psql("UPDATE items SET label = 'changed'", db=name)
    r = hybridiso(repo, "down", ok=False)
    assert f"database {name} changed: public.items: 1 written" in r.stderr
    hybridiso(repo, "down", "--force")
    assert name not in databases.list_branches(postgres_server.url, name)


def test_force_dump_holds_every_row_a_busy_writer_committed(tmp_path: Path, postgres_server: PostgresServer, tpl: str) -> None:
    """A writer that keeps inserting (and reconnecting) while `down --force`
    runs: every row it saw committed is in the dump (everybody is locked out
    before the last check and the dump)."""
    repo = _repo(tmp_path, postgres_server, tpl)
    hybridiso(repo, "up")
    name, url = _agent_db(repo)
    committed: list[int] = []
    stop = threading.Event()

    def write() -> None:
        i = 100
        conn = None
        while not stop.is_set():
            try:
                conn = conn or psycopg.connect(url, autocommit=True, connect_timeout=2)
                conn.execute("INSERT INTO items VALUES (%s, 'busy')", (i,))
                committed.append(i)
                i += 1
            except psycopg.Error:
                conn = None
                time.sleep(0.02)
            time.sleep(0.005)

    t = threading.Thread(target=write)
    t.start()
    try:
        while len(committed) < 20:
            time.sleep(0.05)
        r = hybridiso(repo, "down", "--force")
    finally:
        stop.set()
        t.join()
    dump = Path(re.search(r"dumped to (\S+)", r.stderr).group(1))  # type: ignore[union-attr]
    text = dump.read_text()
    missing = [i for i in committed if f"{i}\tbusy" not in text]
    assert missing == [], f"{len(missing)} committed rows are not in the dump"
    assert name not in databases.list_branches(postgres_server.url, name)


def test_the_password_reaches_pg_dump_but_never_its_argv(tmp_path: Path, postgres_server: PostgresServer, tpl: str) -> None:
    """docs/faults.md row 34: a server that demands a password (scram) for this role;
    `down --force` dumps with it, and no process ever shows it in argv."""
    secret = "s3cr=t pass#word"
    role = "hi_secret_role"
    postgres_server.psql(f"DO $$ BEGIN CREATE ROLE {role} LOGIN SUPERUSER PASSWORD '{secret}'; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
    hba = postgres_server.datadir / "pg_hba.conf"
    original = hba.read_text()
    hba.write_text(f"host all {role} 127.0.0.1/32 scram-sha-256\n" + original)
    postgres_server.psql("SELECT pg_reload_conf()")
    try:
        from urllib.parse import quote

        url = f"postgresql://{role}:{quote(secret, safe='')}@127.0.0.1:{postgres_server.port}/postgres"
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(f"postgresql://{role}@127.0.0.1:{postgres_server.port}/postgres", connect_timeout=5).close()  # it bites
        repo = _repo(tmp_path, postgres_server, tpl, url=url)
        hybridiso(repo, "up")
        name, _ = _agent_db(repo)
        postgres_server.psql("INSERT INTO items VALUES (6, 'needs a dump')", db=name)
        seen: list[str] = []
        stop = threading.Event()

        def watch() -> None:
            while not stop.is_set():
                for entry in Path("/proc").iterdir():
                    try:
                        argv = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                    except OSError:
                        continue
                    if "pg_dump" in argv or secret in argv or quote(secret, safe="") in argv:
                        seen.append(argv)

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            r = hybridiso(repo, "down", "--force")
        finally:
            stop.set()
            watcher.join()
        assert "dumped to" in r.stderr and secret not in r.stderr and quote(secret, safe="") not in r.stderr
        assert any("pg_dump" in a and "--no-password" in a for a in seen), "the watcher never saw pg_dump run"
        assert not [a for a in seen if secret in a or quote(secret, safe="") in a]
        dump = Path(re.search(r"dumped to (\S+)", r.stderr).group(1))  # type: ignore[union-attr]
        assert "needs a dump" in dump.read_text()
    finally:
        hba.write_text(original)
        postgres_server.psql("SELECT pg_reload_conf()")


def test_doctor_reports_the_server_and_its_pg_dump(tmp_path: Path, postgres_server: PostgresServer, tpl: str) -> None:
    repo = _repo(tmp_path, postgres_server, tpl)
    rows = {c["name"]: c for c in json.loads(hybridiso(repo, "doctor", "--json", ok=None).stdout)}
    check = rows[f"postgres 127.0.0.1:{postgres_server.port}"]
    assert check["status"] == "ok" and "PostgreSQL 15" in check["detail"] and "pg_dump" in check["detail"]


def test_a_tampered_record_gets_nothing_done_to_databases_it_does_not_own(tmp_path: Path, postgres_server: PostgresServer, tpl: str) -> None:
    """docs/faults.md row 30: state.json edited to name the server's `postgres`, the
    template and another agent's branch: down --force touches none of them."""
    repo = make_repo(tmp_path / "shop")
    write_manifest(repo, f'services:\n  db: {{kind: postgres, url: "{postgres_server.url}", template: {tpl}}}\n'
                         "agents:\n  - {name: api, services: [db]}\n  - {name: other, services: [db]}\n")
    hybridiso(repo, "up")
    path = repo / ".git" / "hybridiso" / "state.json"
    data = json.loads(path.read_text())
    other = data["agents"]["other"]["databases"]["db"]["name"]
    mine = data["agents"]["api"]["databases"]["db"]["name"]
    server = data["agents"]["api"]["databases"]["db"]["server"]
    data["agents"]["api"]["databases"] = {
        "db": {"name": tpl, "server": server},
        "x": {"name": "postgres", "server": server},
        "y": {"name": other, "server": server},
    }
    path.write_text(json.dumps(data))
    r = hybridiso(repo, "down", "--force", "api")
    assert r.stderr.count("never touched") == 3
    left = {n for (n,) in psycopg.connect(postgres_server.url, autocommit=True).execute("SELECT datname FROM pg_database").fetchall()}
    assert {tpl, "postgres", other, mine} <= left  # its own, now unrecorded, is a leftover for gc
    found = {f["target"]: f["action"] for f in json.loads(hybridiso(repo, "gc", "--json").stdout)["findings"] if f["kind"] == "database"}
    assert found == {f"database {mine}": "remove"}
    hybridiso(repo, "gc", "--yes")
    hybridiso(repo, "down", "other")
    assert not {other, mine} & set(databases.list_branches(postgres_server.url))


def test_force_without_pg_dump_refuses_before_anything_is_removed(tmp_path: Path, postgres_server: PostgresServer, tpl: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """No pg_dump for the server's version: `down --force` (here in-process,
    to hide the installed binaries) says what to install and removes nothing."""
    from hybridiso.envs import lifecycle
    from hybridiso.env_context import context
    from hybridiso.project import load_project

    repo = _repo(tmp_path, postgres_server, tpl)
    hybridiso(repo, "up")
    name, url = _agent_db(repo)
    env = tmp_path / "shop.agents" / "api"
    (env / "notes.txt").write_text("agent notes\n")
    postgres_server.psql("INSERT INTO items VALUES (11, 'keep me')", db=name)
    monkeypatch.setattr(databases, "PG_BINDIRS", str(tmp_path / "no-postgres" / "*"))
    bin_dir = tmp_path / "only-git"
    bin_dir.mkdir()
    (bin_dir / "git").symlink_to(shutil.which("git"))  # type: ignore[arg-type]
    monkeypatch.setenv("PATH", str(bin_dir))
    project = load_project(repo, None)
    st = project.store.load()
    with pytest.raises(UserError) as e:
        lifecycle.remove(context(project, st, "api"), force=True, keep_branch=False)
    assert "pg_dump for PostgreSQL 15 is not installed" in e.value.message and "postgresql-client-15" in (e.value.hint or "")
    assert (env / "notes.txt").read_text() == "agent notes\n"
    assert postgres_server.psql("SELECT label FROM items WHERE id = 11", db=name) == "keep me"
    assert git(repo, "for-each-ref", "refs/hybridiso/backup/") == ""  # not even a backup was made
    monkeypatch.undo()
    hybridiso(repo, "down", "--force")


def test_a_symlinked_dumps_directory_is_refused_before_anything_is_removed(tmp_path: Path, postgres_server: PostgresServer, tpl: str) -> None:
    """docs/faults.md row 31: the dumps directory replaced by a symlink to somewhere
    else: nothing is written there, nothing is removed."""
    repo = _repo(tmp_path, postgres_server, tpl)
    hybridiso(repo, "up")
    name, url = _agent_db(repo)
    postgres_server.psql("INSERT INTO items VALUES (12, 'keep me')", db=name)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (repo / ".git" / "hybridiso" / "dumps").symlink_to(elsewhere, target_is_directory=True)
    r = hybridiso(repo, "down", "--force", ok=False)
    assert r.returncode == 1 and "is a symlink; hybridiso never reads or writes through one" in r.stderr
    assert list(elsewhere.iterdir()) == []
    assert (tmp_path / "shop.agents" / "api").is_dir() and name in databases.list_branches(postgres_server.url, name)
    (repo / ".git" / "hybridiso" / "dumps").unlink()
    hybridiso(repo, "down", "--force")


def test_a_server_that_cannot_be_reached_is_work_and_force_leaves_the_branch_for_gc(tmp_path: Path, postgres_server: PostgresServer, tpl: str) -> None:
    from tests.support.postgres import free_port

    repo = _repo(tmp_path, postgres_server, tpl)
    hybridiso(repo, "up")
    name, url = _agent_db(repo)
    path = repo / ".git" / "hybridiso" / "state.json"
    data = json.loads(path.read_text())
    data["agents"]["api"]["databases"]["db"]["server"] = f"postgresql://postgres:hunter2@127.0.0.1:{free_port()}/postgres"  # nobody listens
    path.write_text(json.dumps(data))
    r = hybridiso(repo, "down", ok=False)
    assert f"database {name} could not be checked: PostgreSQL is not reachable at 127.0.0.1:" in r.stderr and "hunter2" not in r.stderr
    found = json.loads(hybridiso(repo, "gc", "--json").stdout)["findings"]
    assert [(f["target"], f["action"]) for f in found if f["target"] == "api"] == [("api", "keep")]
    r = hybridiso(repo, "down", "--force")
    assert f"database {name} was not dropped: PostgreSQL is not reachable" in r.stderr and "`hybridiso gc` drops it once the server is back" in r.stderr
    assert name in databases.list_branches(postgres_server.url, name) and not (tmp_path / "shop.agents" / "api").exists()
    hybridiso(repo, "gc", "--yes")  # the manifest's server is reachable: an untouched leftover goes
    assert name not in databases.list_branches(postgres_server.url, name)


def test_down_force_killed_while_it_dumps_loses_nothing_and_gc_clears_the_half_dump(tmp_path: Path, postgres_server: PostgresServer, tpl: str) -> None:
    """kill -9 of `down --force` while pg_dump runs: the data stays in the
    renamed branch (gc keeps it, naming it); the partial dump and the
    service file with the password are gc's to remove."""
    repo = _repo(tmp_path, postgres_server, tpl)
    hybridiso(repo, "up")
    name, _ = _agent_db(repo)
    postgres_server.psql("CREATE TABLE big AS SELECT g AS id, repeat('x', 200) AS pad FROM generate_series(1, 400000) g", db=name)
    proc = subprocess.Popen([sys.executable, "-m", "hybridiso", "down", "--force"], cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    dumps = repo / ".git" / "hybridiso" / "dumps" / "api"
    deadline = time.time() + 120
    while not (dumps.is_dir() and any(p.name.endswith(".partial") for p in dumps.iterdir())):
        assert time.time() < deadline and proc.poll() is None, "pg_dump never started"
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    assert {p.name.split("-")[0] for p in dumps.iterdir() if p.name.startswith(".")} >= {".pgservice"}
    hidden = [n for n in databases.list_branches(postgres_server.url, name) if n != name]
    assert len(hidden) == 1 and postgres_server.psql("SELECT count(*) FROM big", db=hidden[0]) == "400000"
    found = {f["target"]: f for f in json.loads(hybridiso(repo, "gc", "--json").stdout)["findings"]}
    assert found[f"database {hidden[0]}"]["action"] == "keep" and "public.big: new table (400000 rows)" in found[f"database {hidden[0]}"]["reason"]
    assert found["unfinished dumps of agent api"]["action"] == "remove"
    hybridiso(repo, "gc", "--yes")
    assert [p for p in dumps.iterdir()] == []
    assert hidden[0] in databases.list_branches(postgres_server.url, name)  # still there
    postgres_server.psql(f'DROP DATABASE "{hidden[0]}" WITH (FORCE)')


def test_an_agent_cannot_pin_its_branch_with_template_or_connection_limit(tmp_path: Path, postgres_server: PostgresServer, tpl: str) -> None:
    """The agent has the branch's credentials: marking it a template (which
    DROP DATABASE refuses) or limiting its connections to 0 was a crash."""
    repo = _repo(tmp_path, postgres_server, tpl)
    hybridiso(repo, "up")
    name, url = _agent_db(repo)
    with psycopg.connect(url, autocommit=True) as c:
        c.execute(f'ALTER DATABASE "{name}" CONNECTION LIMIT 0')
        c.execute(f'ALTER DATABASE "{name}" IS_TEMPLATE true')
    hybridiso(repo, "down")
    assert name not in databases.list_branches(postgres_server.url, name)


def test_sessions_it_may_not_end_are_a_clear_error_and_nothing_is_dropped(postgres_server: PostgresServer) -> None:
    """A non-superuser URL cannot end a superuser's session on its branch:
    one message that says so; the branch stays, taking connections."""
    postgres_server.psql("DO $$ BEGIN CREATE ROLE owner_only LOGIN CREATEDB; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
    postgres_server.psql('CREATE DATABASE "tpl_owner_only" OWNER owner_only')
    url = postgres_server.url.replace("postgres@", "owner_only@", 1)
    name = "hi_w_owner_only"
    databases.create_branch(url, "tpl_owner_only", name)
    admin = psycopg.connect(_url(postgres_server, name), autocommit=True)  # the superuser's session
    try:
        with pytest.raises(UserError) as e:
            databases.drop_branch(url, name)
        assert "Traceback" not in str(e.value) and name in e.value.message
        assert "sessions" in e.value.message or "said" in e.value.message
        assert name in databases.list_branches(postgres_server.url, name)
        admin.execute("SELECT 1")  # not ended
    finally:
        admin.close()
    psycopg.connect(databases.branch_url(url, name), autocommit=True).close()  # takes connections again
    assert databases.drop_branch(url, name).existed
    postgres_server.psql('DROP DATABASE "tpl_owner_only"')
