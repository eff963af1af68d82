"""Database branches on a PostgreSQL server.  The only module that imports psycopg.

``CREATE DATABASE <branch> TEMPLATE <template>`` fails while anyone is
connected to the template ("being accessed by other users", SQLSTATE 55006).
Our own agents are serialised with an advisory lock; anyone else's session is
waited out with bounded retries, and then named in the error (docs/faults.md row 19).

Data an agent wrote into its branch is work (docs/faults.md row 26): ``changes`` says
what changed since the branch was made, ``drop_branch`` refuses to drop a
changed branch unless it may dump it first (``pg_dump``, into a 0600 file,
the password never in argv: docs/faults.md row 34).  How "changed" is decided:

- PostgreSQL's cumulative statistics of a new database start at zero, so
  any row inserted, updated or deleted (DDL too: it writes catalog rows)
  shows in ``pg_stat_database``.  They are exact once every session that
  wrote has ended (a backend flushes its counters on exit), but a session
  still connected may not have flushed yet (PostgreSQL 15 flushes an idle
  backend's counters up to ten seconds late, one inside a transaction not at
  all), and a crash or ``pg_stat_reset`` loses them.
- So when a session is connected, or the counters may have been lost, the
  database is compared with its ``Baseline``: taken when it was created, in
  one snapshot, it holds the next transaction id and the row count of every
  table of the database (the user's and its own catalogs).  A row written
  since has an ``xmin`` at or after that id; a deleted row shows in the
  count.  Exact, and not a matter of timing.
- ``drop_branch`` first locks everybody out (``ALLOW_CONNECTIONS false``),
  ends the sessions (which flushes their counters), renames the database to
  a name no agent knows and only then judges, dumps and drops it, so nothing
  written between the check and the drop is lost.

The baseline is kept in the agent's record and, so that it survives a lost
state file, as the database's comment.
"""
from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from hybridiso import json_data, safe_files
from hybridiso.output import plural
from hybridiso.errors import UserError

MAX_IDENT = 63


class Unreachable(UserError):
    """The server did not answer."""


def _ident(text: str) -> str:
    return re.sub(r"[^a-z0-9_]+", "_", text.lower())


PROJECT_PART = 30


def branch_prefix(project: str) -> str:
    """What every branch of ``project`` starts with: ``hi_<project>_``, the
    project normalised and cut to 30 bytes, never hashed, so gc can list a
    repository's branches by prefix."""
    return f"hi_{_ident(project)[:PROJECT_PART]}_"


def branch_name(project: str, agent: str, service: str) -> str:
    """Deterministic, valid and distinct: ``hi_<project>_<agent>_<service>``.
    When a part had to be normalised or the name is over 63 bytes, the
    agent-and-service part is shortened and a hash of the full inputs is
    appended; the ``branch_prefix`` always stays."""
    prefix = branch_prefix(project)
    rest = _ident(f"{agent}_{service}")
    name = prefix + rest
    if len(name) <= MAX_IDENT and name == f"hi_{project}_{agent}_{service}":
        return name
    digest = hashlib.sha256(f"{project}\0{agent}\0{service}".encode()).hexdigest()[:8]
    return f"{prefix}{rest[: MAX_IDENT - len(prefix) - 9]}_{digest}"


def branch_url(server_url: str, dbname: str) -> str:
    parts = urlsplit(server_url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + dbname, parts.query, parts.fragment))


def where(server_url: str) -> str:
    parts = urlsplit(server_url)
    return f"{parts.hostname or 'localhost'}:{parts.port or 5432}"


@contextlib.contextmanager
def _connect(server_url: str, dbname: str = "postgres") -> Iterator[Any]:
    """A connection; any PostgreSQL error the caller does not handle itself
    becomes one clear UserError (a permission, a database an agent made a
    template), never a traceback."""
    import psycopg

    try:
        # a lock an agent holds must not hang a check: give up after a while and say so
        conn = psycopg.connect(
            branch_url(server_url, dbname), autocommit=True, connect_timeout=10, application_name="hybridiso", options="-c lock_timeout=10000"
        )
    except psycopg.OperationalError as e:
        # never echo the URL: it may hold a password
        raise Unreachable(
            f"PostgreSQL is not reachable at {where(server_url)}: {_last_line(e)}",
            hint="start the server, or fix the service's url in hybridiso.yaml",
        ) from None
    try:
        with conn:
            yield conn
    except psycopg.Error as e:
        raise UserError(f"PostgreSQL at {where(server_url)} said: {_first_line(e)}",
                        hint="fix what it says (or ask its administrator), then run the command again") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _last_line(e: BaseException) -> str:
    """libpq's connection errors say what went wrong last ("FATAL: ...")."""
    text = str(e).strip()
    return text.splitlines()[-1] if text else type(e).__name__


def _exists(cur, name: str) -> bool:  # type: ignore[no-untyped-def]
    cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
    return cur.fetchone() is not None


def create_branch(server_url: str, template: str, name: str, *, attempts: int = 10, delay: float = 0.5) -> str:
    """Create ``name`` from ``template`` (idempotent); return its URL."""
    import psycopg
    from psycopg import sql

    lock_key = zlib.crc32(f"hybridiso-template:{template}".encode())
    with _connect(server_url) as conn, conn.cursor() as cur:
        if _exists(cur, name):
            return branch_url(server_url, name)
        if not _exists(cur, template):
            raise UserError(
                f"template database {template!r} does not exist on {where(server_url)}",
                hint="create it, or fix `template:` of the service in hybridiso.yaml",
            )
        cur.execute("SELECT pg_advisory_lock(%s)", (lock_key,))
        try:
            for attempt in range(1, attempts + 1):
                if _exists(cur, name):
                    return branch_url(server_url, name)
                try:
                    cur.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template)))
                    break
                except psycopg.errors.ObjectInUse:
                    if attempt == attempts:
                        raise UserError(
                            f"template database {template!r} is being accessed by other users; gave up after "
                            f"{attempts} tries: {_sessions(cur, template)}",
                            hint=f"close the sessions connected to {template!r} (a template must be idle to be copied)",
                        ) from None
                    time.sleep(min(delay * attempt, 5.0))
        finally:
            cur.execute("SELECT pg_advisory_unlock(%s)", (lock_key,))
        # the template is free again; the new branch's baseline is taken
        # before anybody is given its URL
        _remember_baseline(cur, server_url, name)
    return branch_url(server_url, name)


def _sessions(cur, template: str) -> str:  # type: ignore[no-untyped-def]
    cur.execute(
        "SELECT pid, coalesce(application_name, ''), coalesce(client_addr::text, 'local') FROM pg_stat_activity WHERE datname = %s",
        (template,),
    )
    rows = cur.fetchall()
    if not rows:
        return "no sessions now"
    return "sessions: " + ", ".join(f"pid {pid} ({app or 'unnamed'} from {addr})" for pid, app, addr in rows)


def list_branches(server_url: str, prefix: str = "hi_") -> list[str]:
    with _connect(server_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT datname FROM pg_database WHERE datname LIKE %s ORDER BY datname", (prefix.replace("_", r"\_") + "%",))
        return [r[0] for r in cur.fetchall()]


# --- what changed since a branch was made (docs/faults.md row 26) ------------------------

BASELINE_VERSION = 1
COMMENT_PREFIX = "hybridiso baseline "
XID_WINDOW = 1 << 31  # a 32-bit xid compares reliably over this many transactions


@dataclass(frozen=True)
class Baseline:
    """A branch at the moment it was created."""

    oid: int  # pg_database.oid: a database dropped and made again is another one
    xid: int  # the first transaction id not yet given out (64-bit, with epoch)
    at: float  # server clock
    started: float  # pg_postmaster_start_time(): a restart may have lost the counters
    counts: dict[int, int]  # relation oid -> rows (-1: a materialized view never populated)
    written: int = 0  # the server's counters of rows written (inserted + updated + deleted) by then

    def to_json(self) -> dict[str, Any]:
        return {"v": BASELINE_VERSION, "oid": self.oid, "xid": self.xid, "at": self.at, "started": self.started,
                "written": self.written, "counts": {str(k): v for k, v in self.counts.items()}}

    @classmethod
    def from_json(cls, data: Any) -> Baseline | None:
        """None for anything that is not a baseline we wrote (tampered, older)."""
        try:
            if data.get("v") != BASELINE_VERSION:
                return None
            counts = {int(k): int(v) for k, v in data["counts"].items()}
            return cls(int(data["oid"]), int(data["xid"]), float(data["at"]), float(data["started"]), counts, int(data.get("written", 0)))
        except (AttributeError, KeyError, TypeError, ValueError):
            return None


@dataclass(frozen=True)
class Change:
    what: str  # what changed, or why it cannot be told
    certain: bool = True  # False: it may not have changed, but nothing proves it


# every table of the database that holds rows: the user's, information_schema
# and the database's own catalogs (DDL, grants, comments, large objects are
# rows there); not the catalogs shared by the whole server, which other
# databases write to, and not the planner's statistics: any ANALYZE rewrites
# them, and autovacuum analyzes the shared catalogs (pg_database, which every
# CREATE DATABASE on the server changes) from whichever database it visits,
# writing into that database's pg_statistic
_RELATIONS = """
SELECT c.oid, n.nspname, c.relname, n.nspname = 'pg_catalog', c.relkind = 'm' AND NOT c.relispopulated,
       has_table_privilege(c.oid, 'SELECT')
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'm') AND NOT c.relisshared
  AND n.nspname !~ '^pg_toast' AND n.nspname !~ '^pg_temp'
  AND NOT (n.nspname = 'pg_catalog' AND c.relname IN ('pg_statistic', 'pg_statistic_ext_data'))
ORDER BY c.oid
"""


@dataclass(frozen=True)
class _Rel:
    oid: int
    schema: str
    name: str
    catalog: bool
    unpopulated: bool
    readable: bool

    @property
    def shown(self) -> str:
        return f"{self.schema}.{self.name}"


def _relations(cur) -> list[_Rel]:  # type: ignore[no-untyped-def]
    cur.execute(_RELATIONS)
    return [_Rel(*row) for row in cur.fetchall()]


def _next_xid(cur) -> int:  # type: ignore[no-untyped-def]
    cur.execute("SELECT txid_snapshot_xmax(txid_current_snapshot())")
    return int(cur.fetchone()[0])


def _take_baseline(server_url: str, name: str) -> Baseline:
    """Counts and the next transaction id in one snapshot of the branch
    (read only: taking it writes nothing, so the counters do not move)."""
    import psycopg

    with _connect(server_url, name) as conn:
        conn.autocommit = False
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        with conn.cursor() as cur:
            cur.execute("SELECT pg_stat_clear_snapshot()")
            cur.execute(
                "SELECT d.oid, extract(epoch FROM now()), extract(epoch FROM pg_postmaster_start_time()), "
                "s.tup_inserted + s.tup_updated + s.tup_deleted "
                "FROM pg_database d JOIN pg_stat_database s ON s.datid = d.oid WHERE d.datname = current_database()"
            )
            oid, at, started, written = cur.fetchone()
            xid = _next_xid(cur)
            counts = {}
            for rel in _relations(cur):
                if rel.unpopulated:
                    counts[rel.oid] = -1
                elif rel.readable:
                    cur.execute(_count_sql(rel))
                    counts[rel.oid] = int(cur.fetchone()[0])
        conn.rollback()
    return Baseline(int(oid), xid, float(at), float(started), counts, int(written))


# catalog rows PostgreSQL keeps for its own bookkeeping: a session's first
# temporary table makes namespaces pg_temp_N / pg_toast_temp_N that outlive it
_NOT_WORK = {("pg_catalog", "pg_namespace"): "nspname !~ '^pg_(toast_)?temp_'"}


def _count_sql(rel: _Rel, window: bool = False):  # type: ignore[no-untyped-def]
    from psycopg import sql

    table = sql.SQL("ONLY {}.{}").format(sql.Identifier(rel.schema), sql.Identifier(rel.name))
    where = _NOT_WORK.get((rel.schema, rel.name))
    if where is not None:
        table = sql.SQL("{} WHERE {}").format(table, sql.SQL(where))
    if not window:
        return sql.SQL("SELECT count(*) FROM {}").format(table)
    # rows whose xmin lies in [baseline, now): written since, modulo 2^32
    written = sql.SQL("count(*) FILTER (WHERE (xmin::text::bigint - %(base)s + 4294967296) %% 4294967296 < %(span)s)")
    return sql.SQL("SELECT count(*), {} FROM {}").format(written, table)


def _remember_baseline(cur, server_url: str, name: str) -> Baseline:  # type: ignore[no-untyped-def]
    from psycopg import sql

    baseline = _take_baseline(server_url, name)
    comment = COMMENT_PREFIX + json.dumps(baseline.to_json(), separators=(",", ":"))
    cur.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(name), sql.Literal(comment)))
    return baseline


def rebaseline(server_url: str, name: str, settle: float = 3.0) -> Baseline | None:
    """Take the branch as it is now as its baseline: after setup wrote into
    it (migrations, seeds), what hybridiso made includes that.  Waits up to
    ``settle`` seconds for the setup's sessions to end (their counters are
    flushed when they do); None when the branch is gone."""
    with _connect(server_url) as conn, conn.cursor() as cur:
        oid = _oid(cur, name)
        if oid is None:
            return None
        deadline = time.monotonic() + settle
        while _sessions_on(cur, oid) and time.monotonic() < deadline:
            time.sleep(0.05)
        return _remember_baseline(cur, server_url, name)


def _oid(cur, name: str) -> int | None:  # type: ignore[no-untyped-def]
    cur.execute("SELECT oid FROM pg_database WHERE datname = %s", (name,))
    row = cur.fetchone()
    return int(row[0]) if row else None


def _comment_baseline(cur, oid: int) -> Baseline | None:  # type: ignore[no-untyped-def]
    cur.execute("SELECT shobj_description(%s, 'pg_database')", (oid,))
    row = cur.fetchone()
    text = row[0] if row else None
    if not text or not text.startswith(COMMENT_PREFIX):
        return None
    try:
        return Baseline.from_json(json_data.loads(text[len(COMMENT_PREFIX):]))
    except ValueError:
        return None


def baseline_of(server_url: str, name: str) -> Baseline | None:
    """The baseline ``create_branch`` left on the branch (its comment)."""
    with _connect(server_url) as conn, conn.cursor() as cur:
        oid = _oid(cur, name)
        return _comment_baseline(cur, oid) if oid is not None else None


@dataclass(frozen=True)
class _Session:
    pid: int
    app: str
    writing: bool  # holds a transaction id: it has written, uncommitted

    @property
    def shown(self) -> str:
        return f"pid {self.pid}" + (f" ({self.app})" if self.app else "")


def _sessions_on(cur, oid: int) -> list[_Session]:  # type: ignore[no-untyped-def]
    # autovacuum only cleans up after writers; ending it is PostgreSQL's job
    cur.execute(
        "SELECT pid, coalesce(application_name, ''), backend_xid IS NOT NULL FROM pg_stat_activity "
        "WHERE datid = %s AND pid <> pg_backend_pid() AND backend_type IS DISTINCT FROM 'autovacuum worker' ORDER BY pid",
        (oid,),
    )
    return [_Session(*row) for row in cur.fetchall()]


def changes(server_url: str, name: str, baseline: Baseline | None = None) -> Change | None:
    """What changed in branch ``name`` since it was created; None when
    nothing did (or it is gone: nothing of it can be lost).  Read only."""
    with _connect(server_url) as conn, conn.cursor() as cur:
        oid = _oid(cur, name)
        if oid is None:
            return None
        return _judge(cur, server_url, name, oid, baseline or _comment_baseline(cur, oid))


def _judge(cur, server_url: str, name: str, oid: int, baseline: Baseline | None) -> Change | None:  # type: ignore[no-untyped-def]
    if baseline is not None and baseline.oid != oid:
        return Change("it is not the database hybridiso created (it was dropped and made again)")
    # sessions before and after the counters: one that ended in between
    # flushed its counters before it left pg_stat_activity
    before = _sessions_on(cur, oid)
    cur.execute("SELECT pg_stat_clear_snapshot()")
    cur.execute(
        "SELECT tup_inserted, tup_updated, tup_deleted, extract(epoch FROM stats_reset), "
        "extract(epoch FROM pg_postmaster_start_time()), current_setting('track_counts') = 'on' "
        "FROM pg_stat_database WHERE datid = %s",
        (oid,),
    )
    ins, upd, dele, reset, started, tracking = cur.fetchone()
    after = _sessions_on(cur, oid)
    writing = [s for s in (*before, *after) if s.writing]
    if writing:
        return Change(f"a transaction still open has written (session {writing[0].shown})")
    written = int(ins) + int(upd) + int(dele)
    doubt = _counters_doubt(before + after, reset, float(started), bool(tracking), baseline)
    if baseline is None:
        # a branch made before baselines were kept: the counters since it was created
        if written:
            return Change(_from_counters(server_url, name, int(ins), int(upd), int(dele)))
        return None if doubt is None else Change(f"cannot tell whether its data changed: {doubt}, and it has no baseline to compare with", certain=False)
    if doubt is None and written == baseline.written:
        return None  # nothing was written since the baseline: no need to look at the rows
    # something was written (perhaps undone since), or the counters cannot be trusted: look
    return _compare(server_url, name, baseline)


def _counters_doubt(sessions: list[_Session], reset: Any, started: float, tracking: bool, baseline: Baseline | None) -> str | None:
    """Why zero counters may not mean "nothing written" (None: they are exact)."""
    if sessions:
        return f"{len(sessions)} session{'s' if len(sessions) > 1 else ''} connected ({', '.join(s.shown for s in sessions[:3])}), whose counters may not be flushed yet"
    if not tracking:
        return "track_counts is off on the server"
    if baseline is None:
        return "the counters were reset" if reset is not None else None
    if abs(started - baseline.started) > 0.001:
        return "the server restarted since it was created (a crash loses the counters)"
    if reset is not None and float(reset) >= baseline.at:
        return "its counters were reset since it was created"
    return None


def _from_counters(server_url: str, name: str, ins: int, upd: int, dele: int) -> str:
    """PostgreSQL's counters, per table where the database can be asked."""
    total = f"{plural(ins, 'row')} inserted, {upd} updated, {dele} deleted"
    try:
        with _connect(server_url, name) as conn, conn.cursor() as cur:
            cur.execute(
                "SELECT s.schemaname, s.relname, s.n_tup_ins, s.n_tup_upd, s.n_tup_del, c.relnamespace = 'pg_catalog'::regnamespace "
                "FROM pg_stat_all_tables s JOIN pg_class c ON c.oid = s.relid "
                "WHERE NOT c.relisshared AND s.n_tup_ins + s.n_tup_upd + s.n_tup_del > 0 "
                "ORDER BY s.n_tup_ins + s.n_tup_upd + s.n_tup_del DESC, 1, 2"
            )
            rows = cur.fetchall()
    except UserError:
        return total
    tables = [f"{sch}.{rel}: {_counted(i, u, d)}" for sch, rel, i, u, d, catalog in rows if not catalog]
    parts = tables[:5] + ([f"(+{plural(len(tables) - 5, 'more table')})"] if len(tables) > 5 else [])
    if any(catalog for *_, catalog in rows) or not tables:
        parts.append("the schema changed (tables, columns, functions, types, grants or large objects)")
    return "; ".join(parts)


def _counted(ins: int, upd: int, dele: int) -> str:
    return ", ".join(f"{n} {what}" for n, what in ((ins, "inserted"), (upd, "updated"), (dele, "deleted")) if n)


def _compare(server_url: str, name: str, baseline: Baseline) -> Change | None:
    """The exact check: every table's rows now against the baseline."""
    import psycopg

    with _connect(server_url, name) as conn:
        conn.autocommit = False
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        try:
            with conn.cursor() as cur:
                span = _next_xid(cur) - baseline.xid
                if not 0 <= span < XID_WINDOW:
                    found: Change | None = Change("cannot tell whether its data changed: too many transactions since it was created", certain=False)
                else:
                    found = _compare_rows(cur, baseline, span)
        except psycopg.errors.LockNotAvailable:
            found = Change("cannot tell whether its data changed: a table is locked by another session", certain=False)
        except psycopg.Error as e:
            found = Change(f"cannot tell whether its data changed: {_first_line(e)}", certain=False)
        conn.rollback()
    return found


def _compare_rows(cur, baseline: Baseline, span: int) -> Change | None:  # type: ignore[no-untyped-def]
    tables: list[str] = []
    schema = False
    unreadable: list[str] = []
    seen = set()
    for rel in _relations(cur):
        seen.add(rel.oid)
        before = baseline.counts.get(rel.oid)
        if rel.unpopulated:
            rows, written = -1, 0
        elif not rel.readable:
            # a catalog only superusers read (pg_statistic) changes with ANALYZE alone
            if not rel.catalog:
                unreadable.append(rel.shown)
            continue
        else:
            cur.execute(_count_sql(rel, window=True), {"base": baseline.xid % (1 << 32), "span": span})
            rows, written = (int(x) for x in cur.fetchone())
        if before == rows and not written:
            continue
        if rel.catalog:
            schema = True
        elif before is None:
            tables.append(f"{rel.shown}: new table ({max(rows, 0)} rows)")
        else:
            tables.append(f"{rel.shown}: " + ", ".join(_delta(before, rows, written)))
    dropped = [oid for oid in baseline.counts if oid not in seen]
    if dropped:
        schema = True
    parts = tables[:5] + ([f"(+{plural(len(tables) - 5, 'more table')})"] if len(tables) > 5 else [])
    if schema:
        parts.append("the schema changed (tables, columns, functions, types, grants or large objects)")
    if parts:
        return Change("; ".join(parts))
    if unreadable:
        return Change(f"cannot tell whether its data changed: no SELECT privilege on {', '.join(unreadable[:3])}", certain=False)
    return None


def _delta(before: int, rows: int, written: int) -> list[str]:
    out = []
    if rows != before:
        out.append(f"{abs(rows - before)} row{'s' if abs(rows - before) != 1 else ''} {'more' if rows > before else 'fewer'}")
    if written:
        out.append(f"{written} written")
    return out


# --- dropping, and dumping first (docs/faults.md rows 26, 34) ----------------------------


class DataChanged(UserError):
    """The branch's data changed: not dropped."""


@dataclass(frozen=True)
class DumpTarget:
    """Where dumps go: ``anchor/rel/<db>-<stamp>.sql``, walked without
    following a symlink below the trusted ``anchor`` (the git dir)."""

    anchor: Path
    rel: PurePosixPath


@dataclass(frozen=True)
class Dropped:
    existed: bool
    dump: Path | None = None  # where its data was saved, when it had changed
    change: str = ""  # what had changed


def drop_branch(server_url: str, name: str, baseline: Baseline | None = None, *, dump_to: DumpTarget | None = None) -> Dropped:
    """Drop branch ``name`` unless its data changed; with ``dump_to``, a
    changed branch is dumped there first.  Raises ``DataChanged`` (the
    branch stays as it was) when it changed and may not be dumped, or the
    dump failed."""
    from psycopg import sql

    with _connect(server_url) as conn, conn.cursor() as cur:
        oid = _oid(cur, name)
        if oid is None:
            return Dropped(False)
        baseline = baseline or _comment_baseline(cur, oid)
        with _detached(cur, name, oid) as hidden:
            change = _judge(cur, server_url, hidden, oid, baseline)
            dump = None
            if change is not None:
                if dump_to is None:
                    raise DataChanged(
                        f"database {name} changed: {change.what}",
                        hint="`hybridiso down --force` dumps it to the state dir before it drops it",
                    )
                dump = _dump(server_url, hidden, name, dump_to)
            cur.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(hidden)))
        return Dropped(True, dump, change.what if change else "")


def drop_scratch(server_url: str, name: str) -> None:
    """Drop ``name`` whatever its data: for databases that only ever held a
    check's scratch (``land``), never an agent's branch."""
    from psycopg import sql

    with _connect(server_url) as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@contextlib.contextmanager
def _detached(cur, name: str, oid: int) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """Lock everybody out of ``name``, end its sessions, and rename it to a
    name nobody knows; yield that name.  On an error (or when the body does
    not drop it) it gets its name back and takes connections again."""
    import psycopg
    from psycopg import sql

    hidden = f"{name[:50]}_x{secrets.token_hex(4)}"  # keeps the repository's prefix: gc finds it
    cur.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(sql.Identifier(name)))
    try:
        for attempt in range(50):
            try:
                cur.execute(
                    "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE datid = %s AND pid <> pg_backend_pid() "
                    "AND backend_type IS DISTINCT FROM 'autovacuum worker'",
                    (oid,),
                )
                cur.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(name), sql.Identifier(hidden)))
                break
            except psycopg.errors.ObjectInUse:
                if attempt == 49:
                    raise UserError(f"database {name}: its sessions did not end: {_sessions(cur, name)}",
                                    hint="close them, then run the command again") from None
                time.sleep(0.1)
            except psycopg.errors.InsufficientPrivilege as e:
                raise UserError(f"database {name}: not allowed to end its sessions: {str(e).strip()}",
                                hint="close the sessions connected to it, then run the command again") from None
    except BaseException:
        cur.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(sql.Identifier(name)))
        raise
    # only we know the new name; what an agent may have set on its branch
    # must not stop the dump or the drop (a template cannot be dropped)
    cur.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true CONNECTION LIMIT -1 IS_TEMPLATE false").format(sql.Identifier(hidden)))
    try:
        yield hidden
    except BaseException:
        if _oid(cur, hidden) is not None:
            cur.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(hidden), sql.Identifier(name)))
        raise


def server_major(server_url: str) -> int:
    with _connect(server_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT current_setting('server_version_num')::int / 10000")
        return int(cur.fetchone()[0])


PG_BINDIRS = "/usr/lib/postgresql/*/bin"


def pg_dump_for(major: int) -> Path:
    """A ``pg_dump`` that can dump a server of version ``major``: Debian's
    of the same major version first, else a newer one (pg_dump refuses
    servers newer than itself), else the one on PATH if new enough."""
    found: dict[int, Path] = {}
    for path in glob.glob(f"{PG_BINDIRS}/pg_dump"):
        m = re.search(r"/postgresql/(\d+)/bin/pg_dump$", path)
        if m and os.access(path, os.X_OK):
            found[int(m.group(1))] = Path(path)
    fits = sorted(v for v in found if v >= major)
    if fits:
        return found[major] if major in found else found[fits[0]]
    on_path = shutil.which("pg_dump")
    if on_path and _pg_dump_major(on_path) >= major:
        return Path(on_path)
    have = ", ".join(f"{v}" for v in sorted(found)) or "none"
    raise UserError(
        f"pg_dump for PostgreSQL {major} is not installed (looked in {PG_BINDIRS} and PATH; found versions: {have})",
        hint=f"install it (Debian/Ubuntu: apt-get install postgresql-client-{major}), then run the command again",
    )


def _pg_dump_major(path: str) -> int:
    try:
        out = subprocess.run([path, "--version"], check=False, capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 0
    m = re.search(r"\(PostgreSQL\)\s+(\d+)", out)
    return int(m.group(1)) if m else 0


SERVICE = "hybridiso"


def _service_file(server_url: str, dbname: str) -> str:
    """The connection as a libpq service file: its password reaches pg_dump
    through a 0600 file, never through argv (docs/faults.md row 34)."""
    from psycopg.conninfo import conninfo_to_dict

    params = {k: str(v) for k, v in conninfo_to_dict(branch_url(server_url, dbname)).items() if v is not None}
    params["dbname"] = dbname
    lines = [f"[{SERVICE}]"]
    for key, value in params.items():
        if any(c in value for c in "\r\n\0") or value != value.strip():
            raise UserError(f"the {key} in the service's url cannot be handed to pg_dump safely (line breaks or edge spaces)",
                            hint="percent-encode it differently, or dump the database yourself")
        lines.append(f"{key}={value}")
    return "\n".join(lines) + "\n"


def dump_command(pg_dump: Path, service_file: Path) -> tuple[list[str], dict[str, str]]:
    """argv and environment of pg_dump: no secret in either but the path of
    the 0600 service file."""
    env = {k: v for k, v in os.environ.items() if k not in ("PGSERVICE", "PGSERVICEFILE")}
    env["PGSERVICEFILE"] = str(service_file)
    return [str(pg_dump), "--no-password", "--format=plain", "--dbname", f"service={SERVICE}"], env


def _is_leftover(entry: str) -> bool:
    return entry.startswith(".pgservice-") or (entry.startswith(".") and entry.endswith(".sql.partial"))


def dump_leftovers(target: DumpTarget) -> list[str]:
    """What a dump killed half-way left in ``target``: its partial file and
    its service file (which holds the password)."""
    try:
        with safe_files.open_dir(target.anchor, target.rel) as dfd:
            return sorted(e for e in os.listdir(dfd) if _is_leftover(e))
    except FileNotFoundError:
        return []


def clear_dump_leftovers(target: DumpTarget) -> None:
    """Remove ``dump_leftovers``; the caller holds the repository lock, so
    no dump of ours is writing them (unlink never follows a symlink)."""
    with safe_files.open_dir(target.anchor, target.rel) as dfd:
        for entry in os.listdir(dfd):
            if _is_leftover(entry):
                with contextlib.suppress(FileNotFoundError, IsADirectoryError, PermissionError):
                    os.unlink(entry, dir_fd=dfd)


def _dump(server_url: str, dbname: str, shown_name: str, target: DumpTarget) -> Path:
    """``pg_dump`` of ``dbname`` into ``target/<shown_name>-<stamp>.sql``
    (0600, written under a temporary name and renamed once complete)."""
    pg_dump = pg_dump_for(server_major(server_url))
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)
    final = f"{shown_name}-{stamp}.sql"
    partial, service = f".{final}.partial", f".pgservice-{secrets.token_hex(6)}"
    dump_dir = safe_files.ensure_dir(target.anchor, target.rel)
    clear_dump_leftovers(target)
    safe_files.write_atomic(target.anchor, target.rel / service, _service_file(server_url, dbname), mode=0o600)
    complete = False
    try:
        fd = safe_files.open_regular(target.anchor, target.rel / partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode=0o600)
        try:
            argv, env = dump_command(pg_dump, dump_dir / service)
            done = subprocess.run(argv, check=False, stdout=fd, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env)
            if done.returncode == 0:
                os.fsync(fd)
        finally:
            os.close(fd)
        if done.returncode != 0:
            lines = done.stderr.decode(errors="replace").strip().splitlines()
            # "pg_dump: error: ..." says why; the lines after it quote the query
            reason = next((line for line in lines if "error:" in line), lines[-1] if lines else f"exit {done.returncode}")
            raise DataChanged(
                f"database {shown_name} changed, and pg_dump failed: {reason[:300]}",
                hint="fix what pg_dump says, then run the command again; the database was not dropped",
            )
        with safe_files.open_dir(target.anchor, target.rel) as dfd:
            os.rename(partial, final, src_dir_fd=dfd, dst_dir_fd=dfd)
            os.fsync(dfd)
        complete = True
    finally:
        with contextlib.suppress(OSError), safe_files.open_dir(target.anchor, target.rel) as dfd:
            for leftover in (service, *(() if complete else (partial,))):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(leftover, dir_fd=dfd)
    return dump_dir / final
