"""Read-side queries for operators: counts by state, backlog age, one event's record, shared state."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from agent.store.base import StoreBase
from agent.store.queue import CLAIM_SQL

_ROW_COLUMNS = (
    "id, event_id, event_name, ts, payload, stamped, source, state, attempts, enqueued_at, "
    "next_attempt_at, lease_until, settled_at, restamped, reason, http_status, response, last_error, "
    "original_ts"
)


@dataclass(frozen=True, slots=True)
class EventRecord:
    """Everything the outbox knows about one event. Times are microseconds since the epoch."""

    id: int
    event_id: str
    event_name: str
    ts_us: int
    payload: str
    stamped: bool
    source: str
    state: str
    attempts: int
    enqueued_at_us: int
    next_attempt_at_us: int
    lease_until_us: int | None
    settled_at_us: int | None
    restamped: bool
    reason: str | None
    http_status: int | None
    response: str | None
    last_error: str | None
    original_ts_us: int | None = None
    """The producer's event time when `dlq replay --restamp` rewrote `ts_us`; None if never rewritten."""

    @property
    def event(self) -> dict[str, Any]:
        """The stored event as a dict."""
        value: dict[str, Any] = json.loads(self.payload)
        return value

    def as_document(self) -> dict[str, Any]:
        """JSON-ready data with ISO times: `events show`, `dlq show` and `GET /v1/dlq/{id}` print this."""
        return {
            "event_id": self.event_id,
            "state": self.state,
            "attempts": self.attempts,
            "event_name": self.event_name,
            "timestamp": iso_us(self.ts_us),
            # Restamped (at delivery, or by `dlq replay --restamp`): the producer's own event time.
            "original_timestamp": iso_us(self.original_ts_us or self.ts_us) if self.restamped else None,
            "timestamp_stamped_at_enqueue": self.stamped,
            "source": self.source,
            "enqueued_at": iso_us(self.enqueued_at_us),
            "next_attempt_at": iso_us(self.next_attempt_at_us) if self.state == "pending" else None,
            "lease_until": iso_us(self.lease_until_us),
            "settled_at": iso_us(self.settled_at_us),
            "restamped": self.restamped,
            "reason": self.reason,
            "http_status": self.http_status,
            "response": self.response,
            "last_error": self.last_error,
            "event": self.event,
        }


def iso_us(us: int | None) -> str | None:
    """Microseconds since the epoch as ISO 8601 UTC to the millisecond; None for unset (None or 0)."""
    if us is None or us <= 0:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(us / 1e6)) + f".{us % 1_000_000 // 1000:03d}Z"


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
