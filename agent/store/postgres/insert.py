"""Enqueue on PostgreSQL: one `INSERT … SELECT … FROM unnest(…) ON CONFLICT DO NOTHING` per call.

The rules are shared with SQLite (agent/store/rules.py): a repeat with the same content, or with only
another producer-given timestamp, is a duplicate; anything else is a conflict and the call stores
nothing. RETURNING names the rows this statement inserted, so the common case (all new) is one round
trip; only when some event_id was already stored are those rows read back and compared.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from agent.errors import EventConflictError
from agent.events import Event
from agent.store.records import InsertResult
from agent.store.rules import dedupe, judge_stored

INSERT_SQL = (
    "INSERT INTO {ev} (event_id, event_name, ts, payload, stamped, source, enqueued_at, next_attempt_at) "
    "SELECT e, n, t, p, s, %s, %s, 0 FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::text[], "
    "%s::boolean[]) AS u(e, n, t, p, s) ON CONFLICT (event_id) DO NOTHING RETURNING event_id"
)
_ARRAYS = "unnest(%s::text[], %s::text[], %s::bigint[], %s::text[], %s::boolean[])"
INSERT_ONE_SQL = INSERT_SQL.replace(
    _ARRAYS, "(VALUES (%s::text, %s::text, %s::bigint, %s::text, %s::boolean))"
)
"""The same statement for one event, with scalar parameters: the per-event path (`enqueue(conn=)`).
psycopg dumps a text array in Python, escaping every quote of the JSON payload with a regex; for one
event that cost more client CPU than the whole rest of the call (bench, postgres group)."""
assert INSERT_ONE_SQL != INSERT_SQL, "INSERT_ONE_SQL must be derived from INSERT_SQL's unnest"
_STORED_SQL = (
    "SELECT event_id, payload, stamped OR original_ts IS NOT NULL FROM {ev} WHERE event_id = ANY(%s)"
)


def insert_on(
    conn: Any, tables: dict[str, str], events: Sequence[Event], source: str, now_us: int
) -> InsertResult:
    """Insert `events` in the open transaction (or savepoint) of `conn`. Raises EventConflictError,
    leaving the caller to roll back, when an event_id is stored (or repeated) with other content."""
    unique, result, conflicts = dedupe(events)
    if conflicts:
        raise EventConflictError([c.event_id for c in conflicts], conflicts)
    kept = events if len(unique) == len(events) else [events[i] for i in unique]
    if len(kept) == 1:
        one = kept[0]
        sql = INSERT_ONE_SQL
        params: tuple[object, ...] = (
            source,
            now_us,
            one.event_id,
            one.event_name,
            one.ts_us,
            one.payload,
            one.stamped,
        )
    else:
        sql = INSERT_SQL
        params = (
            source,
            now_us,
            [e.event_id for e in kept],
            [e.event_name for e in kept],
            [e.ts_us for e in kept],
            [e.payload for e in kept],
            [e.stamped for e in kept],
        )
    inserted = {row[0] for row in conn.execute(sql.format(**tables), params).fetchall()}
    if len(inserted) == len(kept):
        result.new = [e.event_id for e in kept]
        return result
    others = [e.event_id for e in kept if e.event_id not in inserted]
    stored = {
        event_id: (payload, bool(stamped))
        for event_id, payload, stamped in conn.execute(_STORED_SQL.format(**tables), (others,)).fetchall()
    }
    return judge_stored(events, unique, result, conflicts, stored, inserted)


def insert_groups(
    db: Any, groups: Sequence[tuple[Sequence[Event], str]], now_us: int
) -> list[InsertResult | EventConflictError]:
    """Several enqueue calls in one commit, each atomic on its own (a savepoint when there are several)."""
    if len(groups) == 1:  # one call: its transaction is its atomicity (write() rolls a conflict back)
        events, source = groups[0]
        try:
            with db.write() as conn:
                return [insert_on(conn, db.t, events, source, now_us)]
        except EventConflictError as exc:
            return [exc]
    results: list[InsertResult | EventConflictError] = []
    with db.write() as conn:
        for events, source in groups:
            try:
                with conn.transaction():  # a savepoint: a conflict undoes this group only
                    results.append(insert_on(conn, db.t, events, source, now_us))
            except EventConflictError as exc:
                results.append(exc)
    return results
