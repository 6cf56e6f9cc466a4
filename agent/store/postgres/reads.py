"""The meter cache, meter queries and preview range reads on PostgreSQL (SQLite's meters.py, preview.py).

Payloads are stored as text (the exact canonical string the delivery engine splices); the few reads
that look inside one cast it to jsonb.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from agent.store.postgres.stats import KV_UPSERT
from agent.store.records import KeyStats, MeterRow, NameStats, RangeRow, State
from agent.store.rules import PULLED_AT_KEY

# Delivered rows live in {dv} (schema v2): every read that may see one reads both tables.
_RECENT = (
    "WITH recent AS (SELECT event_id, event_name, enqueued_at, payload FROM ("
    "SELECT id, event_id, event_name, enqueued_at, payload FROM {ev} WHERE enqueued_at >= %(since)s "
    "UNION ALL SELECT id, event_id, event_name, enqueued_at, payload FROM {dv} "
    "WHERE enqueued_at >= %(since)s) AS r ORDER BY id DESC LIMIT %(rows)s) "
)
RANGE_SQL = (
    "SELECT event_id, event_name, ts, state, restamped::int, payload FROM ("
    "SELECT id, event_id, event_name, ts, state, restamped, payload FROM {ev} "
    f"WHERE ts >= %(lo)s AND ts < %(hi)s AND state <> '{State.DEAD}' "
    "UNION ALL SELECT id, event_id, event_name, ts, state, restamped, payload FROM {dv} "
    "WHERE ts >= %(lo)s AND ts < %(hi)s) AS r ORDER BY ts, id"
)
_CHUNK = 5000


def replace_meters(db: Any, rows: Sequence[MeterRow], now_us: int) -> int:
    with db.write() as conn:
        conn.execute(db.q("DELETE FROM {mt}"))
        with conn.cursor() as cur:
            cur.executemany(
                db.q(
                    "INSERT INTO {mt} (meter_id, event_name, name, aggregation, aggregation_key, filter, "
                    "pulled_at) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (meter_id) DO UPDATE SET "
                    "event_name = excluded.event_name, name = excluded.name, "
                    "aggregation = excluded.aggregation, "
                    "aggregation_key = excluded.aggregation_key, filter = excluded.filter"
                ),
                [
                    (r.meter_id, r.event_name, r.name, r.aggregation, r.aggregation_key, r.filter, now_us)
                    for r in rows
                ],
            )
        conn.execute(db.q(KV_UPSERT), (PULLED_AT_KEY, str(now_us), now_us))
    return len(rows)


def cached_meters(db: Any) -> list[MeterRow]:
    with db.read() as conn:
        rows = conn.execute(
            db.q(
                "SELECT meter_id, event_name, name, aggregation, aggregation_key, filter, pulled_at "
                "FROM {mt} "
                'ORDER BY event_name COLLATE "C", meter_id COLLATE "C"'
            )
        ).fetchall()
    return [MeterRow(*row) for row in rows]


def meters_pulled_at_us(db: Any) -> int | None:
    with db.read() as conn:
        row = conn.execute(db.q("SELECT value FROM {kv} WHERE key = %s"), (PULLED_AT_KEY,)).fetchone()
    return None if row is None or not row[0] else int(row[0])


def recent_events_by_name(
    db: Any, since_us: int, keys_by_name: Mapping[str, Sequence[str]], max_rows: int = 100_000
) -> list[NameStats]:
    with db.read() as conn:
        groups = conn.execute(
            db.q(
                _RECENT
                + 'SELECT event_name, count(*), max(enqueued_at), max(event_id COLLATE "C") FROM recent '
                'GROUP BY event_name ORDER BY count(*) DESC, event_name COLLATE "C"'
            ),
            {"since": since_us, "rows": max_rows},
        ).fetchall()
        result: list[NameStats] = []
        for name, count, last, example in groups:
            keys = tuple(
                _key_stats(db, conn, since_us, max_rows, name, key) for key in keys_by_name.get(name, ())
            )
            result.append(NameStats(name, int(count), int(last), example, keys))
    return result


def _key_stats(db: Any, conn: Any, since_us: int, max_rows: int, name: str, key: str) -> KeyStats:
    row = conn.execute(
        db.q(
            _RECENT + "SELECT count(*) FILTER (WHERE t IS NULL), count(*) FILTER (WHERE t = 'string'), "
            "count(*) FILTER (WHERE t NOT IN ('number', 'string')), "
            'min(event_id COLLATE "C") FILTER (WHERE t IS NULL), '
            "min(event_id COLLATE \"C\") FILTER (WHERE t = 'string'), "
            "min(event_id COLLATE \"C\") FILTER (WHERE t NOT IN ('number', 'string')) "
            "FROM (SELECT event_id, jsonb_typeof(payload::jsonb -> 'metadata' -> %(key)s) AS t FROM recent "
            "WHERE event_name = %(name)s) AS k"
        ),
        {"since": since_us, "rows": max_rows, "key": key, "name": name},
    ).fetchone()
    return KeyStats(key, int(row[0]), int(row[1]), int(row[2]), row[3], row[4], row[5])


def delivered_sample(db: Any, since_us: int, *, limit: int) -> list[tuple[str, str, str]]:
    with db.read() as conn:
        rows = conn.execute(
            db.q(
                "SELECT event_id, event_name, payload FROM {dv} WHERE settled_at >= %s "
                "ORDER BY random() LIMIT %s"
            ),
            (since_us, limit),
        ).fetchall()
    return [(str(a), str(b), str(c)) for a, b, c in rows]


def billable_rows(db: Any, from_us: int, until_us: int) -> Iterator[tuple[str, str, int, str, int, str]]:
    """Rows not dead with event time in [from_us, until_us), in event-time then arrival order,
    streamed through a server-side cursor (a pool connection is held until the iterator ends)."""
    with db.read() as conn, conn.cursor(name="dodo_outbox_range") as cur:
        cur.execute(db.q(RANGE_SQL), {"lo": from_us, "hi": until_us})
        while rows := cur.fetchmany(_CHUNK):
            yield from rows


def rows_by_event_id(db: Any, event_ids: Sequence[str]) -> dict[str, RangeRow]:
    with db.read() as conn:
        rows = conn.execute(
            db.q(
                "SELECT event_id, event_name, ts, state, restamped, payload FROM {ev} "
                "WHERE event_id = ANY(%(ids)s) UNION ALL "
                "SELECT event_id, event_name, ts, state, restamped, payload FROM {dv} "
                "WHERE event_id = ANY(%(ids)s)"
            ),
            {"ids": list(event_ids)},
        ).fetchall()
    return {r[0]: RangeRow(r[0], r[1], int(r[2]), r[3], bool(r[4]), r[5]) for r in rows}
