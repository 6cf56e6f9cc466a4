"""The queue on PostgreSQL: claim with FOR UPDATE SKIP LOCKED, the guarded transitions, backlog.

The claim locks due pending rows in event-time order inside a CTE (so the planner runs the locking
scan exactly once), keeps the prefix that fits the byte budget (a running sum; the first row always),
and leases those in the same statement. Concurrent claimers skip each other's locked rows, so two
agents never hold the same row. Every settle is guarded by `state = 'inflight'` and the lease owner
(a claim token: the worker passes one per claim).

Leases are timed by the database clock, never a host's: `claim` sets `lease_until` to the server's
`clock_timestamp()` (as microseconds since the epoch, like every stored instant) plus `lease_us`, and
`release_expired` compares with that same clock; the `now_us` they are given does not touch leases.
Agents on hosts whose clocks disagree (or one that stepped) therefore agree on when a lease ends: a
host hours ahead cannot release leases that are still running, one hours behind cannot keep a dead
worker's rows. The due check (`next_attempt_at <= now_us`) keeps the caller's clock: `next_attempt_at`
is written by callers (a retry's backoff, Retry-After, replay's "now"), so it is compared with the
clock that wrote it; a skewed host sends its retries early or late by its skew, never loses them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from agent.store.records import RESPONSE_EXCERPT_CHARS, Claimed, State

DB_NOW_US = "(extract(epoch FROM clock_timestamp()) * 1000000)::bigint"
"""The database clock as microseconds since the epoch: what leases are timed by."""

CLAIM_SQL = (
    "WITH c AS (SELECT id, ts, octet_length(payload) + 1 AS n FROM {ev} "
    f"WHERE state = '{State.PENDING}' AND next_attempt_at <= %(now)s ORDER BY ts, id LIMIT %(limit)s "
    "FOR UPDATE SKIP LOCKED), "
    "s AS (SELECT id, sum(n) OVER (ORDER BY ts, id) AS run, "
    "row_number() OVER (ORDER BY ts, id) AS rn FROM c) "
    f"UPDATE {{ev}} e SET state = '{State.INFLIGHT}', attempts = e.attempts + 1, "
    f"lease_until = {DB_NOW_US} + %(lease)s, lease_owner = %(owner)s FROM s "
    "WHERE e.id = s.id AND (s.rn = 1 OR s.run <= %(max_bytes)s) "
    "RETURNING e.id, e.event_id, e.ts, e.payload, e.attempts, e.enqueued_at"
)
_GUARD = f" WHERE state = '{State.INFLIGHT}' AND lease_owner = %s AND id = ANY(%s)"


def claim(db: Any, *, now_us: int, limit: int, max_bytes: int, lease_us: int, owner: str) -> list[Claimed]:
    """Lease up to `limit` rows due by `now_us`, oldest event time first, within `max_bytes`, until the
    database clock passes its now + `lease_us`."""
    params = {
        "now": now_us,
        "limit": limit,
        "lease": lease_us,
        "owner": owner,
        "max_bytes": max_bytes,
    }
    with db.write() as conn:
        rows = conn.execute(db.q(CLAIM_SQL), params).fetchall()
    rows.sort(key=lambda r: (r[2], r[0]))
    return [Claimed(int(i), e, int(t), p, int(a), int(q)) for i, e, t, p, a, q in rows]


def _settle(db: Any, sql: str, params: Sequence[object], ids: Sequence[int], owner: str) -> int:
    if not ids:
        return 0
    with db.write() as conn:
        return int(conn.execute(db.q(sql) + _GUARD, (*params, owner, list(ids))).rowcount)


MOVE_COLUMNS = (
    "id, event_id, event_name, ts, payload, stamped, source, state, attempts, enqueued_at, "
    "next_attempt_at, lease_until, lease_owner, settled_at, restamped, reason, http_status, response, "
    "last_error, original_ts"
)
# One statement: the guarded DELETE from the hot table feeds the INSERT into the delivered table, and
# the count is of rows the guard let go. ON CONFLICT DO NOTHING covers the one race the move leaves
# (see insert.py): an event_id re-enqueued while its first row was being moved exists twice for a
# moment; the second copy is sent (Dodo ignores it: it dedups by event_id) and is dropped here.
MOVE_SQL = (
    f"WITH moved AS (DELETE FROM {{ev}} WHERE state = '{State.INFLIGHT}' AND lease_owner = %(owner)s "
    "AND id = ANY(%(ids)s) RETURNING *), "
    f"kept AS (INSERT INTO {{dv}} ({MOVE_COLUMNS}) SELECT id, event_id, event_name, ts, payload, stamped, "
    f"source, '{State.DELIVERED}', attempts, enqueued_at, next_attempt_at, NULL, NULL, %(now)s, "
    "restamped OR id = ANY(%(restamped)s), reason, http_status, response, NULL, original_ts FROM moved "
    "ON CONFLICT DO NOTHING) "
    "SELECT count(*) FROM moved"
)


def mark_delivered(
    db: Any, ids: Sequence[int], *, owner: str, now_us: int, restamped: Sequence[int] = ()
) -> int:
    """inflight → delivered: the rows `owner` still leases move out of the hot table, in one statement."""
    if not ids:
        return 0
    params = {"owner": owner, "ids": list(ids), "now": now_us, "restamped": list(restamped)}
    with db.write() as conn:
        return int(conn.execute(db.q(MOVE_SQL), params).fetchone()[0])


def mark_retry(
    db: Any, ids: Sequence[int], *, owner: str, next_attempt_us: int, error: str, refund: bool = False
) -> int:
    return _settle(
        db,
        f"UPDATE {{ev}} SET state = '{State.PENDING}', next_attempt_at = %s, lease_until = NULL, "
        f"lease_owner = NULL, last_error = %s, attempts = attempts - {1 if refund else 0}",
        (next_attempt_us, error[:RESPONSE_EXCERPT_CHARS]),
        ids,
        owner,
    )


def mark_dead(
    db: Any,
    ids: Sequence[int],
    *,
    owner: str,
    now_us: int,
    reason: str,
    http_status: int | None,
    response: str,
) -> int:
    return _settle(
        db,
        f"UPDATE {{ev}} SET state = '{State.DEAD}', settled_at = %s, reason = %s, http_status = %s, "
        "response = %s, last_error = %s, lease_until = NULL, lease_owner = NULL",
        (now_us, reason, http_status, response[:RESPONSE_EXCERPT_CHARS], reason),
        ids,
        owner,
    )


def release_expired(db: Any, now_us: int) -> int:
    """inflight rows whose lease passed by the database clock → pending, due now. `now_us` (the
    caller's clock) is not used: see the module docstring."""
    with db.write() as conn:
        return int(
            conn.execute(
                db.q(
                    f"UPDATE {{ev}} SET state = '{State.PENDING}', next_attempt_at = 0, lease_until = NULL, "
                    "lease_owner = NULL, last_error = 'lease expired: the worker stopped mid-send' "
                    f"WHERE state = '{State.INFLIGHT}' AND lease_until < {DB_NOW_US}"
                )
            ).rowcount
        )


def backlog(db: Any) -> int:
    with db.read() as conn:
        row = conn.execute(
            db.q(f"SELECT count(*) FROM {{ev}} WHERE state IN ('{State.PENDING}', '{State.INFLIGHT}')")
        ).fetchone()
    return int(row[0])


def next_due_us(db: Any) -> int | None:
    with db.read() as conn:
        row = conn.execute(
            db.q(f"SELECT min(next_attempt_at) FROM {{ev}} WHERE state = '{State.PENDING}'")
        ).fetchone()
    return None if row[0] is None else int(row[0])
