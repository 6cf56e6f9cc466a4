"""Retention SQL: pruning delivered rows and the request log in bounded chunks, vacuum, file stats.

Each prune runs `chunk` rows per transaction (a short write lock, so intake never waits long) and at
most `max_chunks` transactions per call. Dead rows are never pruned here: only `dlq.purge_dead` deletes
them.
"""

from __future__ import annotations

from collections.abc import Sequence

from agent.store.base import CHUNK_ROWS, VACUUM_PAGES
from agent.store.records import FileStats, State
from agent.store.sqlite.connection import StoreBase

__all__ = ["delete_chunks", "file_stats", "incremental_vacuum", "prune_delivered", "prune_requests"]


def prune_delivered(
    db: StoreBase, settled_before_us: int, *, chunk: int = CHUNK_ROWS, max_chunks: int = 200
) -> int:
    """Delete delivered rows settled before the cutoff, `chunk` per transaction, at most
    `max_chunks` transactions per call (the next run continues). Returns rows deleted."""
    return delete_chunks(
        db,
        f"DELETE FROM dodo_outbox_events WHERE state = '{State.DELIVERED}' AND id IN (SELECT id FROM "
        f"dodo_outbox_events WHERE state = '{State.DELIVERED}' AND settled_at < ? LIMIT ?)",
        [settled_before_us],
        chunk,
        max_chunks,
    )


def prune_requests(db: StoreBase, before_us: int, *, chunk: int = CHUNK_ROWS, max_chunks: int = 200) -> int:
    """Delete request-log rows older than the cutoff, in chunks like `prune_delivered`."""
    return delete_chunks(
        db,
        "DELETE FROM dodo_outbox_requests WHERE id IN (SELECT id FROM dodo_outbox_requests "
        "WHERE at < ? LIMIT ?)",
        [before_us],
        chunk,
        max_chunks,
    )


def delete_chunks(db: StoreBase, sql: str, params: Sequence[object], chunk: int, max_chunks: int = 0) -> int:
    deleted = done = 0
    while not max_chunks or done < max_chunks:
        with db.write() as conn:
            moved = conn.execute(sql, (*params, chunk)).rowcount
        deleted += moved
        done += 1
        if moved < chunk:
            break
    return deleted


def file_stats(db: StoreBase) -> FileStats:
    """Page size, page count and free pages of the outbox file."""
    with db.read() as conn:
        size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        count = int(conn.execute("PRAGMA page_count").fetchone()[0])
        free = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
    return FileStats(size, count, free)


def incremental_vacuum(db: StoreBase, *, max_pages: int = 100_000, step: int = VACUUM_PAGES) -> int:
    """Hand free pages back to the file system, `step` pages per transaction; returns pages freed.

    Works on files created with auto_vacuum = INCREMENTAL (every outbox this version creates);
    on older files it frees nothing and returns 0.
    """
    freed = 0
    while freed < max_pages:
        before = file_stats(db).freelist_count
        if before == 0:
            break
        with db.write() as conn:
            # Each result row is one freed page: the pragma only runs to the end when fetched.
            conn.execute(f"PRAGMA incremental_vacuum({int(min(step, max_pages - freed))})").fetchall()
        gone = before - file_stats(db).freelist_count
        if gone <= 0:
            break
        freed += gone
    return freed
