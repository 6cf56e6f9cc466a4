"""The PostgreSQL backend of the store interface (`agent.store.base.OutboxStore`), psycopg 3 + a pool.

| module         | concern                                                                  |
|----------------|--------------------------------------------------------------------------|
| connection.py  | `PgBase`: the pool, `write()`/`read()`, errors as ours, the masked URL     |
| schema.py      | the DDL of a fresh schema (v2), migrating older ones under an advisory lock |
| migrations.py  | the schema's history: v1 as shipped, each forward step since (v1→v2 ...)   |
| insert.py      | enqueue: one unnest INSERT per call, duplicates, conflicts, savepoints      |
| queue.py       | claim (CTE + SKIP LOCKED, leases on the database clock), guarded settles,   |
|                | delivery moving rows out of the hot table into dodo_outbox_delivered        |
| dlq.py         | dead rows, replay (with restamp), purge, the top reasons                    |
| stats.py       | counts, lookups, key-value, the request log and its windows                 |
| maintenance.py | retention, table sizes, clock repair                                        |
| reads.py       | the meter cache, meter queries, preview range reads                         |

Imported only by `agent.store.open_store` for a `postgresql://` URL: psycopg is the `postgres` extra.
Leases are timed by the database clock (`clock_timestamp()`), not the caller's `now_us`: see queue.py.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from agent.errors import EventConflictError
from agent.events import Event
from agent.store.base import CHUNK_ROWS, REPLAY_CHUNK, VACUUM_PAGES
from agent.store.caller import driver_connection
from agent.store.location import mask_url
from agent.store.postgres import dlq, fleet, health, insert, maintenance, queue, reads, schema, stats
from agent.store.postgres.connection import PgBase
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
    StoreOptions,
    VacuumHealth,
    WindowRates,
)


class PostgresStore(PgBase):
    """The outbox in a PostgreSQL schema. Thread-safe; open one per process and share it."""

    def __init__(self, url: str, options: StoreOptions | None = None) -> None:
        super().__init__(url, options)
        try:
            with self.write() as conn:
                self.migrated_from = schema.migrate(conn, self.schema, self.t)
        except BaseException:
            self.close()
            raise

    def schema_version(self) -> int:
        found = self.kv_get(schema.VERSION_KEY)
        return 0 if found is None else int(found[0])

    @property
    def schema_versions(self) -> tuple[int, int]:
        """(the schema version found on opening, 0 for a new schema; the version it is at now)."""
        return self.migrated_from, schema.SCHEMA_VERSION

    def insert_on(self, conn: Any, events: Sequence[Event], source: str, now_us: int) -> InsertResult:
        """The transactional outbox: on the application's own psycopg connection, inside its open
        transaction (or a SQLAlchemy Connection/Session on it: agent/store/caller.py). Never commits
        or rolls back."""
        conn = driver_connection(conn, "psycopg")
        with self.translate():
            return insert.insert_on(conn, self.t, events, source, now_us)

    def insert_groups(
        self, groups: Sequence[tuple[Sequence[Event], str]], now_us: int
    ) -> list[InsertResult | EventConflictError]:
        return insert.insert_groups(self, groups, now_us)

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

    def prune_delivered(
        self, settled_before_us: int, *, chunk: int = CHUNK_ROWS, max_chunks: int = 200
    ) -> int:
        return maintenance.prune_delivered(self, settled_before_us, chunk=chunk, max_chunks=max_chunks)

    def prune_requests(self, before_us: int, *, chunk: int = CHUNK_ROWS, max_chunks: int = 200) -> int:
        return maintenance.prune_requests(self, before_us, chunk=chunk, max_chunks=max_chunks)

    def file_stats(self) -> FileStats:
        return maintenance.file_stats(self)

    def incremental_vacuum(self, *, max_pages: int = 100000, step: int = VACUUM_PAGES) -> int:
        return 0  # autovacuum's job on PostgreSQL (see maintenance.py)

    def vacuum_health(self) -> VacuumHealth:
        return health.vacuum_health(self)

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

    def explain_claim(self, *, analyze: bool = False) -> list[str]:
        return stats.explain_claim(self, analyze=analyze)

    def replace_meters(self, rows: Sequence[MeterRow], now_us: int) -> int:
        return reads.replace_meters(self, rows, now_us)

    def cached_meters(self) -> list[MeterRow]:
        return reads.cached_meters(self)

    def meters_pulled_at_us(self) -> int | None:
        return reads.meters_pulled_at_us(self)

    def recent_events_by_name(
        self, since_us: int, keys_by_name: Mapping[str, Sequence[str]], max_rows: int = 100000
    ) -> list[NameStats]:
        return reads.recent_events_by_name(self, since_us, keys_by_name, max_rows)

    def delivered_sample(self, since_us: int, *, limit: int) -> list[tuple[str, str, str]]:
        return reads.delivered_sample(self, since_us, limit=limit)

    def billable_rows(self, from_us: int, until_us: int) -> Iterator[tuple[str, str, int, str, int, str]]:
        return reads.billable_rows(self, from_us, until_us)

    def rows_by_event_id(self, event_ids: Sequence[str]) -> dict[str, RangeRow]:
        return reads.rows_by_event_id(self, event_ids)

    def shift_back(self, *, now_us: int, step_us: int) -> int:
        return maintenance.shift_back(self, now_us=now_us, step_us=step_us)

    def cap_future(self, *, now_us: int, max_delay_us: int, lease_us: int) -> int:
        return maintenance.cap_future(self, now_us=now_us, max_delay_us=max_delay_us, lease_us=lease_us)

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


__all__ = ["PostgresStore", "mask_url"]
