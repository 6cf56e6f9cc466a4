"""The PostgreSQL outbox schema: the DDL of a fresh schema, and bringing an older one forward.

The tables live in their own schema (`[outbox] schema`, default `dodo_outbox`), so the outbox can share
the application's database. The version is the `schema_version` row of `dodo_outbox_kv`. A fresh
schema is built from `CURRENT`; an older one runs the steps of migrations.py from its version on (a
test proves both give the same catalog). Either runs under a transaction-scoped advisory lock keyed by
the schema name, so several agents and apps opening the same database at once migrate it exactly
once, and commits with its version bump.

Version 2: the hot table `dodo_outbox_events` holds only undelivered rows (pending, inflight, dead);
`mark_delivered` moves rows into `dodo_outbox_delivered`, which retention prunes. Version 3 (this
one): the fleet's shared state, `dodo_outbox_slots` (the GCRA rows of the rate budget and the pause's
probe) and `dodo_outbox_agents` (the registry the agents' heartbeats keep).
"""

from __future__ import annotations

import time
from typing import Any

from agent.errors import OutboxError
from agent.store.postgres.migrations import STEPS, V1, statements
from agent.timestamps import to_us

# The hot table is a queue: every row is updated at claim and deleted (moved) at delivery, so it
# churns through dead tuples at the delivery rate. Autovacuum triggers on a fixed count of them
# (scale factor 0: a large backlog must not postpone it to 1% of millions), runs without cost delays
# (a vacuum that sleeps lets the claim index bloat), and analyze follows the same churn. No fillfactor:
# a claim changes `state`, which the partial indexes' predicates read, so it is never a HOT update.
CURRENT = """
CREATE TABLE {ev} (
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
) WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_cost_delay = 0, autovacuum_analyze_scale_factor = 0,
    autovacuum_analyze_threshold = 1000);
CREATE INDEX dodo_outbox_claim ON {ev} (ts, id) INCLUDE (next_attempt_at) WHERE state = 'pending';
CREATE INDEX dodo_outbox_leases ON {ev} (lease_until) WHERE state = 'inflight';
CREATE INDEX dodo_outbox_dead ON {ev} (settled_at) WHERE state = 'dead';
CREATE INDEX dodo_outbox_event_time ON {ev} (ts) WHERE state <> 'dead';
CREATE INDEX dodo_outbox_enqueued ON {ev} (enqueued_at);
CREATE TABLE {dv} (
    id              bigint  PRIMARY KEY,
    event_id        text    NOT NULL UNIQUE,
    event_name      text    NOT NULL,
    ts              bigint  NOT NULL,
    payload         text    NOT NULL,
    stamped         boolean NOT NULL,
    source          text    NOT NULL,
    state           text    NOT NULL DEFAULT 'delivered' CHECK (state = 'delivered'),
    attempts        integer NOT NULL,
    enqueued_at     bigint  NOT NULL,
    next_attempt_at bigint  NOT NULL,
    lease_until     bigint,
    lease_owner     text,
    settled_at      bigint  NOT NULL,
    restamped       boolean NOT NULL,
    reason          text,
    http_status     integer,
    response        text,
    last_error      text,
    original_ts     bigint
);
CREATE INDEX dodo_outbox_delivered_settled ON {dv} (settled_at);
CREATE INDEX dodo_outbox_delivered_event_time ON {dv} (ts);
CREATE INDEX dodo_outbox_delivered_enqueued ON {dv} (enqueued_at);
CREATE TABLE {rq} (
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
CREATE INDEX dodo_outbox_requests_at ON {rq} (at);
CREATE TABLE {mt} (
    meter_id        text PRIMARY KEY,
    event_name      text NOT NULL,
    name            text,
    aggregation     text,
    aggregation_key text,
    filter          text,
    pulled_at       bigint NOT NULL
);
CREATE TABLE {sl} (
    name text PRIMARY KEY,
    tat  bigint NOT NULL DEFAULT 0,
    rate double precision
);
CREATE TABLE {ag} (
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

SCHEMA_VERSION = 1 + len(STEPS)
VERSION_KEY = "schema_version"

_KV = """CREATE TABLE IF NOT EXISTS {kv} (
    key        text PRIMARY KEY,
    value      text NOT NULL,
    updated_at bigint NOT NULL
)"""


def migrate(conn: Any, schema: str, tables: dict[str, str], *, target: int = SCHEMA_VERSION) -> int:
    """Create the schema or bring it to `target` (SCHEMA_VERSION; tests build older ones) in the
    caller's open transaction; returns the version found before (0: none). Serialised across
    processes by an advisory lock on the schema name."""
    conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", ("dodo-outbox:" + schema,))
    conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    conn.execute(_KV.format(**tables))
    found = stored_version(conn, tables)
    if found > SCHEMA_VERSION:
        raise OutboxError(
            f"the outbox was written by a newer dodo-outbox (schema {found}, this one knows "
            f"{SCHEMA_VERSION}); upgrade dodo-outbox"
        )
    if found >= target:
        return found
    if found == 0:
        script, start = (CURRENT, SCHEMA_VERSION) if target == SCHEMA_VERSION else (V1, 1)
        for statement in statements(script.format(**tables)):
            conn.execute(statement)
    else:
        start = found
    for version in range(start, target):
        for statement in statements(STEPS[version].format(**tables)):
            conn.execute(statement)
    conn.execute(
        f"INSERT INTO {tables['kv']} (key, value, updated_at) VALUES (%s, %s, %s) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
        (VERSION_KEY, str(target), to_us(time.time())),
    )
    return found


def stored_version(conn: Any, tables: dict[str, str]) -> int:
    """The schema version recorded in `dodo_outbox_kv` (0: a new schema). Raises OutboxError when the
    row is not a number. An events table with no version row is version 1, the only one there was
    before the row could be missing."""
    row = conn.execute(f"SELECT value FROM {tables['kv']} WHERE key = %s", (VERSION_KEY,)).fetchone()
    if row is None:
        exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (tables["ev"],)).fetchone()
        return 1 if exists[0] else 0
    try:
        return int(row[0])
    except ValueError:
        raise OutboxError(
            f"the outbox's schema version ({tables['kv']} key {VERSION_KEY!r}) is {row[0]!r}, not a number"
        ) from None
