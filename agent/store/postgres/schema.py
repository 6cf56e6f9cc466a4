"""The PostgreSQL outbox schema and its forward migrations.

The tables live in their own schema (`[outbox] schema`, default `dodo_outbox`), so the outbox can share
the application's database. The version is the `schema_version` row of `dodo_outbox_kv`. Migrations
run under a transaction-scoped advisory lock keyed by the schema name, so several agents and apps
opening the same database at once migrate it exactly once; a migration commits with its version bump.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from agent.errors import OutboxError
from agent.timestamps import to_us

_V1 = """
CREATE TABLE IF NOT EXISTS {ev} (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id        text    NOT NULL UNIQUE,
    event_name      text    NOT NULL,
    ts              bigint  NOT NULL,
    payload         text    NOT NULL,
    stamped         boolean NOT NULL DEFAULT false,
    source          text    NOT NULL DEFAULT 'library',
    state           text    NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'inflight', 'delivered', 'dead')),
    attempts        integer NOT NULL DEFAULT 0,
    enqueued_at     bigint  NOT NULL,
    next_attempt_at bigint  NOT NULL DEFAULT 0,
    lease_until     bigint,
    lease_owner     text,
    settled_at      bigint,
    restamped       boolean NOT NULL DEFAULT false,
    reason          text,
    http_status     integer,
    response        text,
    last_error      text,
    original_ts     bigint
) WITH (autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_cost_delay = 0);
CREATE INDEX IF NOT EXISTS dodo_outbox_claim ON {ev} (ts, id) INCLUDE (next_attempt_at)
    WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS dodo_outbox_leases ON {ev} (lease_until) WHERE state = 'inflight';
CREATE INDEX IF NOT EXISTS dodo_outbox_delivered ON {ev} (settled_at) WHERE state = 'delivered';
CREATE INDEX IF NOT EXISTS dodo_outbox_dead ON {ev} (settled_at) WHERE state = 'dead';
CREATE INDEX IF NOT EXISTS dodo_outbox_event_time ON {ev} (ts) WHERE state <> 'dead';
CREATE INDEX IF NOT EXISTS dodo_outbox_enqueued ON {ev} (enqueued_at);
CREATE TABLE IF NOT EXISTS {rq} (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          bigint  NOT NULL,
    status      integer,
    outcome     text    NOT NULL,
    events      integer NOT NULL,
    delivered   integer NOT NULL DEFAULT 0,
    dead        integer NOT NULL DEFAULT 0,
    duplicates  integer NOT NULL DEFAULT 0,
    duration_ms double precision NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS dodo_outbox_requests_at ON {rq} (at);
CREATE TABLE IF NOT EXISTS {mt} (
    meter_id        text PRIMARY KEY,
    event_name      text NOT NULL,
    name            text,
    aggregation     text,
    aggregation_key text,
    filter          text,
    pulled_at       bigint NOT NULL
);
"""

# The fleet's shared state (issue 14): the slots every agent on the outbox takes its requests and the
# pause's probe from (GCRA: `tat`, the theoretical arrival time, and `rate`, the budget slowed down
# after a 429), and the agents' registry their heartbeats keep (`status` lists it). Times are
# microseconds on the database clock.
_FLEET = """
CREATE TABLE IF NOT EXISTS {sl} (
    name text PRIMARY KEY,
    tat  bigint NOT NULL DEFAULT 0,
    rate double precision
);
CREATE TABLE IF NOT EXISTS {ag} (
    agent_id   text    PRIMARY KEY,
    host       text    NOT NULL,
    pid        integer NOT NULL,
    started_at bigint  NOT NULL,
    last_seen  bigint  NOT NULL,
    claimed    bigint  NOT NULL DEFAULT 0,
    delivered  bigint  NOT NULL DEFAULT 0,
    stopped    boolean NOT NULL DEFAULT false
);
"""

MIGRATIONS: Sequence[str] = (_V1, _FLEET)
SCHEMA_VERSION = len(MIGRATIONS)
VERSION_KEY = "schema_version"

_KV = """CREATE TABLE IF NOT EXISTS {kv} (
    key        text PRIMARY KEY,
    value      text NOT NULL,
    updated_at bigint NOT NULL
)"""


def migrate(conn: Any, schema: str, tables: dict[str, str]) -> int:
    """Create the schema and bring it to SCHEMA_VERSION in the caller's open transaction; returns the
    version found before. Serialised across processes by an advisory lock on the schema name."""
    conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", ("dodo-outbox:" + schema,))
    conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    conn.execute(_KV.format(**tables))
    row = conn.execute(f"SELECT value FROM {tables['kv']} WHERE key = %s", (VERSION_KEY,)).fetchone()
    try:
        found = 0 if row is None else int(row[0])
    except ValueError:
        raise OutboxError(
            f"the outbox's schema version ({tables['kv']} key {VERSION_KEY!r}) is {row[0]!r}, not a number"
        ) from None
    if found > SCHEMA_VERSION:
        raise OutboxError(
            f"the outbox was written by a newer dodo-outbox (schema {found}, this one knows "
            f"{SCHEMA_VERSION}); upgrade dodo-outbox"
        )
    for version in range(found, SCHEMA_VERSION):
        for statement in MIGRATIONS[version].format(**tables).split(";"):
            if statement.strip():
                conn.execute(statement)
    if found != SCHEMA_VERSION:
        conn.execute(
            f"INSERT INTO {tables['kv']} (key, value, updated_at) VALUES (%s, %s, %s) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
            (VERSION_KEY, str(SCHEMA_VERSION), to_us(time.time())),
        )
    return found
