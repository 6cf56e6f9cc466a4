"""Retention and clock repair on PostgreSQL: bounded deletes, table sizes, stored instants moved back.

Delivered rows are in `dodo_outbox_delivered` (schema v2), so pruning them never touches the hot table.

Free space is PostgreSQL's to manage (autovacuum, tuned on the events table for a queue), so
`incremental_vacuum` has nothing to do here and returns 0; `file_stats` reports the outbox tables'
size in blocks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from agent.store.base import CHUNK_ROWS
from agent.store.postgres.queue import DB_NOW_US
from agent.store.records import FileStats, State


def delete_chunks(db: Any, sql: str, params: Sequence[object], chunk: int, max_chunks: int = 0) -> int:
    deleted = done = 0
    while not max_chunks or done < max_chunks:
        with db.write() as conn:
            moved = int(conn.execute(db.q(sql), (*params, chunk)).rowcount)
        deleted += moved
        done += 1
        if moved < chunk:
            break
    return deleted


def prune_delivered(
    db: Any, settled_before_us: int, *, chunk: int = CHUNK_ROWS, max_chunks: int = 200
) -> int:
    return delete_chunks(
        db,
        "DELETE FROM {dv} WHERE id IN (SELECT id FROM {dv} WHERE settled_at < %s LIMIT %s)",
        [settled_before_us],
        chunk,
        max_chunks,
    )


def prune_requests(db: Any, before_us: int, *, chunk: int = CHUNK_ROWS, max_chunks: int = 200) -> int:
    return delete_chunks(
        db,
        "DELETE FROM {rq} WHERE id IN (SELECT id FROM {rq} WHERE at < %s LIMIT %s)",
        [before_us],
        chunk,
        max_chunks,
    )


def file_stats(db: Any) -> FileStats:
    with db.read() as conn:
        size, total = conn.execute(
            db.q(
                "SELECT current_setting('block_size')::bigint, "
                "coalesce(sum(pg_total_relation_size(c.oid)), 0) "
                "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = %s AND c.relkind = 'r'"
            ),
            (db.schema,),
        ).fetchone()
    return FileStats(int(size), int(total) // int(size), 0)


def shift_back(db: Any, *, now_us: int, step_us: int) -> int:
    """Retry times written by a host whose clock then stepped back by `step_us`, brought closer (never
    before `now_us`). Leases are on the database clock, which the host's step did not move: untouched."""
    with db.write() as conn:
        moved = conn.execute(
            db.q(
                "UPDATE {ev} SET next_attempt_at = greatest(%s, next_attempt_at - %s) "
                f"WHERE state = '{State.PENDING}' AND next_attempt_at > %s"
            ),
            (now_us, step_us, now_us),
        ).rowcount
    return int(moved)


def cap_future(db: Any, *, now_us: int, max_delay_us: int, lease_us: int) -> int:
    """Retries due beyond `now_us + max_delay_us` become due now; leases running beyond the database
    clock's now + `lease_us` end then (leases are on the database clock, see queue.py)."""
    with db.write() as conn:
        moved = conn.execute(
            db.q(
                f"UPDATE {{ev}} SET next_attempt_at = %s "
                f"WHERE state = '{State.PENDING}' AND next_attempt_at > %s"
            ),
            (now_us, now_us + max_delay_us),
        ).rowcount
        moved += conn.execute(
            db.q(
                f"UPDATE {{ev}} SET lease_until = {DB_NOW_US} + %s "
                f"WHERE state = '{State.INFLIGHT}' AND lease_until > {DB_NOW_US} + %s"
            ),
            (lease_us, lease_us),
        ).rowcount
    return int(moved)
