"""The values the store interface speaks, backend-neutral: no SQL here.

Every backend (`agent.store.sqlite` today) takes and returns exactly these types, so the rest of the
agent, and the conformance suite in tests/store/, never see which backend they talk to. Times are
microseconds since the epoch (`agent.timestamps.US`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from agent.errors import Problem
from agent.timestamps import US


class State(StrEnum):
    """The life of an outbox row (see docs/design.md): pending → inflight → delivered | dead."""

    PENDING = "pending"
    INFLIGHT = "inflight"
    DELIVERED = "delivered"
    DEAD = "dead"


RESPONSE_EXCERPT_CHARS = 2000
"""How much of Dodo's answer a dead row keeps."""


@dataclass(frozen=True, slots=True)
class StoreOptions:
    """How to open the outbox (the SQLite file, or the PostgreSQL schema)."""

    synchronous: str = "full"
    busy_timeout_ms: int = 10_000
    check_integrity: bool = False
    schema: str = "dodo_outbox"  # agent.store.location.DEFAULT_SCHEMA
    """PostgreSQL only: the schema holding the outbox tables (`[outbox] schema`)."""
    prepared_statements: bool = True
    """PostgreSQL only: let psycopg prepare repeated statements (`[outbox] prepared_statements`);
    off behind a PgBouncer in transaction pooling that does not track them."""


@dataclass(frozen=True, slots=True)
class Claimed:
    """A row leased for sending."""

    id: int
    event_id: str
    ts_us: int
    payload: str
    attempts: int
    enqueued_at_us: int


@dataclass(frozen=True, slots=True)
class Retimed:
    """An event of the call taken as a duplicate although its timestamp differs from the stored one's.

    `index` is its position in the call, `stored` and `given` the two timestamps, `earlier` the position
    of the event of the same call it repeats (None: it repeats the event already in the outbox).
    """

    index: int
    event_id: str
    stored: str
    given: str
    earlier: int | None = None

    def note(self, where: str, earlier_where: str | None = None) -> Problem:
        """The note for a result: `where` names this event (a path, a line), `earlier_where` the other."""
        if self.earlier is None:
            kept = "the one stored"
        else:
            kept = earlier_where if earlier_where is not None else f"event {self.earlier} of this call"
        return Problem(
            where,
            f"same event as {kept} ({self.event_id!r}); only timestamp differs (stored {self.stored}, "
            f"given {self.given}): kept the {'stored' if self.earlier is None else 'earlier'} one",
        )


@dataclass
class InsertResult:
    """What one enqueue call stored: event_ids that were new and those already in the outbox.

    `retimed` lists the duplicates whose producer-given timestamp differed (see Retimed).
    """

    new: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    retimed: list[Retimed] = field(default_factory=list)


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
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(us / US)) + f".{us % US // 1000:03d}Z"


@dataclass(frozen=True, slots=True)
class DeadFilter:
    """Which dead rows an operation applies to. Exactly one of `event_ids`, `reason`, `all` selects;
    `since_us` (settled at or after) narrows any of them. An empty filter selects nothing."""

    event_ids: tuple[str, ...] = ()
    reason: str | None = None
    all: bool = False
    since_us: int | None = None


@dataclass(frozen=True, slots=True)
class ReplayChunk:
    """One committed replay step: rows moved dead → pending, and how many of them were restamped."""

    moved: int
    restamped: int


@dataclass(frozen=True, slots=True)
class WindowRates:
    """Delivery over one trailing window. `delivered` and the request counts come from the request
    log (it outlives delivered rows pruned by retention); `dead` counts rows still dead that died in
    the window (dead rows are kept until purged, and include events dead-lettered without a request)."""

    seconds: int
    delivered: int
    dead: int
    requests: int
    requests_ok: int

    @property
    def delivery_success_ratio(self) -> float | None:
        """delivered / (delivered + dead), or None when nothing settled in the window."""
        total = self.delivered + self.dead
        return None if total == 0 else self.delivered / total

    @property
    def request_success_ratio(self) -> float | None:
        """2xx requests / all requests, or None when no request was made in the window."""
        return None if self.requests == 0 else self.requests_ok / self.requests


@dataclass(frozen=True, slots=True)
class FileStats:
    """The outbox file's page accounting (`freelist_count` pages are free, reusable or reclaimable)."""

    page_size: int
    page_count: int
    freelist_count: int

    @property
    def size_bytes(self) -> int:
        return self.page_size * self.page_count

    @property
    def free_bytes(self) -> int:
        return self.page_size * self.freelist_count


@dataclass(frozen=True, slots=True)
class MeterRow:
    """One cached meter. `filter` is the meter's filter as JSON text (or None)."""

    meter_id: str
    event_name: str
    name: str | None
    aggregation: str | None
    aggregation_key: str | None
    filter: str | None
    pulled_at_us: int


@dataclass(frozen=True, slots=True)
class KeyStats:
    """How one metadata key looks in the recent events of one name.

    `missing`: events without it; `strings`: events carrying it as a string; `not_numbers`: as a
    boolean (or anything else but a number). `example_missing`, `example_string`, `example_not_number`:
    one event with that very problem (None when no event has it); `example_event_id`: any of them.
    """

    key: str
    missing: int
    strings: int
    not_numbers: int
    example_missing: str | None = None
    example_string: str | None = None
    example_not_number: str | None = None

    @property
    def example_event_id(self) -> str | None:
        return self.example_missing or self.example_string or self.example_not_number


@dataclass(frozen=True, slots=True)
class NameStats:
    """The recent events of one event_name: how many, the latest enqueue time, one example id."""

    event_name: str
    events: int
    last_enqueued_us: int
    example_event_id: str
    keys: tuple[KeyStats, ...] = ()


@dataclass(frozen=True, slots=True)
class RangeRow:
    """One billable row: `payload` is the canonical JSON sent (or to be sent) to Dodo."""

    event_id: str
    event_name: str
    ts_us: int
    state: str
    restamped: bool
    payload: str


@dataclass(frozen=True, slots=True)
class VacuumHealth:
    """What keeps a multi-version database (PostgreSQL) from serving the claim quickly: the dead row
    versions of the hot events table and the oldest open transaction on the database, which keeps
    vacuum from reclaiming them. A backend without either (SQLite) reports None instead.

    Instants are seconds since the epoch (the database's clock); ages are measured by the database.
    """

    live_tuples: int
    dead_tuples: int
    last_autovacuum: float | None
    oldest_transaction_age_seconds: float | None
    oldest_transaction_pid: int | None
    oldest_transaction_state: str | None


@dataclass(frozen=True, slots=True)
class AgentRow:
    """One agent of the fleet, as its heartbeats left it (`status` lists them).

    `seen_ago_us` is measured on the store's clock (PostgreSQL's, for a fleet across hosts), like
    `last_seen_us`, so hosts with skewed clocks still agree on who is gone.
    """

    agent_id: str
    host: str
    pid: int
    started_us: int
    last_seen_us: int
    seen_ago_us: int
    claimed: int
    delivered: int
    stopped: bool
