"""The outbox schema, its forward migrations and connection settings.

Tables are prefixed `dodo_outbox_` so the outbox can live inside an application's own SQLite database
(the transactional outbox) without clashing with its tables.

Migrations are a list; the schema version is the `schema_version` row of `dodo_outbox_kv`, not
`PRAGMA user_version`: that belongs to the application whose database may hold the outbox, and its own
migrations may count with it. A migration runs in the same transaction as the version bump, so a crash
leaves the file at the old version or the new one.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence

from agent.errors import ConfigError, OutboxError
from agent.timestamps import to_us

_V1 = """
CREATE TABLE IF NOT EXISTS dodo_outbox_events (
    id              INTEGER PRIMARY KEY,          -- time-ordered: appends stay at the end of the b-tree
    event_id        TEXT    NOT NULL UNIQUE,      -- Dodo's idempotency key
    event_name      TEXT    NOT NULL,
    ts              INTEGER NOT NULL,             -- event time, microseconds since the epoch, UTC
    payload         TEXT    NOT NULL,             -- canonical JSON, exactly what is sent (timestamp last)
    stamped         INTEGER NOT NULL DEFAULT 0,   -- 1: the agent set the timestamp at enqueue
    source          TEXT    NOT NULL DEFAULT 'library',
    state           TEXT    NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'inflight', 'delivered', 'dead')),
    attempts        INTEGER NOT NULL DEFAULT 0,   -- counted at claim time
    enqueued_at     INTEGER NOT NULL,             -- microseconds since the epoch
    next_attempt_at INTEGER NOT NULL DEFAULT 0,
    lease_until     INTEGER,
    lease_owner     TEXT,
    settled_at      INTEGER,                      -- when it became delivered or dead
    restamped       INTEGER NOT NULL DEFAULT 0,   -- 1: sent without its (too old) timestamp
    reason          TEXT,                         -- dead-letter reason
    http_status     INTEGER,
    response        TEXT,                         -- bounded excerpt of Dodo's answer
    last_error      TEXT
);
-- The claim: pending rows in event-time order, with the retry time in the index (no table lookups).
CREATE INDEX IF NOT EXISTS dodo_outbox_claim ON dodo_outbox_events (ts, next_attempt_at)
    WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS dodo_outbox_leases ON dodo_outbox_events (lease_until)
    WHERE state = 'inflight';
CREATE INDEX IF NOT EXISTS dodo_outbox_delivered ON dodo_outbox_events (settled_at)
    WHERE state = 'delivered';
CREATE INDEX IF NOT EXISTS dodo_outbox_dead ON dodo_outbox_events (settled_at)
    WHERE state = 'dead';

-- One row per delivery request: success ratios, rates and the sparkline come from here.
CREATE TABLE IF NOT EXISTS dodo_outbox_requests (
    id          INTEGER PRIMARY KEY,
    at          INTEGER NOT NULL,                 -- microseconds since the epoch
    status      INTEGER,                          -- NULL: timeout or connection error
    outcome     TEXT    NOT NULL,
    events      INTEGER NOT NULL,
    delivered   INTEGER NOT NULL DEFAULT 0,
    dead        INTEGER NOT NULL DEFAULT 0,
    duplicates  INTEGER NOT NULL DEFAULT 0,
    duration_ms REAL    NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS dodo_outbox_requests_at ON dodo_outbox_requests (at);

-- Small shared state between processes, e.g. whether delivery is paused and why.
CREATE TABLE IF NOT EXISTS dodo_outbox_kv (
    key        TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);

-- Meters pulled from Dodo (or written from the config), for the meter-aware checks.
CREATE TABLE IF NOT EXISTS dodo_outbox_meters (
    event_name      TEXT NOT NULL,
    meter_id        TEXT NOT NULL,
    name            TEXT,
    aggregation     TEXT,
    aggregation_key TEXT,
    filter          TEXT,
    pulled_at       INTEGER NOT NULL,
    PRIMARY KEY (meter_id)
);
"""

_V2 = """
-- The event time as the producer gave it, kept when `dlq replay --restamp` rewrites ts and the payload
-- (NULL: never rewritten). Before V2 it lived in last_error, which delivery clears.
ALTER TABLE dodo_outbox_events ADD COLUMN original_ts INTEGER;
"""

# Event time over the rows that bill (not dead): `meters preview` and `reconcile` read a time range
# through it instead of scanning the file.
_V3_EVENT_TIME = """
CREATE INDEX IF NOT EXISTS dodo_outbox_event_time ON dodo_outbox_events (ts) WHERE state <> 'dead';
"""

# The fleet's shared state (issue 14), as on PostgreSQL: the slots every process on this file takes its
# requests and the pause's probe from (GCRA, agent/store/rules.py), and the agents' registry.
_V4_FLEET = """
CREATE TABLE IF NOT EXISTS dodo_outbox_slots (
    name TEXT PRIMARY KEY,
    tat  INTEGER NOT NULL DEFAULT 0,              -- theoretical arrival time, microseconds
    rate REAL                                     -- slowed-down requests/min after a 429; NULL: not slowed
);
CREATE TABLE IF NOT EXISTS dodo_outbox_agents (
    agent_id   TEXT    PRIMARY KEY,               -- the worker's lease owner (host:pid:random)
    host       TEXT    NOT NULL,
    pid        INTEGER NOT NULL,
    started_at INTEGER NOT NULL,
    last_seen  INTEGER NOT NULL,
    claimed    INTEGER NOT NULL DEFAULT 0,
    delivered  INTEGER NOT NULL DEFAULT 0,
    stopped    INTEGER NOT NULL DEFAULT 0
);
"""

MIGRATIONS: Sequence[str] = (_V1, _V2, _V3_EVENT_TIME, _V4_FLEET)
SCHEMA_VERSION = len(MIGRATIONS)

VERSION_KEY = "schema_version"
"""The `dodo_outbox_kv` row holding the schema version."""

SYNCHRONOUS = {"full": "FULL", "normal": "NORMAL"}


def configure(conn: sqlite3.Connection, synchronous: str, busy_timeout_ms: int) -> None:
    """Per-connection settings: WAL, the durability level and how long to wait for a writer."""
    if synchronous not in SYNCHRONOUS:
        raise ConfigError(
            f"outbox.synchronous = {synchronous!r} is not valid; use one of {', '.join(SYNCHRONOUS)}"
        )
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    # Takes effect only on a new, empty file (before WAL writes its first page): it lets the
    # retention job hand free pages back with incremental_vacuum. A no-op on existing files.
    conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise OutboxError(f"could not switch the outbox to WAL mode (got {mode!r})")
    conn.execute(f"PRAGMA synchronous = {SYNCHRONOUS[synchronous]}")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA journal_size_limit = 67108864")


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema up to SCHEMA_VERSION; return the version found before. Safe to race."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        found = _upgrade(conn)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return found


def ensure_tables(conn: sqlite3.Connection) -> None:
    """Create the outbox tables on an application's connection, inside its open transaction.

    Used by the transactional outbox; DDL is transactional in SQLite, so a rollback undoes it too.
    Creates the current schema (every migration) and records its version in `dodo_outbox_kv`, leaving
    the application's `PRAGMA user_version` alone.
    """
    if not _has_tables(conn):
        _upgrade(conn)


def stored_version(conn: sqlite3.Connection) -> int:
    """The outbox schema version of this file: 0 when it has no outbox tables.

    Files written before the version moved out of `PRAGMA user_version` have no row; they hold
    version 1, the only one there was. Raises OutboxError when the row is not a number.
    """
    if not _has_tables(conn):
        return 0
    row = conn.execute("SELECT value FROM dodo_outbox_kv WHERE key = ?", (VERSION_KEY,)).fetchone()
    if row is None:
        return 1
    try:
        return int(row[0])
    except ValueError:
        raise OutboxError(
            f"the outbox's schema version (dodo_outbox_kv key {VERSION_KEY!r}) is {row[0]!r}, not a number"
        ) from None


def _upgrade(conn: sqlite3.Connection) -> int:
    """Run the missing migrations and record the version, in the caller's transaction."""
    found = stored_version(conn)
    if found > SCHEMA_VERSION:
        raise OutboxError(
            f"the outbox was written by a newer dodo-outbox (schema {found}, this one knows "
            f"{SCHEMA_VERSION}); upgrade dodo-outbox"
        )
    for version in range(found, SCHEMA_VERSION):
        for statement in _statements(MIGRATIONS[version]):
            conn.execute(statement)
    # Written when missing too (files from before it), so every file says its version plainly.
    conn.execute(
        "INSERT INTO dodo_outbox_kv (key, value, updated_at) VALUES (?, ?, ?) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at "
        "WHERE value != excluded.value",
        (VERSION_KEY, str(SCHEMA_VERSION), to_us(time.time())),
    )
    return found


def _has_tables(conn: sqlite3.Connection) -> bool:
    row = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'dodo_outbox_events'"
    ).fetchone()
    return row is not None


def _statements(script: str) -> list[str]:
    lines = [line.split("--", 1)[0] for line in script.splitlines()]
    return [part.strip() for part in "\n".join(lines).split(";") if part.strip()]
