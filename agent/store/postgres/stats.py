"""Stats on PostgreSQL: counts by state, backlog age, one event's record, key-value, the request log."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from agent.store.postgres.queue import CLAIM_SQL
from agent.store.records import EventRecord, State, WindowRates
from agent.store.rules import ROW_COLUMNS, record_from_row
from agent.timestamps import US, to_us

_US_PER_MINUTE = 60 * US
KV_UPSERT = (
    "INSERT INTO {kv} (key, value, updated_at) VALUES (%s, %s, %s) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at"
)


def counts(db: Any) -> dict[str, int]:
    found = dict.fromkeys(("pending", "inflight", "delivered", "dead"), 0)
    with db.read() as conn:
        for state, n in conn.execute(
            db.q(
                "SELECT state, count(*) FROM {ev} GROUP BY state "
                "UNION ALL SELECT state, count(*) FROM {dv} GROUP BY state"
            )
        ).fetchall():
            found[str(state)] += int(n)
    return found


def oldest_pending_ts_us(db: Any) -> int | None:
    with db.read() as conn:
        row = conn.execute(
            db.q(f"SELECT min(ts) FROM {{ev}} WHERE state IN ('{State.PENDING}', '{State.INFLIGHT}')")
        ).fetchone()
    return None if row[0] is None else int(row[0])


def oldest_pending_enqueued_us(db: Any) -> int | None:
    with db.read() as conn:
        row = conn.execute(
            db.q(
                f"SELECT min(enqueued_at) FROM {{ev}} WHERE state IN ('{State.PENDING}', '{State.INFLIGHT}')"
            )
        ).fetchone()
    return None if row[0] is None else int(row[0])


def get(db: Any, event_id: str) -> EventRecord | None:
    with db.read() as conn:
        row = conn.execute(
            db.q(
                f"SELECT {ROW_COLUMNS} FROM {{ev}} WHERE event_id = %(id)s UNION ALL "
                f"SELECT {ROW_COLUMNS} FROM {{dv}} WHERE event_id = %(id)s LIMIT 1"
            ),
            {"id": event_id},
        ).fetchone()
    return None if row is None else record_from_row(row)


def kv_get(db: Any, key: str) -> tuple[str, int] | None:
    with db.read() as conn:
        row = conn.execute(db.q("SELECT value, updated_at FROM {kv} WHERE key = %s"), (key,)).fetchone()
    return None if row is None else (str(row[0]), int(row[1]))


def kv_set(db: Any, key: str, value: str, now_us: int) -> None:
    with db.write() as conn:
        conn.execute(db.q(KV_UPSERT), (key, value, now_us))


def record_request(
    db: Any,
    *,
    now_us: int,
    status: int | None,
    outcome: str,
    events: int,
    delivered: int = 0,
    dead: int = 0,
    duplicates: int = 0,
    duration_ms: float = 0.0,
) -> None:
    with db.write() as conn:
        conn.execute(
            db.q(
                "INSERT INTO {rq} (at, status, outcome, events, delivered, dead, duplicates, duration_ms) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
            ),
            (now_us, status, outcome, events, delivered, dead, duplicates, duration_ms),
        )


def window_rates(db: Any, now_us: int, windows: Sequence[int] = (300, 3600)) -> list[WindowRates]:
    found: list[WindowRates] = []
    with db.read() as conn:
        for seconds in windows:
            since = now_us - to_us(seconds)
            delivered, requests, ok = conn.execute(
                db.q(
                    "SELECT coalesce(sum(delivered), 0), count(*), "
                    "count(*) FILTER (WHERE status BETWEEN 200 AND 299) FROM {rq} WHERE at >= %s"
                ),
                (since,),
            ).fetchone()
            dead = conn.execute(
                db.q(f"SELECT count(*) FROM {{ev}} WHERE state = '{State.DEAD}' AND settled_at >= %s"),
                (since,),
            ).fetchone()[0]
            found.append(WindowRates(seconds, int(delivered), int(dead), int(requests), int(ok)))
    return found


def delivered_per_minute(db: Any, now_us: int, *, minutes: int = 60) -> list[int]:
    start = now_us - minutes * _US_PER_MINUTE
    buckets = [0] * minutes
    with db.read() as conn:
        for bucket, delivered in conn.execute(
            db.q("SELECT (at - %s) / %s, sum(delivered) FROM {rq} WHERE at >= %s GROUP BY 1"),
            (start, _US_PER_MINUTE, start),
        ).fetchall():
            buckets[min(int(bucket), minutes - 1)] += int(delivered or 0)
    return buckets


def explain_claim(db: Any, *, analyze: bool = False) -> list[str]:
    """The plan of the claim query (tests assert it uses the claim index). Rolled back: never claims."""
    params = {"now": 0, "limit": 10, "lease": 0, "owner": "explain", "max_bytes": 1 << 20}
    with db.write() as conn:
        rows = conn.execute(
            ("EXPLAIN (ANALYZE) " if analyze else "EXPLAIN ") + db.q(CLAIM_SQL), params
        ).fetchall()
        conn.rollback()
    return [str(r[0]) for r in rows]
