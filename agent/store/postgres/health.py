"""PostgreSQL health, read from the catalog and the statistics views: what `doctor` checks and what
`status` warns about.

Read-only: nothing here writes, migrates or vacuums (the claim's plan is an EXPLAIN without ANALYZE,
rolled back). `connect_check` opens one plain connection first, so `doctor` can tell an unreachable
server from refused credentials; every message names the outbox by its masked URL.

The statistics views are the cumulative statistics system: a backend reports its counts when its
transaction ends (at most about a second later, or when it disconnects), so dead tuples appear with
that delay. Sessions of other roles show their transaction start only to a role with
`pg_read_all_stats` (for example through `pg_monitor`); without it they are not counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from agent.errors import ConfigError, OutboxError
from agent.store.location import mask_url
from agent.store.postgres import schema as schema_module
from agent.store.postgres import stats
from agent.store.postgres.connection import _detail
from agent.store.records import VacuumHealth

CLAIM_INDEX = "dodo_outbox_claim"
"""The partial index the claim walks (schema.py creates it)."""
_AUTH_SIGNS = (
    "authentication failed",
    "no pg_hba.conf entry",
    "not permitted to log in",
    "no password supplied",
    "password is required",
    "permission denied for database",
)


@dataclass(frozen=True, slots=True)
class TableHealth:
    """One table of the outbox schema: row versions, (auto)vacuum and analyze times, sizes."""

    name: str
    live_tuples: int
    dead_tuples: int
    last_autovacuum: float | None
    last_vacuum: float | None
    last_autoanalyze: float | None
    last_analyze: float | None
    autovacuum_enabled: bool
    table_bytes: int
    index_bytes: int


@dataclass(frozen=True, slots=True)
class IndexHealth:
    name: str
    present: bool
    valid: bool
    """pg_index.indisvalid: false after a failed CREATE INDEX CONCURRENTLY; the planner ignores it."""
    ready: bool


@dataclass(frozen=True, slots=True)
class Inspection:
    """What `doctor` reads from a PostgreSQL outbox."""

    server_version: str
    database: str
    user: str
    schema: str
    schema_version: int | None
    """None when the schema holds no outbox (no version row)."""
    known_version: int
    """The schema version this dodo-outbox writes."""
    tables: list[TableHealth]
    claim_index: IndexHealth
    claim_plan: list[str]
    plan_error: str | None
    vacuum: VacuumHealth
    autovacuum_on: bool
    """The server's `autovacuum` setting."""


def connect_check(url: str, timeout: float = 5.0) -> str:
    """Connect once and return the server version (e.g. `15.18`).

    Raises ConfigError (exit 2) when the server refused the credentials or the database does not
    exist, OutboxError (exit 75) when it cannot be reached; both name the URL with its password masked.
    """
    shown = mask_url(url)
    try:
        with psycopg.connect(url, connect_timeout=max(1, int(timeout)), autocommit=True) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            return "" if row is None else str(row[0]).split()[0]
    except psycopg.Error as exc:
        detail = _detail(exc)
        lowered = detail.lower()
        unknown_role = 'role "' in lowered and "does not exist" in lowered
        if unknown_role or any(sign in lowered for sign in _AUTH_SIGNS):
            raise ConfigError(
                f"PostgreSQL at {shown} refused the login: check the user and password in the URL (or "
                f"PGPASSWORD / ~/.pgpass) and the server's pg_hba.conf (the server said: {detail})"
            ) from None
        if "database" in lowered and "does not exist" in lowered:
            raise ConfigError(
                f"PostgreSQL at {shown} has no such database: fix the database name in the URL or create "
                f"it with createdb (the server said: {detail})"
            ) from None
        raise OutboxError(
            f"cannot reach PostgreSQL at {shown}: check that the server runs and that the host and port "
            f"(or socket directory) in the URL are right ({detail})"
        ) from None


_TABLES_SQL = (
    "SELECT c.relname, coalesce(s.n_live_tup, 0), coalesce(s.n_dead_tup, 0), "
    "extract(epoch FROM s.last_autovacuum), extract(epoch FROM s.last_vacuum), "
    "extract(epoch FROM s.last_autoanalyze), extract(epoch FROM s.last_analyze), "
    "NOT coalesce('autovacuum_enabled=false' = ANY(c.reloptions), false), "
    "pg_relation_size(c.oid), pg_indexes_size(c.oid) "
    "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
    "LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid "
    "WHERE n.nspname = %s AND c.relkind IN ('r', 'p') ORDER BY c.relname"
)
_HOT_SQL = (
    "SELECT n_live_tup, n_dead_tup, extract(epoch FROM last_autovacuum) "
    "FROM pg_stat_user_tables WHERE relid = to_regclass(%s)"
)
_OLDEST_SQL = (
    "SELECT pid, state, extract(epoch FROM clock_timestamp() - xact_start) FROM pg_stat_activity "
    "WHERE datname = current_database() AND xact_start IS NOT NULL AND pid <> pg_backend_pid() "
    "AND backend_type = 'client backend' "
    "UNION ALL SELECT NULL, 'prepared transaction ' || gid, extract(epoch FROM clock_timestamp() - prepared) "
    "FROM pg_prepared_xacts WHERE database = current_database() "
    "ORDER BY 3 DESC LIMIT 1"
)
_INDEX_SQL = "SELECT i.indisvalid, i.indisready FROM pg_index i WHERE i.indexrelid = to_regclass(%s)"


def vacuum_health(db: Any) -> VacuumHealth:
    """The hot table's live and dead row versions, its last autovacuum, the oldest open transaction."""
    with db.read() as conn:
        return _vacuum(conn, db.t["ev"])


def _vacuum(conn: Any, table: str) -> VacuumHealth:
    hot = conn.execute(_HOT_SQL, (table,)).fetchone()
    live, dead, autovacuumed = hot if hot is not None else (0, 0, None)
    oldest = conn.execute(_OLDEST_SQL).fetchone()
    pid, state, age = oldest if oldest is not None else (None, None, None)
    return VacuumHealth(
        live_tuples=int(live),
        dead_tuples=int(dead),
        last_autovacuum=_seconds(autovacuumed),
        oldest_transaction_age_seconds=None if age is None else round(max(0.0, float(age)), 3),
        oldest_transaction_pid=None if pid is None else int(pid),
        oldest_transaction_state=None if state is None else str(state),
    )


def inspect(db: Any, server_version: str) -> Inspection:
    """Everything `doctor` checks, on a connection pool that did not migrate (`PgBase`)."""
    with db.read() as conn:
        database, user = conn.execute("SELECT current_database(), current_user").fetchone()
        schema_version = _schema_version(conn, db.t["kv"])
        tables = [
            TableHealth(
                name=str(name),
                live_tuples=int(live),
                dead_tuples=int(dead),
                last_autovacuum=_seconds(av),
                last_vacuum=_seconds(v),
                last_autoanalyze=_seconds(aa),
                last_analyze=_seconds(a),
                autovacuum_enabled=bool(enabled),
                table_bytes=int(size),
                index_bytes=int(index_size),
            )
            for name, live, dead, av, v, aa, a, enabled, size, index_size in conn.execute(
                _TABLES_SQL, (db.schema,)
            ).fetchall()
        ]
        index_row = conn.execute(_INDEX_SQL, (f"{db.schema}.{CLAIM_INDEX}",)).fetchone()
        vacuum = _vacuum(conn, db.t["ev"])
        autovacuum_on = str(conn.execute("SHOW autovacuum").fetchone()[0]) == "on"
    plan: list[str] = []
    plan_error: str | None = None
    if any(t.name == db.t["ev"].rsplit(".", 1)[1] for t in tables):
        try:
            plan = stats.explain_claim(db)
        except OutboxError as exc:
            plan_error = str(exc)
    return Inspection(
        server_version=server_version,
        database=str(database),
        user=str(user),
        schema=db.schema,
        schema_version=schema_version,
        known_version=schema_module.SCHEMA_VERSION,
        tables=tables,
        claim_index=IndexHealth(
            name=CLAIM_INDEX,
            present=index_row is not None,
            valid=bool(index_row and index_row[0]),
            ready=bool(index_row and index_row[1]),
        ),
        claim_plan=plan,
        plan_error=plan_error,
        vacuum=vacuum,
        autovacuum_on=autovacuum_on,
    )


def _schema_version(conn: Any, kv: str) -> int | None:
    if conn.execute("SELECT to_regclass(%s)", (kv,)).fetchone()[0] is None:
        return None
    row = conn.execute(f"SELECT value FROM {kv} WHERE key = %s", (schema_module.VERSION_KEY,)).fetchone()
    if row is None:
        return None
    try:
        return int(row[0])
    except ValueError:
        raise OutboxError(
            f"the outbox's schema version ({kv} key {schema_module.VERSION_KEY!r}) is {row[0]!r}, not a "
            "number: the row was edited by hand; restore it from a backup"
        ) from None


def _seconds(value: Any) -> float | None:
    return None if value is None else round(float(value), 3)
