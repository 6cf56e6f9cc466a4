"""Stats SQL: counts by state, backlog age, one event's record, key-value, the request log and its windows."""

from __future__ import annotations

from collections.abc import Sequence

from agent.store.records import EventRecord, State, WindowRates
from agent.store.rules import ROW_COLUMNS, record_from_row
from agent.store.sqlite.connection import StoreBase
from agent.store.sqlite.queue import CLAIM_SQL
from agent.timestamps import US, to_us

_US_PER_MINUTE = 60 * US

def counts(db: StoreBase) -> dict[str, int]:
    """Rows per state; every state is present. Each count is served by its partial index."""
    with db.read() as conn:
        row = conn.execute(
            f"SELECT (SELECT count(*) FROM dodo_outbox_events WHERE state = '{State.PENDING}'), "
            f"(SELECT count(*) FROM dodo_outbox_events WHERE state = '{State.INFLIGHT}'), "
            f"(SELECT count(*) FROM dodo_outbox_events WHERE state = '{State.DELIVERED}'), "
            f"(SELECT count(*) FROM dodo_outbox_events WHERE state = '{State.DEAD}')"
        ).fetchone()
    return dict(zip(("pending", "inflight", "delivered", "dead"), map(int, row), strict=True))


def oldest_pending_ts_us(db: StoreBase) -> int | None:
    """The event time of the oldest undelivered (pending or inflight) event, or None."""
    with db.read() as conn:
        row = conn.execute(
            "SELECT min(t) FROM (SELECT min(ts) AS t FROM dodo_outbox_events "
            f"WHERE state = '{State.PENDING}' "
            f"UNION ALL SELECT min(ts) FROM dodo_outbox_events WHERE state = '{State.INFLIGHT}')"
        ).fetchone()
    return None if row[0] is None else int(row[0])


def oldest_pending_enqueued_us(db: StoreBase) -> int | None:
    """When the longest-waiting undelivered event was enqueued, or None."""
    with db.read() as conn:
        row = conn.execute(
            "SELECT min(enqueued_at) FROM dodo_outbox_events "
            f"WHERE state IN ('{State.PENDING}', '{State.INFLIGHT}')"
        ).fetchone()
    return None if row[0] is None else int(row[0])


def get(db: StoreBase, event_id: str) -> EventRecord | None:
    """One event's full record by event_id, or None."""
    with db.read() as conn:
        row = conn.execute(
            f"SELECT {ROW_COLUMNS} FROM dodo_outbox_events WHERE event_id = ?", (event_id,)
        ).fetchone()
    return None if row is None else record_from_row(row)


def kv_get(db: StoreBase, key: str) -> tuple[str, int] | None:
    """A shared value and when it was written (microseconds), or None."""
    with db.read() as conn:
        row = conn.execute("SELECT value, updated_at FROM dodo_outbox_kv WHERE key = ?", (key,)).fetchone()
    return None if row is None else (str(row[0]), int(row[1]))


def kv_set(db: StoreBase, key: str, value: str, now_us: int) -> None:
    """Write a shared value (other processes, like `status`, read it)."""
    with db.write() as conn:
        conn.execute(
            "INSERT INTO dodo_outbox_kv (key, value, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
            (key, value, now_us),
        )


def record_request(
    db: StoreBase,
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
    """Log one delivery request (success ratios, rates and the sparkline are computed from these)."""
    with db.write() as conn:
        conn.execute(
            "INSERT INTO dodo_outbox_requests (at, status, outcome, events, delivered, dead, duplicates, "
            "duration_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (now_us, status, outcome, events, delivered, dead, duplicates, duration_ms),
        )


def window_rates(db: StoreBase, now_us: int, windows: Sequence[int] = (300, 3600)) -> list[WindowRates]:
    """Delivered, dead and requests (all and 2xx) over each trailing window of seconds."""
    found: list[WindowRates] = []
    with db.read() as conn:
        for seconds in windows:
            since = now_us - to_us(seconds)
            delivered, requests, ok = conn.execute(
                "SELECT coalesce(sum(delivered), 0), count(*), "
                "coalesce(sum(status BETWEEN 200 AND 299), 0) FROM dodo_outbox_requests WHERE at >= ?",
                (since,),
            ).fetchone()
            dead = conn.execute(
                f"SELECT count(*) FROM dodo_outbox_events WHERE state = '{State.DEAD}' AND settled_at >= ?",
                (since,),
            ).fetchone()[0]
            found.append(WindowRates(seconds, int(delivered), int(dead), int(requests), int(ok)))
    return found


def delivered_per_minute(db: StoreBase, now_us: int, *, minutes: int = 60) -> list[int]:
    """Events delivered in each of the last `minutes` minutes, oldest first (the sparkline)."""
    start = now_us - minutes * _US_PER_MINUTE
    buckets = [0] * minutes
    with db.read() as conn:
        for bucket, delivered in conn.execute(
            "SELECT (at - ?) / ?, sum(delivered) FROM dodo_outbox_requests WHERE at >= ? GROUP BY 1",
            (start, _US_PER_MINUTE, start),
        ):
            buckets[min(int(bucket), minutes - 1)] += int(delivered or 0)
    return buckets


def explain_claim(db: StoreBase) -> list[str]:
    """The query plan of the claim query (a test asserts it uses the claim index)."""
    with db.read() as conn:
        rows = conn.execute("EXPLAIN QUERY PLAN " + CLAIM_SQL, (0, 10)).fetchall()
    return [str(r[-1]) for r in rows]
