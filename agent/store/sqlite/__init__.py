"""The SQLite backend of the store interface (`agent.store.base.OutboxStore`).

One module per concern; each holds plain functions taking the connection helper as `db`:

| module        | concern                                                                      |
|---------------|------------------------------------------------------------------------------|
| connection.py | `StoreBase`: opening the file, the lock, `write()`/`read()`, errors as ours  |
| schema.py     | tables, indexes, migrations, the schema version                              |
| insert.py     | enqueue's SQL: multi-row INSERTs, duplicates, conflicts, retimed repeats     |
| queue.py      | the insert strategies, claim, the guarded transitions, backlog, next due     |
| dlq.py        | dead rows, replay (with restamp), purge, the top reasons                     |
| retention.py  | pruning delivered rows and the request log, incremental vacuum, file stats   |
| stats.py      | counts, lookup by event_id, key-value, the request log and its windows       |
| meters.py     | the meter cache and the meter queries                                        |
| preview.py    | event-time range reads for `meters preview` and `reconcile`                  |
| clock.py      | repairing stored instants after the wall clock stepped back                  |
| fleet.py      | the shared slots (rate budget, pause probe) and the agents' registry         |
| damage.py     | checking a damaged file's integrity, moving it aside (with its WAL)         |
| salvage.py    | copying the rows a damaged file still holds into another outbox              |

Why explicit delegation (and not mixins): `SqliteStore` below lists every operation once, each a
one-line call into the module of its concern, so a reader (or an editor's "go to definition") goes
from `store.claim(...)` to `SqliteStore.claim` to `queue.claim` with no guessing which base class
holds it. The contract and its docstrings are on `OutboxStore`; mypy checks that `SqliteStore`
satisfies it (`agent.store.open_store` returns one as the other).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from agent.errors import EventConflictError
from agent.events import Event
from agent.store.base import CHUNK_ROWS, REPLAY_CHUNK, VACUUM_PAGES
from agent.store.caller import driver_connection
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
from agent.store.sqlite import clock, dlq, fleet, meters, preview, queue, retention, stats
from agent.store.sqlite.connection import StoreBase
from agent.store.sqlite.insert import insert_in_transaction


class SqliteStore(StoreBase):
    """The outbox in one SQLite file. Thread-safe; open one per process and share it."""

    def insert_on(self, conn: Any, events: Sequence[Event], source: str, now_us: int) -> InsertResult:
        """The transactional outbox: on the application's own sqlite3 connection, inside its open
        transaction (creating the outbox tables if that database has none), or a SQLAlchemy
        Connection/Session on it (agent/store/caller.py). Never commits."""
        return insert_in_transaction(driver_connection(conn, "sqlite3"), events, source, now_us)

    # -- queue.py --------------------------------------------------------------------------

    def insert_groups(
        self, groups: Sequence[tuple[Sequence[Event], str]], now_us: int
    ) -> list[InsertResult | EventConflictError]:
        return queue.insert_groups(self, groups, now_us)

    def claim(self, *, now_us: int, limit: int, max_bytes: int, lease_us: int, owner: str) -> list[Claimed]:
        return queue.claim(
            self, now_us=now_us, limit=limit, max_bytes=max_bytes, lease_us=lease_us, owner=owner
        )

    def mark_delivered(
        self, ids: Sequence[int], *, owner: str, now_us: int, restamped: Sequence[int] = ()
    ) -> int:
        return queue.mark_delivered(self, ids, owner=owner, now_us=now_us, restamped=restamped)

    def mark_retry(
        self, ids: Sequence[int], *, owner: str, next_attempt_us: int, error: str, refund: bool = False
    ) -> int:
        return queue.mark_retry(
            self, ids, owner=owner, next_attempt_us=next_attempt_us, error=error, refund=refund
        )

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
        return queue.mark_dead(
            self, ids, owner=owner, now_us=now_us, reason=reason, http_status=http_status, response=response
        )

    def release_expired(self, now_us: int) -> int:
        return queue.release_expired(self, now_us)

    def backlog(self) -> int:
        return queue.backlog(self)

    def next_due_us(self) -> int | None:
        return queue.next_due_us(self)

    # -- dlq.py --------------------------------------------------------------------------

    def dead_rows(self, where: DeadFilter, *, limit: int = 100, after_id: int = 0) -> list[EventRecord]:
        return dlq.dead_rows(self, where, limit=limit, after_id=after_id)

    def iter_dead(self, where: DeadFilter, chunk: int = 1000) -> Iterator[EventRecord]:
        return dlq.iter_dead(self, where, chunk)

    def count_dead(self, where: DeadFilter, older_than_us: int | None = None) -> int:
        return dlq.count_dead(self, where, older_than_us)

    def count_late(self, where: DeadFilter, ts_before_us: int) -> int:
        return dlq.count_late(self, where, ts_before_us)

    def replay(
        self,
        where: DeadFilter,
        *,
        now_us: int,
        restamp_before_us: int | None = None,
        chunk: int = REPLAY_CHUNK,
    ) -> Iterator[ReplayChunk]:
        return dlq.replay(self, where, now_us=now_us, restamp_before_us=restamp_before_us, chunk=chunk)

    def purge_dead(self, older_than_us: int, *, reason: str | None = None, chunk: int = CHUNK_ROWS) -> int:
        return dlq.purge_dead(self, older_than_us, reason=reason, chunk=chunk)

    def top_dead_reasons(self, limit: int = 5) -> list[tuple[str, int]]:
        return dlq.top_dead_reasons(self, limit)

    # -- retention.py --------------------------------------------------------------------------

    def prune_delivered(
        self, settled_before_us: int, *, chunk: int = CHUNK_ROWS, max_chunks: int = 200
    ) -> int:
        return retention.prune_delivered(self, settled_before_us, chunk=chunk, max_chunks=max_chunks)

    def prune_requests(self, before_us: int, *, chunk: int = CHUNK_ROWS, max_chunks: int = 200) -> int:
        return retention.prune_requests(self, before_us, chunk=chunk, max_chunks=max_chunks)

    def file_stats(self) -> FileStats:
        return retention.file_stats(self)

    def incremental_vacuum(self, *, max_pages: int = 100000, step: int = VACUUM_PAGES) -> int:
        return retention.incremental_vacuum(self, max_pages=max_pages, step=step)

    def vacuum_health(self) -> VacuumHealth | None:
        return None  # no dead row versions (a delete frees the page) and no server sessions to age

    # -- stats.py --------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        return stats.counts(self)

    def oldest_pending_ts_us(self) -> int | None:
        return stats.oldest_pending_ts_us(self)

    def oldest_pending_enqueued_us(self) -> int | None:
        return stats.oldest_pending_enqueued_us(self)

    def get(self, event_id: str) -> EventRecord | None:
        return stats.get(self, event_id)

    def kv_get(self, key: str) -> tuple[str, int] | None:
        return stats.kv_get(self, key)

    def kv_set(self, key: str, value: str, now_us: int) -> None:
        return stats.kv_set(self, key, value, now_us)

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
        return stats.record_request(
            self,
            now_us=now_us,
            status=status,
            outcome=outcome,
            events=events,
            delivered=delivered,
            dead=dead,
            duplicates=duplicates,
            duration_ms=duration_ms,
        )

    def window_rates(self, now_us: int, windows: Sequence[int] = (300, 3600)) -> list[WindowRates]:
        return stats.window_rates(self, now_us, windows)

    def delivered_per_minute(self, now_us: int, *, minutes: int = 60) -> list[int]:
        return stats.delivered_per_minute(self, now_us, minutes=minutes)

    def explain_claim(self) -> list[str]:
        return stats.explain_claim(self)

    # -- meters.py --------------------------------------------------------------------------

    def replace_meters(self, rows: Sequence[MeterRow], now_us: int) -> int:
        return meters.replace_meters(self, rows, now_us)

    def cached_meters(self) -> list[MeterRow]:
        return meters.cached_meters(self)

    def meters_pulled_at_us(self) -> int | None:
        return meters.meters_pulled_at_us(self)

    def recent_events_by_name(
        self, since_us: int, keys_by_name: Mapping[str, Sequence[str]], max_rows: int = 100000
    ) -> list[NameStats]:
        return meters.recent_events_by_name(self, since_us, keys_by_name, max_rows)

    def delivered_sample(self, since_us: int, *, limit: int) -> list[tuple[str, str, str]]:
        return meters.delivered_sample(self, since_us, limit=limit)

    # -- preview.py --------------------------------------------------------------------------

    def billable_rows(self, from_us: int, until_us: int) -> Iterator[tuple[str, str, int, str, int, str]]:
        return preview.billable_rows(self, from_us, until_us)

    def rows_by_event_id(self, event_ids: Sequence[str]) -> dict[str, RangeRow]:
        return preview.rows_by_event_id(self, event_ids)

    def explain_billable_rows(self) -> list[str]:
        return preview.explain_billable_rows(self)

    # -- clock.py --------------------------------------------------------------------------

    def shift_back(self, *, now_us: int, step_us: int) -> int:
        return clock.shift_back(self, now_us=now_us, step_us=step_us)

    def cap_future(self, *, now_us: int, max_delay_us: int, lease_us: int) -> int:
        return clock.cap_future(self, now_us=now_us, max_delay_us=max_delay_us, lease_us=lease_us)

    # -- fleet.py ------------------------------------------------------------------------

    def take_slot(self, name: str, *, per_minute: float, burst: int, recovery: float = 0.0) -> int:
        return fleet.take_slot(self, name, per_minute=per_minute, burst=burst, recovery=recovery)

    def hold_slot(
        self, name: str, *, delay_us: int, per_minute: float, burst: int, slow_down: bool = False
    ) -> None:
        fleet.hold_slot(
            self, name, delay_us=delay_us, per_minute=per_minute, burst=burst, slow_down=slow_down
        )

    def reset_slot(self, name: str) -> None:
        fleet.reset_slot(self, name)

    def slot_rate(self, name: str) -> float | None:
        return fleet.slot_rate(self, name)

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
        fleet.heartbeat(
            self, agent_id, host=host, pid=pid, claimed=claimed, delivered=delivered, stopped=stopped
        )

    def agents(self) -> list[AgentRow]:
        return fleet.agents(self)

    def forget_agents(self, unseen_for_us: int, stopped_unseen_for_us: int | None = None) -> int:
        return fleet.forget_agents(self, unseen_for_us, stopped_unseen_for_us)


__all__ = ["SqliteStore"]
