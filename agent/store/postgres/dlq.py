"""The dead-letter queue on PostgreSQL: the same rules as SQLite's (agent/store/sqlite/dlq.py).

Dead rows leave the dead state only by `replay` (dead → pending, one committed chunk per step) and
`purge_dead` (the only DELETE of a dead row); both are guarded by `state = 'dead'`.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from agent.store.base import CHUNK_ROWS, REPLAY_CHUNK
from agent.store.postgres.maintenance import delete_chunks
from agent.store.records import DeadFilter, EventRecord, ReplayChunk, State
from agent.store.rules import ROW_COLUMNS, record_from_row, restamped_payload
from agent.timestamps import format_timestamp, from_us


def dead_where(wanted: DeadFilter) -> tuple[str, list[object]]:
    """The condition selecting `wanted` (always `state = 'dead'`) and its parameters."""
    clauses: list[str] = [f"state = '{State.DEAD}'"]
    params: list[object] = []
    if wanted.event_ids:
        clauses.append("event_id = ANY(%s)")
        params.append(list(wanted.event_ids))
    elif wanted.reason is not None:
        clauses.append("reason = %s")
        params.append(wanted.reason)
    elif not wanted.all:
        clauses.append("false")
    if wanted.since_us is not None:
        clauses.append("settled_at >= %s")
        params.append(wanted.since_us)
    return " AND ".join(clauses), params


def dead_rows(db: Any, where: DeadFilter, *, limit: int = 100, after_id: int = 0) -> list[EventRecord]:
    condition, params = dead_where(where)
    with db.read() as conn:
        rows = conn.execute(
            db.q(f"SELECT {ROW_COLUMNS} FROM {{ev}} WHERE {condition} AND id > %s ORDER BY id LIMIT %s"),
            (*params, after_id, limit),
        ).fetchall()
    return [record_from_row(row) for row in rows]


def iter_dead(db: Any, where: DeadFilter, chunk: int = 1000) -> Iterator[EventRecord]:
    after = 0
    while True:
        page = dead_rows(db, where, limit=chunk, after_id=after)
        yield from page
        if len(page) < chunk:
            return
        after = page[-1].id


def _count(db: Any, condition: str, params: list[object]) -> int:
    with db.read() as conn:
        return int(conn.execute(db.q(f"SELECT count(*) FROM {{ev}} WHERE {condition}"), params).fetchone()[0])


def count_dead(db: Any, where: DeadFilter, older_than_us: int | None = None) -> int:
    condition, params = dead_where(where)
    if older_than_us is not None:
        condition += " AND settled_at < %s"
        params.append(older_than_us)
    return _count(db, condition, params)


def count_late(db: Any, where: DeadFilter, ts_before_us: int) -> int:
    condition, params = dead_where(where)
    return _count(db, condition + " AND ts < %s", [*params, ts_before_us])


_RESET = (
    f"state = '{State.PENDING}', attempts = 0, next_attempt_at = 0, lease_until = NULL, lease_owner = NULL, "
    "settled_at = NULL, reason = NULL, http_status = NULL, response = NULL"
)


def replay(
    db: Any,
    where: DeadFilter,
    *,
    now_us: int,
    restamp_before_us: int | None = None,
    chunk: int = REPLAY_CHUNK,
) -> Iterator[ReplayChunk]:
    """dead → pending, due now, attempts reset; one transaction per chunk (see SQLite's replay)."""
    condition, params = dead_where(where)
    after = 0
    while True:
        with db.write() as conn:
            rows = conn.execute(
                db.q(
                    f"SELECT id, ts, payload, reason, http_status FROM {{ev}} WHERE {condition} AND id > %s "
                    "ORDER BY id LIMIT %s FOR UPDATE"
                ),
                (*params, after, chunk),
            ).fetchall()
            if not rows:
                return
            after = rows[-1][0]
            moved = restamped = 0
            for row_id, ts, payload, reason, status in rows:
                was = f"replayed from the dead-letter queue; was: {reason or 'unknown'}"
                was += f" (HTTP {status})" if status is not None else ""
                new_payload = None
                if restamp_before_us is not None and ts < restamp_before_us:
                    try:
                        new_payload = restamped_payload(payload, now_us)
                    except ValueError:
                        new_payload = None  # not canonical: replay as stored, Dodo decides
                if new_payload is None:
                    moved += conn.execute(
                        db.q(f"UPDATE {{ev}} SET {_RESET}, last_error = %s WHERE state = 'dead' AND id = %s"),
                        (was, row_id),
                    ).rowcount
                    continue
                original = format_timestamp(datetime.fromtimestamp(from_us(ts), UTC))
                changed = conn.execute(
                    db.q(
                        f"UPDATE {{ev}} SET {_RESET}, original_ts = coalesce(original_ts, ts), payload = %s, "
                        "ts = %s, restamped = true, last_error = %s WHERE state = 'dead' AND id = %s"
                    ),
                    (new_payload, now_us, f"{was}; restamped, original timestamp {original}", row_id),
                ).rowcount
                moved += changed
                restamped += changed
        yield ReplayChunk(moved, restamped)
        if len(rows) < chunk:
            return


def purge_dead(db: Any, older_than_us: int, *, reason: str | None = None, chunk: int = CHUNK_ROWS) -> int:
    extra, params = ("AND reason = %s ", [reason]) if reason is not None else ("", [])
    return delete_chunks(
        db,
        f"DELETE FROM {{ev}} WHERE state = '{State.DEAD}' AND id IN (SELECT id FROM {{ev}} "
        f"WHERE state = '{State.DEAD}' AND settled_at < %s " + extra + "LIMIT %s)",
        [older_than_us, *params],
        chunk,
    )


def top_dead_reasons(db: Any, limit: int = 5) -> list[tuple[str, int]]:
    with db.read() as conn:
        rows = conn.execute(
            db.q(
                f"SELECT coalesce(reason, 'unknown'), count(*) FROM {{ev}} WHERE state = '{State.DEAD}' "
                "GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT %s"
            ),
            (limit,),
        ).fetchall()
    return [(str(reason), int(n)) for reason, n in rows]
