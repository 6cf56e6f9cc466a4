"""The store interface: every operation the rest of the agent asks of the outbox, backend-neutral.

`OutboxStore` is a typing Protocol. `agent.store.sqlite.SqliteStore` is the one implementation
today; issue 13 adds PostgreSQL. Code outside `agent/store/` annotates with `OutboxStore` and opens a
store with `agent.store.open_store(location, options)`, so it never knows which backend it talks to.
Every implementation must pass the conformance suite in tests/store/.

Rules every backend keeps (the suite checks each):
- Every state change is guarded by the source state and, for inflight rows, by the lease owner, and
  returns how many rows moved: a stale worker can never settle a row claimed again by another. The
  owner is a claim token: the delivery worker passes `<worker>/<batch id>`, one per claim, to the claim
  and to every settle of that batch, so even its own later batches are "another" (the store compares
  the owner exactly, never a prefix).
- A claim counts the attempt (a crash mid-send still counts it); a refund gives it back.
- Claim order is event time (`ts`), oldest first, within a byte budget that always admits one row.
- Dead rows leave the dead state only by `replay` or `purge_dead`; retention never prunes them.
- Times are microseconds since the epoch (`agent.timestamps.US`).
- Which clock times a lease is the backend's: SQLite (one agent per file) uses the caller's `now_us`;
  PostgreSQL (several agents, several hosts) uses its own clock, `clock_timestamp()`, for `claim`'s
  `lease_until` and for `release_expired`, and ignores `now_us` there. The due check of `claim`
  (`next_attempt_at <= now_us`) uses the caller's clock on both: callers write `next_attempt_at`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol, Self

from agent.errors import EventConflictError
from agent.events import Event
from agent.store.records import (
    AgentRow,
    Claimed,
    DeadFilter,
    EventRecord,
    FileStats,
    InsertResult,
    MeterRow,
    NameStats,
    RangeRow,
    ReplayChunk,
    VacuumHealth,
    WindowRates,
)

CHUNK_ROWS = 5000
"""Rows per transaction for prune and purge: a short write lock, so intake never waits long."""
REPLAY_CHUNK = 500
"""Rows per transaction of a DLQ replay."""
VACUUM_PAGES = 2000
"""Pages handed back per incremental vacuum transaction."""

Group = tuple[Sequence[Event], str]
"""One enqueue call: its events and its source."""


class OutboxStore(Protocol):
    """The outbox. Thread-safe; open one per process with `agent.store.open_store` and share it."""

    @property
    def location(self) -> str:
        """Where the outbox lives, safe to show: the file path, or the URL with its password masked."""
        ...

    @property
    def closed(self) -> bool: ...

    @property
    def schema_versions(self) -> tuple[int, int]:
        """(the schema version this store found when it opened, 0 when it created the outbox; the
        version it brought it to). `agent.store.migrate` reports these."""
        ...

    def close(self) -> None:
        """Release the store. Safe to call twice."""
        ...

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc: object) -> None: ...

    # -- insert (see agent/groupcommit.py for when each strategy runs) ----------------------------

    def insert_groups(self, groups: Sequence[Group], now_us: int) -> list[InsertResult | EventConflictError]:
        """Store several independent enqueue calls in one commit; each group atomic on its own.

        A conflicting group stores nothing and gets its EventConflictError in the result list.
        Raises OutboxFullError (disk full) or OutboxError for the whole commit.
        """
        ...

    def insert_on(self, conn: Any, events: Sequence[Event], source: str, now_us: int) -> InsertResult:
        """Insert inside the caller's open transaction on the caller's connection; never commits.

        Raises EventConflictError, leaving the caller to roll back.
        """
        ...

    # -- the queue: claim and the guarded transitions ---------------------------------------------

    def claim(self, *, now_us: int, limit: int, max_bytes: int, lease_us: int, owner: str) -> list[Claimed]:
        """Lease up to `limit` pending rows due by `now_us`, oldest event time first, within `max_bytes`
        (at least one row), for `lease_us` (from `now_us` on SQLite, from the database clock on
        PostgreSQL). Counts the attempt now."""
        ...

    def mark_delivered(
        self, ids: Sequence[int], *, owner: str, now_us: int, restamped: Sequence[int] = ()
    ) -> int:
        """inflight → delivered for rows `owner` still leases. Returns how many moved."""
        ...

    def mark_retry(
        self, ids: Sequence[int], *, owner: str, next_attempt_us: int, error: str, refund: bool = False
    ) -> int:
        """inflight → pending, due at `next_attempt_us`; `refund` gives the attempt back."""
        ...

    def mark_dead(
        self,
        ids: Sequence[int],
        *,
        owner: str,
        now_us: int,
        reason: str,
        http_status: int | None,
        response: str,
    ) -> int:
        """inflight → dead with its reason, HTTP status and a bounded excerpt of the response."""
        ...

    def release_expired(self, now_us: int) -> int:
        """inflight rows whose lease passed → pending, due now. Returns how many. "Passed" is by
        `now_us` on SQLite, by the database clock on PostgreSQL (which ignores `now_us`)."""
        ...

    def backlog(self) -> int:
        """Rows pending or inflight."""
        ...

    def next_due_us(self) -> int | None:
        """When the earliest pending row is due, or None when nothing is pending."""
        ...

    # -- the dead-letter queue --------------------------------------------------------------------

    def dead_rows(self, where: DeadFilter, *, limit: int = 100, after_id: int = 0) -> list[EventRecord]: ...

    def iter_dead(self, where: DeadFilter, chunk: int = 1000) -> Iterator[EventRecord]: ...

    def count_dead(self, where: DeadFilter, older_than_us: int | None = None) -> int: ...

    def count_late(self, where: DeadFilter, ts_before_us: int) -> int: ...

    def replay(
        self,
        where: DeadFilter,
        *,
        now_us: int,
        restamp_before_us: int | None = None,
        chunk: int = REPLAY_CHUNK,
    ) -> Iterator[ReplayChunk]:
        """dead → pending, one committed chunk per item yielded; restamp keeps the original time."""
        ...

    def purge_dead(
        self, older_than_us: int, *, reason: str | None = None, chunk: int = CHUNK_ROWS
    ) -> int: ...

    def top_dead_reasons(self, limit: int = 5) -> list[tuple[str, int]]: ...

    # -- retention ----------------------------------------------------------------------------------

    def prune_delivered(
        self, settled_before_us: int, *, chunk: int = CHUNK_ROWS, max_chunks: int = 200
    ) -> int: ...

    def prune_requests(self, before_us: int, *, chunk: int = CHUNK_ROWS, max_chunks: int = 200) -> int: ...

    def file_stats(self) -> FileStats: ...

    def vacuum_health(self) -> VacuumHealth | None:
        """Dead rows of the hot table and the oldest open transaction (`status` warns on them); None
        where the backend has no such thing (SQLite: no dead row versions, no server sessions)."""
        ...

    def incremental_vacuum(self, *, max_pages: int = 100_000, step: int = VACUUM_PAGES) -> int: ...

    # -- stats, lookups, key-value, the request log -------------------------------------------------

    def counts(self) -> dict[str, int]: ...

    def oldest_pending_ts_us(self) -> int | None: ...

    def oldest_pending_enqueued_us(self) -> int | None: ...

    def get(self, event_id: str) -> EventRecord | None: ...

    def kv_get(self, key: str) -> tuple[str, int] | None: ...

    def kv_set(self, key: str, value: str, now_us: int) -> None: ...

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
    ) -> None: ...

    def window_rates(self, now_us: int, windows: Sequence[int] = (300, 3600)) -> list[WindowRates]: ...

    def delivered_per_minute(self, now_us: int, *, minutes: int = 60) -> list[int]: ...

    # -- the meter cache and meter queries ----------------------------------------------------------

    def replace_meters(self, rows: Sequence[MeterRow], now_us: int) -> int: ...

    def cached_meters(self) -> list[MeterRow]: ...

    def meters_pulled_at_us(self) -> int | None: ...

    def recent_events_by_name(
        self, since_us: int, keys_by_name: Mapping[str, Sequence[str]], max_rows: int = 100_000
    ) -> list[NameStats]: ...

    def delivered_sample(self, since_us: int, *, limit: int) -> list[tuple[str, str, str]]: ...

    # -- preview range reads ------------------------------------------------------------------------

    def billable_rows(self, from_us: int, until_us: int) -> Iterator[tuple[str, str, int, str, int, str]]: ...

    def rows_by_event_id(self, event_ids: Sequence[str]) -> dict[str, RangeRow]: ...

    # -- clock repair -------------------------------------------------------------------------------

    def shift_back(self, *, now_us: int, step_us: int) -> int:
        """The caller's clock stepped back `step_us`: future retry times (and, where leases are on the
        caller's clock, leases) come that much closer, never before `now_us`. Returns rows moved."""
        ...

    def cap_future(self, *, now_us: int, max_delay_us: int, lease_us: int) -> int:
        """Retries due later than `now_us + max_delay_us` become due now; leases longer than `lease_us`
        from now (by the clock that times leases) end then. Returns rows moved."""
        ...

    # -- the fleet: shared slots (the rate budget, the pause's probe) and the agents' registry ----
    # Timed by the store's clock (PostgreSQL's own, so agents on hosts with skewed clocks agree); the
    # rules are agent/store/rules.py's GCRA. Every agent on the outbox shares these rows.

    def take_slot(self, name: str, *, per_minute: float, burst: int, recovery: float = 0.0) -> int:
        """Take one slot of the budget `name` (`per_minute` requests/min, `burst` at once): returns 0
        when taken, else the microseconds to wait before asking again (at least 1 ms). One atomic
        statement. A slot taken while the budget is slowed down brings its rate `recovery`
        requests/min back towards `per_minute`."""
        ...

    def hold_slot(
        self, name: str, *, delay_us: int, per_minute: float, burst: int, slow_down: bool = False
    ) -> None:
        """No slot of `name` for anyone before `delay_us` from now, then one per interval (a 429's
        Retry-After, a pause's next probe); `slow_down` also halves the budget's rate (AIMD)."""
        ...

    def reset_slot(self, name: str) -> None:
        """The next slot of `name` is free at once (a re-read key makes the probe due now)."""
        ...

    def slot_rate(self, name: str) -> float | None:
        """The slowed-down rate of `name` (requests/min), or None while it is not slowed."""
        ...

    def heartbeat(
        self,
        agent_id: str,
        *,
        host: str,
        pid: int,
        claimed: int = 0,
        delivered: int = 0,
        stopped: bool = False,
    ) -> None:
        """Record that `agent_id` is alive now, adding `claimed` and `delivered` to its totals
        (`stopped`: it shut down cleanly). The first beat registers it."""
        ...

    def agents(self) -> list[AgentRow]:
        """Every agent that heartbeated and is not forgotten, the longest-running first."""
        ...

    def forget_agents(self, unseen_for_us: int, stopped_unseen_for_us: int | None = None) -> int:
        """Delete agents not seen for `unseen_for_us`, and stopped ones not seen for
        `stopped_unseen_for_us` (when given); returns how many."""
        ...
