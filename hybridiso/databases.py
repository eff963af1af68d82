"""Database branches on a PostgreSQL server.  The only module that imports psycopg.

``CREATE DATABASE <branch> TEMPLATE <template>`` fails while anyone is
connected to the template ("being accessed by other users", SQLSTATE 55006).
Our own agents are serialised with an advisory lock; anyone else's session is
waited out with bounded retries, and then named in the error (FAULTS #19).
"""
from __future__ import annotations

import hashlib
import re
import time
import zlib
from urllib.parse import urlsplit, urlunsplit

from hybridiso.errors import UserError

MAX_IDENT = 63


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


def _connect(server_url: str):  # type: ignore[no-untyped-def]
    import psycopg

    try:
        return psycopg.connect(branch_url(server_url, "postgres"), autocommit=True, connect_timeout=10)
    except psycopg.OperationalError as e:
        detail = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        # never echo the URL: it may hold a password
        raise UserError(
            f"PostgreSQL is not reachable at {where(server_url)}: {detail}",
            hint="start the server, or fix the service's url in hybridiso.yaml",
        ) from None


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
                    return branch_url(server_url, name)
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
    raise AssertionError("unreachable")


def _sessions(cur, template: str) -> str:  # type: ignore[no-untyped-def]
    cur.execute(
        "SELECT pid, coalesce(application_name, ''), coalesce(client_addr::text, 'local') FROM pg_stat_activity WHERE datname = %s",
        (template,),
    )
    rows = cur.fetchall()
    if not rows:
        return "no sessions now"
    return "sessions: " + ", ".join(f"pid {pid} ({app or 'unnamed'} from {addr})" for pid, app, addr in rows)


def drop_branch(server_url: str, name: str) -> bool:
    from psycopg import sql

    with _connect(server_url) as conn, conn.cursor() as cur:
        existed = _exists(cur, name)
        if existed:
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        return existed


def list_branches(server_url: str, prefix: str = "hi_") -> list[str]:
    with _connect(server_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT datname FROM pg_database WHERE datname LIKE %s ORDER BY datname", (prefix.replace("_", r"\_") + "%",))
        return [r[0] for r in cur.fetchall()]
