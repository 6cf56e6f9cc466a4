"""The PostgreSQL schema's history: version 1 as it shipped, and each forward step since.

Never edit a released entry: outboxes in the field were built by exactly this text. A new version adds
a step here (`STEPS[n]` takes schema n to n + 1) and changes `schema.CURRENT`, the DDL of a fresh
schema, to match; tests/store/test_pg_migrations.py proves, for every older version, that the steps
from it produce exactly the catalog of a fresh schema (tables, columns, indexes, constraints,
reloptions).

Placeholders: {ns} the schema, {ev} {dv} {rq} {kv} {mt} the schema-qualified tables.
"""

from __future__ import annotations

from collections.abc import Mapping

V1 = """
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

# v2: delivered rows leave the hot table for dodo_outbox_delivered (the hot table then holds only
# undelivered rows, so vacuum keeps up), and the hot table's autovacuum is tuned for a queue.
_V1_TO_V2 = """
DROP INDEX IF EXISTS {ns}.dodo_outbox_delivered;
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
WITH moved AS (DELETE FROM {ev} WHERE state = 'delivered' RETURNING *)
INSERT INTO {dv} (id, event_id, event_name, ts, payload, stamped, source, state, attempts, enqueued_at,
    next_attempt_at, lease_until, lease_owner, settled_at, restamped, reason, http_status, response,
    last_error, original_ts)
SELECT id, event_id, event_name, ts, payload, stamped, source, state, attempts, enqueued_at,
    next_attempt_at, NULL, NULL, coalesce(settled_at, enqueued_at), restamped, reason, http_status,
    response, last_error, original_ts FROM moved;
ALTER TABLE {ev} SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_cost_delay = 0, autovacuum_analyze_scale_factor = 0,
    autovacuum_analyze_threshold = 1000);
"""

# The fleet's shared state (issue 14): the slots every agent on the outbox takes its requests and the
# pause's probe from (GCRA: `tat`, the theoretical arrival time, and `rate`, the budget slowed down
# after a 429), and the agents' registry their heartbeats keep (`status` lists it). Times are
# microseconds on the database clock.
_V2_TO_V3 = """
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

STEPS: Mapping[int, str] = {1: _V1_TO_V2, 2: _V2_TO_V3}
"""`STEPS[n]`: the DDL taking schema version n to n + 1, run in the version bump's transaction."""


def statements(script: str) -> list[str]:
    """The statements of a DDL script (none of ours has a `;` inside a literal)."""
    return [part.strip() for part in script.split(";") if part.strip()]
