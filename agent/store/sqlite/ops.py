"""Read-side queries for operators: counts by state, backlog age, one event's record, shared state."""

from __future__ import annotations

from typing import Any

from agent.store.records import EventRecord
from agent.store.sqlite.connection import StoreBase
from agent.store.sqlite.queue import CLAIM_SQL

_ROW_COLUMNS = (
    "id, event_id, event_name, ts, payload, stamped, source, state, attempts, enqueued_at, "
    "next_attempt_at, lease_until, settled_at, restamped, reason, http_status, response, last_error, "
    "original_ts"
)


def record_from_row(row: tuple[Any, ...]) -> EventRecord:
    """The one place a database row becomes an EventRecord."""
    (
        row_id,
        event_id,
        event_name,
        ts,
        payload,
        stamped,
        source,
        state,
        attempts,
        enqueued_at,
        next_attempt_at,
        lease_until,
        settled_at,
        restamped,
        reason,
        http_status,
        response,
        last_error,
        original_ts,
    ) = row
    return EventRecord(
        row_id,
        event_id,
        event_name,
        ts,
        payload,
        bool(stamped),
        source,
        state,
        attempts,
        enqueued_at,
        next_attempt_at,
        lease_until,
        settled_at,
        bool(restamped),
        reason,
        http_status,
        response,
        last_error,
        original_ts,
    )


class OpsMixin(StoreBase):
    """Queries that serve status, lookups and the shared key/value state."""

    def counts(self) -> dict[str, int]:
        """Rows per state; every state is present. Each count is served by its partial index."""
        with self.read() as conn:
            row = conn.execute(
                "SELECT (SELECT count(*) FROM dodo_outbox_events WHERE state = 'pending'), "
                "(SELECT count(*) FROM dodo_outbox_events WHERE state = 'inflight'), "
                "(SELECT count(*) FROM dodo_outbox_events WHERE state = 'delivered'), "
                "(SELECT count(*) FROM dodo_outbox_events WHERE state = 'dead')"
            ).fetchone()
        return dict(zip(("pending", "inflight", "delivered", "dead"), map(int, row), strict=True))

    def oldest_pending_ts_us(self) -> int | None:
        """The event time of the oldest undelivered (pending or inflight) event, or None."""
        with self.read() as conn:
            row = conn.execute(
                "SELECT min(t) FROM (SELECT min(ts) AS t FROM dodo_outbox_events WHERE state = 'pending' "
                "UNION ALL SELECT min(ts) FROM dodo_outbox_events WHERE state = 'inflight')"
            ).fetchone()
        return None if row[0] is None else int(row[0])

    def oldest_pending_enqueued_us(self) -> int | None:
        """When the longest-waiting undelivered event was enqueued, or None."""
        with self.read() as conn:
            row = conn.execute(
                "SELECT min(enqueued_at) FROM dodo_outbox_events WHERE state IN ('pending', 'inflight')"
            ).fetchone()
        return None if row[0] is None else int(row[0])

    def get(self, event_id: str) -> EventRecord | None:
        """One event's full record by event_id, or None."""
        with self.read() as conn:
            row = conn.execute(
                f"SELECT {_ROW_COLUMNS} FROM dodo_outbox_events WHERE event_id = ?", (event_id,)
            ).fetchone()
        return None if row is None else record_from_row(row)

    def kv_get(self, key: str) -> tuple[str, int] | None:
        """A shared value and when it was written (microseconds), or None."""
        with self.read() as conn:
            row = conn.execute(
                "SELECT value, updated_at FROM dodo_outbox_kv WHERE key = ?", (key,)
            ).fetchone()
        return None if row is None else (str(row[0]), int(row[1]))

    def kv_set(self, key: str, value: str, now_us: int) -> None:
        """Write a shared value (other processes, like `status`, read it)."""
        with self.write() as conn:
            conn.execute(
                "INSERT INTO dodo_outbox_kv (key, value, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                (key, value, now_us),
            )

    def record_request(
        self,
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
        with self.write() as conn:
            conn.execute(
                "INSERT INTO dodo_outbox_requests (at, status, outcome, events, delivered, dead, duplicates, "
                "duration_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (now_us, status, outcome, events, delivered, dead, duplicates, duration_ms),
            )

    def explain_claim(self) -> list[str]:
        """The query plan of the claim query (a test asserts it uses the claim index)."""
        with self.read() as conn:
            rows = conn.execute("EXPLAIN QUERY PLAN " + CLAIM_SQL, (0, 10)).fetchall()
        return [str(r[-1]) for r in rows]
