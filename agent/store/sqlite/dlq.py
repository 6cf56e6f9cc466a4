"""Dead-letter queue SQL: listing, counting, replay (with restamp), purge, the top reasons.

Dead rows leave the dead state in exactly two ways: `replay` (dead → pending) and `purge_dead` (the
only DELETE of a dead row). Both are guarded by `state = 'dead'`, work in chunks of one transaction
each (so the agent's writers interleave and a progress bar can advance) and return how many rows
moved, so a caller never reports work that did not happen.

Restamp on replay (a decision): an event past Dodo's 1-hour window gets its timestamp rewritten to
the replay time and is flagged `restamped`; its original event time is kept in `original_ts` (schema
V2: durable, where `last_error` was cleared on delivery). `stamped` keeps what it was at enqueue; a
row with `original_ts` counts as agent-stamped when an event with its id arrives again, so the
original event enqueued again is a duplicate, not a conflict. We rewrite rather than store a payload
without a timestamp because the stored payload stays canonical (timestamp last) for the delivery
engine, which splices stored payloads and cuts timestamps by suffix; the effect for Dodo is the same
as an omitted timestamp (server time), give or take the time the event waits in the queue.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime

from agent.store.base import CHUNK_ROWS, REPLAY_CHUNK
from agent.store.records import DeadFilter, EventRecord, ReplayChunk, State
from agent.store.rules import ROW_COLUMNS, record_from_row, restamped_payload
from agent.store.sqlite.connection import StoreBase
from agent.store.sqlite.retention import delete_chunks
from agent.timestamps import format_timestamp, from_us


def dead_where(wanted: DeadFilter) -> tuple[str, list[object]]:
    """The SQL condition selecting `wanted` (always including `state = 'dead'`) and its parameters."""
    clauses: list[str] = [f"state = '{State.DEAD}'"]
    params: list[object] = []
    if wanted.event_ids:
        clauses.append(f"event_id IN ({','.join('?' * len(wanted.event_ids))})")
        params.extend(wanted.event_ids)
    elif wanted.reason is not None:
        clauses.append("reason = ?")
        params.append(wanted.reason)
    elif not wanted.all:
        clauses.append("0")
    if wanted.since_us is not None:
        clauses.append("settled_at >= ?")
        params.append(wanted.since_us)
    return " AND ".join(clauses), params


def _replay_rows(
    conn: sqlite3.Connection,
    rows: Sequence[tuple[int, int, str, str | None, int | None]],
    now_us: int,
    restamp_before_us: int | None,
) -> ReplayChunk:
    plain: list[tuple[object, ...]] = []
    stamped: list[tuple[object, ...]] = []
    for row_id, ts, payload, reason, status in rows:
        was = f"replayed from the dead-letter queue; was: {reason or 'unknown'}"
        was += f" (HTTP {status})" if status is not None else ""
        if restamp_before_us is not None and ts < restamp_before_us:
            try:
                new_payload = restamped_payload(payload, now_us)
            except ValueError:
                plain.append((was, row_id))  # not canonical: replay as stored, Dodo decides
                continue
            original = format_timestamp(datetime.fromtimestamp(from_us(ts), UTC))
            note = f"{was}; restamped, original timestamp {original}"
            stamped.append((new_payload, now_us, note, row_id))
        else:
            plain.append((was, row_id))
    reset = (
        f"state = '{State.PENDING}', attempts = 0, next_attempt_at = 0, lease_until = NULL, "
        "lease_owner = NULL, "
        "settled_at = NULL, reason = NULL, http_status = NULL, response = NULL"
    )
    before = conn.total_changes
    conn.executemany(
        f"UPDATE dodo_outbox_events SET {reset}, last_error = ? WHERE state = '{State.DEAD}' AND id = ?",
        plain,
    )
    middle = conn.total_changes
    conn.executemany(
        # original_ts: the first replay's original survives a second replay (SET reads the old ts).
        f"UPDATE dodo_outbox_events SET {reset}, original_ts = coalesce(original_ts, ts), payload = ?, "
        f"ts = ?, restamped = 1, last_error = ? WHERE state = '{State.DEAD}' AND id = ?",
        stamped,
    )
    return ReplayChunk(conn.total_changes - before, conn.total_changes - middle)


def dead_rows(db: StoreBase, where: DeadFilter, *, limit: int = 100, after_id: int = 0) -> list[EventRecord]:
    """Up to `limit` dead rows matching `where` with id > `after_id`, oldest first (keyset paging:
    pass the last row's id to get the next page)."""
    condition, params = dead_where(where)
    with db.read() as conn:
        rows = conn.execute(
            f"SELECT {ROW_COLUMNS} FROM dodo_outbox_events WHERE {condition} AND id > ? ORDER BY id LIMIT ?",
            (*params, after_id, limit),
        ).fetchall()
    return [record_from_row(row) for row in rows]


def iter_dead(db: StoreBase, where: DeadFilter, chunk: int = 1000) -> Iterator[EventRecord]:
    """Every dead row matching `where`, oldest first, read a page at a time (for export)."""
    after = 0
    while True:
        page = dead_rows(db, where, limit=chunk, after_id=after)
        yield from page
        if len(page) < chunk:
            return
        after = page[-1].id


def count_dead(db: StoreBase, where: DeadFilter, older_than_us: int | None = None) -> int:
    """How many dead rows match (and, with `older_than_us`, died before it): dry runs and totals."""
    condition, params = dead_where(where)
    if older_than_us is not None:
        condition += " AND settled_at < ?"
        params.append(older_than_us)
    with db.read() as conn:
        row = conn.execute(f"SELECT count(*) FROM dodo_outbox_events WHERE {condition}", params)
        return int(row.fetchone()[0])


def count_late(db: StoreBase, where: DeadFilter, ts_before_us: int) -> int:
    """How many matching dead rows have an event time before `ts_before_us` (would be restamped)."""
    condition, params = dead_where(where)
    with db.read() as conn:
        row = conn.execute(
            f"SELECT count(*) FROM dodo_outbox_events WHERE {condition} AND ts < ?",
            (*params, ts_before_us),
        )
        return int(row.fetchone()[0])


def replay(
    db: StoreBase,
    where: DeadFilter,
    *,
    now_us: int,
    restamp_before_us: int | None = None,
    chunk: int = REPLAY_CHUNK,
) -> Iterator[ReplayChunk]:
    """Move matching dead rows back to pending, due now, attempts reset; one transaction per chunk.

    With `restamp_before_us`, rows whose event time is before it get the replay time as their
    timestamp (see the module docstring). Yields one ReplayChunk per committed chunk; stop
    iterating to stop replaying (committed chunks stay replayed).
    """
    condition, params = dead_where(where)
    after = 0
    while True:
        with db.write() as conn:
            rows = conn.execute(
                f"SELECT id, ts, payload, reason, http_status FROM dodo_outbox_events "
                f"WHERE {condition} AND id > ? ORDER BY id LIMIT ?",
                (*params, after, chunk),
            ).fetchall()
            if not rows:
                return
            after = rows[-1][0]
            step = _replay_rows(conn, rows, now_us, restamp_before_us)
        yield step
        if len(rows) < chunk:
            return


def purge_dead(
    db: StoreBase, older_than_us: int, *, reason: str | None = None, chunk: int = CHUNK_ROWS
) -> int:
    """Delete dead rows that died before `older_than_us` (optionally of one reason only).

    The only DELETE of dead rows. Returns how many were deleted.
    """
    extra, params = ("AND reason = ? ", [reason]) if reason is not None else ("", [])
    return delete_chunks(
        db,
        f"DELETE FROM dodo_outbox_events WHERE state = '{State.DEAD}' AND id IN (SELECT id FROM "
        f"dodo_outbox_events WHERE state = '{State.DEAD}' AND settled_at < ? " + extra + "LIMIT ?)",
        [older_than_us, *params],
        chunk,
    )


def top_dead_reasons(db: StoreBase, limit: int = 5) -> list[tuple[str, int]]:
    """The commonest dead-letter reasons, most rows first: [(reason, rows), ...]."""
    with db.read() as conn:
        rows = conn.execute(
            "SELECT coalesce(reason, 'unknown'), count(*) FROM dodo_outbox_events "
            f"WHERE state = '{State.DEAD}' GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT ?",
            (limit,),
        ).fetchall()
    return [(str(reason), int(n)) for reason, n in rows]
