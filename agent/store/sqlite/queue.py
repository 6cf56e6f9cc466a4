"""The hot paths of the outbox: enqueue, claim, settle. Raw sqlite3, one transaction per call.

Enqueue's SQL and its duplicate/conflict rules live in `agent.store.insert`; this module runs them in
the outbox's own transactions (the autocommit fast path, group commit).

Every state change is one UPDATE guarded by the source state (and, for inflight rows, by the lease
owner), and its row count is returned so the caller can see whether it applied: a stale worker whose
lease expired can never move a row that another worker already settled.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from agent.errors import EventConflictError, OutboxError
from agent.events import Event
from agent.store.records import RESPONSE_EXCERPT_CHARS, Claimed, InsertResult, State
from agent.store.sqlite.connection import StoreBase
from agent.store.sqlite.insert import (
    INSERT_HEAD,
    INSERT_ROW,
    ONE_STATEMENT_ROWS,
    NotAllNew,
    insert_all_new,
    insert_on,
    plain_insert_sql,
    rows_of,
)

__all__ = [
    "CLAIM_SQL",
    "claim",
    "insert_groups",
    "mark_dead",
    "mark_delivered",
    "mark_retry",
    "release_expired",
]

CLAIM_SQL = (
    "SELECT id, event_id, ts, payload, attempts, enqueued_at FROM dodo_outbox_events "
    f"WHERE state = '{State.PENDING}' AND next_attempt_at <= ? ORDER BY ts LIMIT ?"
)


def _insert_autocommit(db: StoreBase, rows: Sequence[tuple[object, ...]]) -> bool:
    """The fast path of every small enqueue: one plain INSERT, outside any explicit transaction.

    SQLite runs such a statement as its own transaction: every row or none (a UNIQUE violation
    aborts the whole statement), committed, and with synchronous=FULL on disk, when it returns.
    One call into SQLite instead of three (BEGIN IMMEDIATE, INSERT, COMMIT) saves CPU, and above
    all GIL hand-offs: a group-commit leader re-takes the GIL after each call, behind every thread
    busy validating. Returns False, having written nothing, when some event_id is already stored
    or repeated (the caller then takes the transaction path, which sorts duplicates from
    conflicts), or on an error that path reports properly (a full disk).
    Raises OutboxError when the file stays locked by another writer.
    """
    size = len(rows)
    sql = plain_insert_sql.get(size)
    if sql is None:
        sql = plain_insert_sql[size] = INSERT_HEAD + ",".join([INSERT_ROW] * size)
    params = rows[0] if size == 1 else [value for row in rows for value in row]
    with db.lock:
        conn = db.conn
        try:
            conn.execute(sql, params)
        except sqlite3.IntegrityError:
            return False
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode == sqlite3.SQLITE_BUSY:  # as write() reports it
                raise OutboxError(
                    f"the outbox {db.path} stayed locked by another writer for "
                    f"{db.options.busy_timeout_ms} ms: {exc}"
                ) from exc
            return False
    return True


def insert_groups(
    db: StoreBase, groups: Sequence[tuple[Sequence[Event], str]], now_us: int
) -> list[InsertResult | EventConflictError]:
    """Store several independent enqueue calls in ONE transaction (group commit).

    A group is one call's events and its source. Each group is atomic on its own (a savepoint):
    a conflicting group stores nothing and gets its EventConflictError in the result list, the
    other groups are stored. Returns after COMMIT.
    Raises OutboxFullError (disk full) or OutboxError for the whole transaction.
    """
    if sum(len(events) for events, _ in groups) <= ONE_STATEMENT_ROWS:
        rows = [row for events, source in groups for row in rows_of(events, source, now_us)]
        if _insert_autocommit(db, rows):
            return [InsertResult([e.event_id for e in events], []) for events, _ in groups]
    if len(groups) == 1:
        # One call alone (the single-thread case): its transaction is its atomicity, no savepoint.
        events, source = groups[0]
        try:
            with db.write() as conn:
                return [insert_on(conn, events, source, now_us)]
        except EventConflictError as exc:  # write() rolled the transaction back
            return [exc]
    try:
        with db.write() as conn:
            return insert_all_new(conn, groups, now_us)
    except NotAllNew:  # write() rolled the attempt back; store group by group instead
        pass
    results: list[InsertResult | EventConflictError] = []
    with db.write() as conn:
        for group, source in groups:
            conn.execute("SAVEPOINT dodo_outbox_group")
            try:
                results.append(insert_on(conn, group, source, now_us))
            except EventConflictError as exc:
                conn.execute("ROLLBACK TO dodo_outbox_group")
                results.append(exc)
            conn.execute("RELEASE dodo_outbox_group")
    return results


def claim(
    db: StoreBase, *, now_us: int, limit: int, max_bytes: int, lease_us: int, owner: str
) -> list[Claimed]:
    """Lease up to `limit` due pending rows, oldest event time first, within `max_bytes` of payload.

    Counts the attempt now, so a crash mid-send still counts it. The rows are `inflight` until
    settled or until `now + lease` passes. event_id is unique in the table, so a claim never holds
    the same event twice.
    """
    with db.write() as conn:
        rows = conn.execute(CLAIM_SQL, (now_us, limit)).fetchall()
        chosen: list[Claimed] = []
        size = 0
        for row_id, event_id, ts, payload, attempts, enqueued in rows:
            # Bytes, not characters: batch_max_bytes bounds the UTF-8 body.
            size += (len(payload) if payload.isascii() else len(payload.encode())) + 1
            if chosen and size > max_bytes:
                break
            chosen.append(Claimed(row_id, event_id, ts, payload, attempts + 1, enqueued))
        if chosen:
            marks = ",".join("?" * len(chosen))
            conn.execute(
                f"UPDATE dodo_outbox_events SET state = '{State.INFLIGHT}', attempts = attempts + 1, "
                f"lease_until = ?, lease_owner = ? WHERE state = '{State.PENDING}' AND id IN ({marks})",
                (now_us + lease_us, owner, *[c.id for c in chosen]),
            )
    return chosen


def _settle(db: StoreBase, sql: str, params: Sequence[object], ids: Sequence[int], owner: str) -> int:
    if not ids:
        return 0
    with db.write() as conn:
        return _guarded(conn, sql, params, ids, owner)


def _guarded(conn: Any, sql: str, params: Sequence[object], ids: Sequence[int], owner: str) -> int:
    """Run the UPDATE `sql` on the rows of `ids` that `owner` still leases, in chunks; rows changed."""
    changed = 0
    for start in range(0, len(ids), 900):
        chunk = ids[start : start + 900]
        marks = ",".join("?" * len(chunk))
        cursor = conn.execute(
            sql + f" WHERE state = '{State.INFLIGHT}' AND lease_owner = ? AND id IN ({marks})",
            (*params, owner, *chunk),
        )
        changed += cursor.rowcount
    return changed


def mark_delivered(
    db: StoreBase, ids: Sequence[int], *, owner: str, now_us: int, restamped: Sequence[int] = ()
) -> int:
    """inflight → delivered for rows this owner still leases, and the restamped ones flagged, in one
    transaction (a reader never sees them delivered but not yet flagged; a stale owner flags none).
    Returns how many moved."""
    if not ids:
        return 0
    with db.write() as conn:
        _guarded(conn, "UPDATE dodo_outbox_events SET restamped = 1", (), restamped, owner)
        return _guarded(
            conn,
            f"UPDATE dodo_outbox_events SET state = '{State.DELIVERED}', settled_at = ?, "
            "lease_until = NULL, lease_owner = NULL, last_error = NULL",
            (now_us,),
            ids,
            owner,
        )


def mark_retry(
    db: StoreBase, ids: Sequence[int], *, owner: str, next_attempt_us: int, error: str, refund: bool = False
) -> int:
    """inflight → pending, due again at `next_attempt_us`. `refund` gives the attempt back.

    Refunds are for outcomes that say nothing about the events (the key was refused, shutdown).
    """
    return _settle(
        db,
        f"UPDATE dodo_outbox_events SET state = '{State.PENDING}', next_attempt_at = ?, lease_until = NULL, "
        f"lease_owner = NULL, last_error = ?, attempts = attempts - {1 if refund else 0}",
        (next_attempt_us, error[:RESPONSE_EXCERPT_CHARS]),
        ids,
        owner,
    )


def mark_dead(
    db: StoreBase,
    ids: Sequence[int],
    *,
    owner: str,
    now_us: int,
    reason: str,
    http_status: int | None,
    response: str,
) -> int:
    """inflight → dead with its reason, HTTP status and a bounded excerpt of the response."""
    return _settle(
        db,
        f"UPDATE dodo_outbox_events SET state = '{State.DEAD}', settled_at = ?, reason = ?, http_status = ?, "
        "response = ?, last_error = ?, lease_until = NULL, lease_owner = NULL",
        (now_us, reason, http_status, response[:RESPONSE_EXCERPT_CHARS], reason),
        ids,
        owner,
    )


def release_expired(db: StoreBase, now_us: int) -> int:
    """inflight rows whose lease passed (their worker died) → pending, due now."""
    with db.write() as conn:
        cursor = conn.execute(
            f"UPDATE dodo_outbox_events SET state = '{State.PENDING}', next_attempt_at = 0, "
            "lease_until = NULL, lease_owner = NULL, "
            "last_error = 'lease expired: the worker stopped mid-send' "
            f"WHERE state = '{State.INFLIGHT}' AND lease_until < ?",
            (now_us,),
        )
        return cursor.rowcount


def backlog(db: StoreBase) -> int:
    """Rows not yet delivered or dead (pending + inflight): what capacity limits count."""
    with db.read() as conn:
        row = conn.execute(
            f"SELECT (SELECT count(*) FROM dodo_outbox_events WHERE state = '{State.PENDING}') + "
            f"(SELECT count(*) FROM dodo_outbox_events WHERE state = '{State.INFLIGHT}')"
        ).fetchone()
        return int(row[0])


def next_due_us(db: StoreBase) -> int | None:
    """When the earliest pending row is due (microseconds), or None when nothing is pending."""
    with db.read() as conn:
        row = conn.execute(
            f"SELECT min(next_attempt_at) FROM dodo_outbox_events WHERE state = '{State.PENDING}'"
        ).fetchone()
        return None if row[0] is None else int(row[0])
