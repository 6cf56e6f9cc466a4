"""Meter SQL: the cached meters, recent events by name (for `meters check`), delivered samples (`verify`).

The meters cache is replaced whole by each pull, in one transaction with the pull time (kv key
`meters_pulled_at`), so a reader sees the old set or the new one, and can tell "never pulled" from
"pulled, and Dodo has no meters".
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence

from agent.store.records import KeyStats, MeterRow, NameStats, State
from agent.store.rules import PULLED_AT_KEY
from agent.store.sqlite.connection import StoreBase

# The most recent rows first (id order is enqueue order), bounded so a report never scans the file.
_RECENT = (
    "WITH recent AS (SELECT event_id, event_name, enqueued_at, payload FROM dodo_outbox_events "
    "WHERE enqueued_at >= ? ORDER BY id DESC LIMIT ?) "
)


def metadata_path(key: str) -> str:
    """The JSON path of a metadata key; quoted, so keys with dots or spaces work."""
    return "$.metadata." + json.dumps(key)


def replace_meters(db: StoreBase, rows: Sequence[MeterRow], now_us: int) -> int:
    """Replace every cached meter by `rows` and record the pull time, in one transaction."""
    with db.write() as conn:
        conn.execute("DELETE FROM dodo_outbox_meters")
        conn.executemany(
            "INSERT INTO dodo_outbox_meters (meter_id, event_name, name, aggregation, aggregation_key, "
            "filter, pulled_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (meter_id) DO UPDATE SET "
            "event_name = excluded.event_name, name = excluded.name, aggregation = excluded.aggregation, "
            "aggregation_key = excluded.aggregation_key, filter = excluded.filter",
            [
                (r.meter_id, r.event_name, r.name, r.aggregation, r.aggregation_key, r.filter, now_us)
                for r in rows
            ],
        )
        conn.execute(
            "INSERT INTO dodo_outbox_kv (key, value, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
            (PULLED_AT_KEY, str(now_us), now_us),
        )
    return len(rows)


def cached_meters(db: StoreBase) -> list[MeterRow]:
    """The cached meters, by event name then meter id."""
    with db.read() as conn:
        rows = conn.execute(
            "SELECT meter_id, event_name, name, aggregation, aggregation_key, filter, pulled_at "
            "FROM dodo_outbox_meters ORDER BY event_name, meter_id"
        ).fetchall()
    return [MeterRow(*row) for row in rows]


def meters_pulled_at_us(db: StoreBase) -> int | None:
    """When meters were last pulled (microseconds), or None when never."""
    with db.read() as conn:
        row = conn.execute("SELECT value FROM dodo_outbox_kv WHERE key = ?", (PULLED_AT_KEY,)).fetchone()
    return None if row is None or not row[0] else int(row[0])


def recent_events_by_name(
    db: StoreBase, since_us: int, keys_by_name: Mapping[str, Sequence[str]], max_rows: int = 100_000
) -> list[NameStats]:
    """Events enqueued since `since_us` (the latest `max_rows` at most), grouped by event_name,
    most frequent first; for each name in `keys_by_name`, how its keys look (see KeyStats)."""
    with db.read() as conn:
        groups = conn.execute(
            _RECENT + "SELECT event_name, count(*), max(enqueued_at), max(event_id) FROM recent "
            "GROUP BY event_name ORDER BY count(*) DESC, event_name",
            (since_us, max_rows),
        ).fetchall()
        result: list[NameStats] = []
        for name, count, last, example in groups:
            keys = tuple(
                _key_stats(conn, since_us, max_rows, name, key) for key in keys_by_name.get(name, ())
            )
            result.append(NameStats(name, int(count), int(last), example, keys))
    return result


def _key_stats(conn: sqlite3.Connection, since_us: int, max_rows: int, name: str, key: str) -> KeyStats:
    row = conn.execute(
        _RECENT + "SELECT coalesce(sum(t IS NULL), 0), coalesce(sum(t = 'text'), 0), "
        "coalesce(sum(t NOT IN ('integer', 'real', 'text')), 0), "
        # One example per problem: an example of `missing_key` must be an event without the key.
        "min(CASE WHEN t IS NULL THEN event_id END), min(CASE WHEN t = 'text' THEN event_id END), "
        "min(CASE WHEN t NOT IN ('integer', 'real', 'text') THEN event_id END) "
        "FROM (SELECT event_id, json_type(payload, ?) AS t FROM recent WHERE event_name = ?)",
        (since_us, max_rows, metadata_path(key), name),
    ).fetchone()
    return KeyStats(key, int(row[0]), int(row[1]), int(row[2]), row[3], row[4], row[5])


def delivered_sample(db: StoreBase, since_us: int, *, limit: int) -> list[tuple[str, str, str]]:
    """Up to `limit` random delivered events settled since `since_us`: (event_id, event_name, payload)."""
    with db.read() as conn:
        rows = conn.execute(
            "SELECT event_id, event_name, payload FROM dodo_outbox_events "
            f"WHERE state = '{State.DELIVERED}' AND settled_at >= ? ORDER BY random() LIMIT ?",
            (since_us, limit),
        ).fetchall()
    return [(str(a), str(b), str(c)) for a, b, c in rows]
