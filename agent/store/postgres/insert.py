"""Enqueue on PostgreSQL: one `INSERT … SELECT … FROM unnest(…) ON CONFLICT DO NOTHING` per call.

The rules are shared with SQLite (agent/store/rules.py): a repeat with the same content, or with only
another producer-given timestamp, is a duplicate; anything else is a conflict and the call stores
nothing. RETURNING names the rows this statement inserted, so the common case (all new) is one round
trip; only when some event_id was already stored are those rows read back and compared.

An event_id is stored in the hot table or, once delivered, in `dodo_outbox_delivered` (schema v2):
the INSERT skips ids the delivered table holds (NOT EXISTS) and ids the hot table holds (ON CONFLICT),
and the read-back looks in both, so a repeat of a delivered event is a duplicate (or a conflict) as
before.

The race this leaves: an enqueue whose statement starts while `mark_delivered` is moving the same
event_id (deleted from the hot table, inserted into the delivered table, not yet committed) sees it
in neither table once the move commits, and stores it again as a new pending row. It is safe: the
repeat is sent again and Dodo dedups by event_id (docs/dodo-ingest-contract.md: an event_id it
already has, re-sent in a later request, is ignored, not counted twice; the two copies never share a
request, which Dodo would refuse, since the first was delivered before the second was stored), and
the move of that second copy keeps the first (ON CONFLICT DO NOTHING in queue.py). What it costs is
one extra event sent, and a conflicting repeat in that window is reported as new instead of refused;
Dodo still bills the first.
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
    "%s::boolean[]) AS u(e, n, t, p, s) WHERE NOT EXISTS (SELECT 1 FROM {dv} d WHERE d.event_id = u.e) "
    "ON CONFLICT (event_id) DO NOTHING RETURNING event_id"
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
    "SELECT event_id, payload, stamped OR original_ts IS NOT NULL FROM {ev} WHERE event_id = ANY(%s) "
    "UNION ALL "
    "SELECT event_id, payload, stamped OR original_ts IS NOT NULL FROM {dv} WHERE event_id = ANY(%s)"
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
        for event_id, payload, stamped in conn.execute(
            _STORED_SQL.format(**tables), (others, others)
        ).fetchall()
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
