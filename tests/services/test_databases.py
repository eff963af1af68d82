"""Database branches against a real PostgreSQL server started by the tests."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import psycopg
import pytest

from hybridiso.services import databases
from hybridiso.errors import UserError
from tests.support.cli import hybridiso, write_manifest
from tests.support.gitrepo import git, make_repo
from tests.support.postgres import PostgresServer, free_port

pytestmark = pytest.mark.postgres
PG_OWN_WAIT = 5.0  # seconds CREATE DATABASE waits for sessions on its template to end


def test_branch_names_are_valid_deterministic_and_distinct() -> None:
    a = databases.branch_name("shop", "api", "db")
    assert a == databases.branch_name("shop", "api", "db") == "hi_shop_api_db"
    long1 = databases.branch_name("x" * 80, "agent-one", "db")
    long2 = databases.branch_name("x" * 80, "agent-two", "db")
    assert len(long1) <= 63 and len(long2) <= 63 and long1 != long2
    odd = databases.branch_name("My Repo", "a-b", "db")
    assert odd.replace("_", "").isalnum() and odd.islower()
    assert databases.branch_name("a-b", "c", "d") != databases.branch_name("a_b", "c", "d")
    # whatever had to be normalised or shortened, a project's names keep its prefix
    for project in ("shop", "my-app.v2_abc123", "x" * 80, "My Repo"):
        for agent in ("api", "a-b", "y" * 60):
            assert databases.branch_name(project, agent, "db").startswith(databases.branch_prefix(project))


def test_branch_url_keeps_credentials_and_query() -> None:
    url = databases.branch_url("postgresql://u:p@h:5433/shop?sslmode=disable", "hi_x")
    assert url == "postgresql://u:p@h:5433/hi_x?sslmode=disable"


def test_create_list_drop(postgres_server: PostgresServer) -> None:
    tpl = postgres_server.make_template("tpl_basic")
    url = databases.create_branch(postgres_server.url, tpl, "hi_t_basic")
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT label FROM items").fetchone() == ("from the template",)
    assert databases.create_branch(postgres_server.url, tpl, "hi_t_basic") == url  # idempotent
    assert "hi_t_basic" in databases.list_branches(postgres_server.url)
    assert databases.drop_branch(postgres_server.url, "hi_t_basic").existed is True
    assert databases.drop_branch(postgres_server.url, "hi_t_basic").existed is False


def test_busy_template_is_retried_until_free(postgres_server: PostgresServer) -> None:
    tpl = postgres_server.make_template("tpl_busy")
    holder = psycopg.connect(postgres_server.url.rsplit("/", 1)[0] + "/" + tpl, application_name="someone-else")
    # longer than the 5 s that CREATE DATABASE itself waits for the template's
    # sessions to end: only a retry of ours gets past it
    threading.Timer(PG_OWN_WAIT + 1.0, holder.close).start()
    t = time.time()
    url = databases.create_branch(postgres_server.url, tpl, "hi_t_busy", attempts=20, delay=0.2)
    assert time.time() - t >= PG_OWN_WAIT + 0.9
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM items").fetchone() == (1,)


def test_template_busy_for_good_is_a_clear_error(postgres_server: PostgresServer) -> None:
    tpl = postgres_server.make_template("tpl_held")
    with psycopg.connect(postgres_server.url.rsplit("/", 1)[0] + "/" + tpl, application_name="long-report"):
        with pytest.raises(UserError) as e:
            databases.create_branch(postgres_server.url, tpl, "hi_t_held", attempts=3, delay=0.05)
    msg = str(e.value)
    assert "'tpl_held' is being accessed by other users" in msg and "3 tries" in msg and "long-report" in msg


def test_parallel_creates_are_serialised(postgres_server: PostgresServer) -> None:
    tpl = postgres_server.make_template("tpl_par")
    errors: list[BaseException] = []

    def make(i: int) -> None:
        try:
            databases.create_branch(postgres_server.url, tpl, f"hi_t_par_{i}")
        except BaseException as e:  # noqa: BLE001 - collected for the assertion
            errors.append(e)

    threads = [threading.Thread(target=make, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert {f"hi_t_par_{i}" for i in range(4)} <= set(databases.list_branches(postgres_server.url, "hi_t_par"))


def test_unreachable_server_is_a_clear_error_without_password() -> None:
    with pytest.raises(UserError) as e:
        databases.create_branch(f"postgresql://u:hunter2@127.0.0.1:{free_port()}/x", "t", "hi_x")
    assert "PostgreSQL is not reachable at 127.0.0.1:" in str(e.value) and "hunter2" not in str(e.value)


def test_missing_template(postgres_server: PostgresServer) -> None:
    with pytest.raises(UserError) as e:
        databases.create_branch(postgres_server.url, "no_such_template", "hi_x")
    assert "template database 'no_such_template' does not exist" in str(e.value)


def shop_with_database_agents(tmp_path: Path, server: PostgresServer, template: str, agents: list[str], name: str = "shop") -> Path:
    """A repository whose agents each list the postgres service ``db``."""
    tpl = server.make_template(template)
    repo = make_repo(tmp_path / name)
    listed = "".join(f"  - {{name: {a}, services: [db]}}\n" for a in agents)
    write_manifest(repo, f'services:\n  db: {{kind: postgres, url: "{server.url}", template: {tpl}}}\nagents:\n{listed}')
    return repo


def test_agents_get_their_own_database_through_up_and_down_drops_it(tmp_path: Path, postgres_server: PostgresServer) -> None:
    repo = shop_with_database_agents(tmp_path, postgres_server, "tpl_cli", ["a", "b"])
    hybridiso(repo, "up")
    urls = {}
    for n in ("a", "b"):
        urls[n] = hybridiso(repo, "exec", n, "--", "sh", "-c", "echo $DATABASE_URL").stdout.strip()
        assert "/hi_shop_" in urls[n] and urls[n].endswith(f"_{n}_db")
        assert "DB_URL=" in (tmp_path / "shop.agents" / n / ".hybridiso.env").read_text()
        with psycopg.connect(urls[n]) as conn:
            assert conn.execute("SELECT label FROM items").fetchone() == ("from the template",)
    assert urls["a"] != urls["b"]
    assert {u.rsplit("/", 1)[1] for u in urls.values()} <= set(databases.list_branches(postgres_server.url, "hi_shop_"))
    hybridiso(repo, "down")
    names = {u.rsplit("/", 1)[1] for u in urls.values()}
    assert len(names) == 2
    assert not names & set(databases.list_branches(postgres_server.url))


def test_gc_drops_database_branches_no_agent_owns_and_only_those(tmp_path: Path, postgres_server: PostgresServer) -> None:
    # a directory name postgres cannot use as is: branch names are normalised
    # and hashed, and gc must still find this repository's by their prefix
    repo = shop_with_database_agents(tmp_path, postgres_server, "tpl_gc", ["kept", "lost"], name="my-shop.app")
    tpl = "tpl_gc"
    hybridiso(repo, "up")
    # a database that is not a branch of this repository: never touched
    databases.create_branch(postgres_server.url, tpl, "hi_someone_else_db")
    mine = set(databases.list_branches(postgres_server.url, "hi_my_shop_app_"))
    assert len(mine) == 2
    lost = next(n for n in mine if "_lost_db" in n)
    kept = next(n for n in mine if "_kept_db" in n)
    state_file = repo / ".git" / "hybridiso" / "state.json"
    # docs/faults.md row 18: the state file is lost; the rebuilt records own their databases again
    state_file.unlink()
    dry = json.loads(hybridiso(repo, "gc", "--json").stdout)
    assert [f for f in dry["findings"] if f["kind"] == "database"] == []
    # now one environment goes behind hybridiso's back (worktree, branch, state)
    git(repo, "worktree", "remove", "--force", str(tmp_path / "my-shop.app.agents" / "lost"))
    git(repo, "branch", "-D", "hybridiso/lost")
    state_file.unlink(missing_ok=True)  # (the dry run above did not write one)
    dry = json.loads(hybridiso(repo, "gc", "--json").stdout)
    found = [f for f in dry["findings"] if f["kind"] == "database"]
    assert [f["target"] for f in found] == [f"database {lost}"]
    assert lost in databases.list_branches(postgres_server.url)  # a dry run changes nothing
    hybridiso(repo, "gc", "--yes")
    left = databases.list_branches(postgres_server.url)
    assert lost not in left and kept in left and "hi_someone_else_db" in left
    # the adopted record still drops its own branch on down
    hybridiso(repo, "down", "kept")
    left = databases.list_branches(postgres_server.url)
    assert kept not in left and "hi_someone_else_db" in left
    databases.drop_branch(postgres_server.url, "hi_someone_else_db")


def test_parallel_creates_of_one_branch_all_get_it(postgres_server: PostgresServer) -> None:
    """Two runs making the same branch at once (two `up`s racing, a retry
    beside the first try): serialised on the template's advisory lock, the
    second finds the branch made and gets its URL, never "already exists"."""
    tpl = postgres_server.make_template("tpl_same")
    urls: list[str] = []
    errors: list[BaseException] = []
    start = threading.Barrier(6)

    def make() -> None:
        start.wait()
        try:
            urls.append(databases.create_branch(postgres_server.url, tpl, "hi_t_same"))
        except BaseException as e:  # noqa: BLE001 - collected for the assertion
            errors.append(e)

    threads = [threading.Thread(target=make) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and len(urls) == 6 and len(set(urls)) == 1
    assert databases.list_branches(postgres_server.url, "hi_t_same") == ["hi_t_same"]
    assert databases.baseline_of(postgres_server.url, "hi_t_same") is not None  # taken once, by the run that made it
