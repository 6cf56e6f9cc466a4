"""The library API: `Outbox(path).enqueue(event)`. Validates, then commits before returning.

Concurrent `enqueue` calls share one commit (group commit, agent/groupcommit.py, which also tables
every insert strategy and when each runs); `conn=` writes inside the caller's own transaction.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from agent.errors import EventConflictError, InvalidEventError, OutboxError, OutboxFullError, Problem
from agent.events import MAX_EVENT_AGE_SECONDS, Event, check_event, validate_many
from agent.groupcommit import GroupCommit
from agent.store import InsertResult, OutboxStore, Retimed, StoreOptions, open_store
from agent.store.location import parse_location
from agent.timestamps import to_us

Listener = Callable[["EnqueueResult"], None]
Checker = Callable[[Sequence[Event]], Sequence[Problem]]
"""Called with validated events before they are stored: returns warnings, or raises to refuse them."""


@dataclass
class EnqueueResult:
    """What an enqueue call stored.

    `new`: event_ids stored now. `duplicates`: already in the outbox with the same content (not stored
    twice). `warnings`: accepted oddities (e.g. a numeric string Dodo cannot aggregate). `late`: events
    already outside Dodo's 1-hour window (the late-event policy applies at delivery). `retimed`: the
    duplicates whose producer-given timestamp differed from the stored one (a producer that rebuilt the
    event in a retry loop); the stored event was kept, `notes()` says so.
    """

    new: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    late: list[str] = field(default_factory=list)
    source: str = "library"
    retimed: list[Retimed] = field(default_factory=list)

    def notes(self, path: str = "events") -> list[Problem]:
        """One note per retimed duplicate, its place named `path[i].timestamp` (i: its position)."""
        return [
            r.note(
                f"{path}[{r.index}].timestamp",
                None if r.earlier is None else f"{path}[{r.earlier}]",
            )
            for r in self.retimed
        ]

    @property
    def ingested_count(self) -> int:
        """New events, as Dodo counts them."""
        return len(self.new)


class Outbox:
    """A durable outbox file. Thread-safe; use one per process (or per file) and share it.

    >>> with Outbox("dodo-outbox.db") as outbox:
    ...     outbox.enqueue({"event_id": "req_1", "customer_id": "cus_1", "event_name": "api.call"})
    """

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: str = "full",
        max_events: int | None = None,
        max_bytes: int = 0,
        source: str = "library",
        clock: Callable[[], float] = time.time,
        store: OutboxStore | None = None,
        checker: Checker | None = None,
        max_event_age: float = MAX_EVENT_AGE_SECONDS,
        schema: str = "dodo_outbox",
        prepared_statements: bool = True,
    ) -> None:
        # `path`: an SQLite file, or a postgresql:// URL (the `postgres` extra) with its `schema`;
        # `prepared_statements=False` behind PgBouncer in transaction pooling.
        self.store = store or open_store(
            path,
            StoreOptions(synchronous=synchronous, schema=schema, prepared_statements=prepared_statements),
        )
        self.location = self.store.location
        """Where the outbox lives, safe to show (a URL's password masked)."""
        self.path = parse_location(self.location)
        """The SQLite file (a Path), or the PostgreSQL URL with its password masked (a str)."""
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.max_event_age = max_event_age
        """Seconds: older events are refused (`[intake] max_event_age`); every intake validates with it."""
        self._used_bytes = 0
        self.source = source
        self._clock = clock
        self._group = GroupCommit(self.store)
        self._listeners: list[Listener] = []
        self.checker = checker
        self._backlog = 0
        self._backlog_checked = -1.0

    @classmethod
    def open(
        cls, path: str | Path | None = None, *, config: str | Path | None = None, **kwargs: Any
    ) -> Outbox:
        """Open the outbox named by `path`, or by the config file (`--config` / DODO_OUTBOX_CONFIG):
        its `[outbox] url` (PostgreSQL, in `[outbox] schema`) when set, else its `[outbox] path`."""
        from agent import config as config_module

        settings = config_module.load(config)
        kwargs.setdefault("synchronous", settings.outbox.synchronous)
        kwargs.setdefault("max_events", settings.outbox.max_events)
        kwargs.setdefault("max_bytes", settings.outbox.max_bytes)
        kwargs.setdefault("max_event_age", settings.intake.max_event_age)
        kwargs.setdefault("schema", settings.outbox.schema)
        kwargs.setdefault("prepared_statements", settings.outbox.prepared_statements)
        return cls(path or settings.outbox_location, **kwargs)

    def __enter__(self) -> Outbox:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the file. Calls in progress finish first."""
        with self._group.commit_lock:
            self.store.close()

    def set_checker(self, checker: Checker | None) -> None:
        """Run `checker(events)` on every enqueue before storing (the meter checks); None removes it."""
        self.checker = checker

    def add_listener(self, listener: Listener) -> None:
        """Call `listener(result)` after each committed enqueue (the running agent wakes its worker)."""
        self._listeners.append(listener)

    def validate(self, events: Iterable[Mapping[str, Any] | Any], path: str = "events") -> list[Event]:
        """Validate without storing. Raises InvalidEventError with every problem."""
        return validate_many(list(events), self._clock(), path, self.max_event_age)

    def enqueue(
        self, event: Mapping[str, Any], *, conn: Any = None, source: str | None = None
    ) -> EnqueueResult:
        """Validate and durably store one event; return once it is on disk.

        With `conn`, the event is written on that connection inside its open transaction instead (the
        transactional outbox: it commits or rolls back with the caller's own change): an sqlite3
        connection to the outbox's SQLite file, or a psycopg 3 connection to a PostgreSQL outbox's
        database. Never commits or rolls back `conn`.
        Raises InvalidEventError, EventConflictError, OutboxFullError.
        """
        # The same as enqueue_many([event], path="event"), without its list and loop: this is the
        # per-event hot path of the library.
        checked, problems = check_event(event, self._clock(), "event[0]", self.max_event_age)
        if checked is None:
            raise InvalidEventError(problems)
        return self.enqueue_validated([checked], conn=conn, source=source)

    def enqueue_many(
        self,
        events: Iterable[Mapping[str, Any]],
        *,
        conn: Any = None,
        source: str | None = None,
        path: str = "events",
    ) -> EnqueueResult:
        """Validate and durably store events, all or none. Returns which were new and which duplicates.

        Raises InvalidEventError (every problem of every event), EventConflictError (an event_id stored
        with different content: nothing of this call is stored), OutboxFullError (back-pressure).
        """
        validated = validate_many(list(events), self._clock(), path, self.max_event_age)
        return self.enqueue_validated(validated, conn=conn, source=source)

    def enqueue_validated(
        self, events: Sequence[Event], *, conn: Any = None, source: str | None = None
    ) -> EnqueueResult:
        """Store events that were validated already (intake paths validate first to report problems)."""
        source = source or self.source
        if not events:
            return EnqueueResult(source=source)
        checked = list(self.checker(events)) if self.checker is not None else []
        now_us = to_us(self._clock())
        if conn is not None:  # the caller's transaction decides: nothing is known stored yet
            return _result(events, self.store.insert_on(conn, events, source, now_us), checked, source)
        self._check_capacity(len(events))
        return self._stored(events, self._group.commit(events, source, now_us), checked, source)

    def _stored(
        self, events: Sequence[Event], inserted: InsertResult, checked: list[Problem], source: str
    ) -> EnqueueResult:
        """The result of a committed call; counts it in the backlog and tells the listeners."""
        result = _result(events, inserted, checked, source)
        self._backlog += len(result.new)
        for listener in self._listeners:
            listener(result)
        return result

    def _check_capacity(self, adding: int) -> None:
        """Refuse at max_events undelivered events or max_bytes of used pages.

        Counting is a query, so it is refreshed at most once a second (and whenever the cached figure
        says the call would not fit): the limit may be overshot by one second of intake, never more.
        """
        if self.max_events is None and not self.max_bytes:
            return
        now = time.monotonic()
        over = self.max_events is not None and self._backlog + adding > self.max_events
        if now - self._backlog_checked > 1.0 or over:
            self._backlog = self.store.backlog()
            if self.max_bytes:
                stats = self.store.file_stats()
                self._used_bytes = stats.size_bytes - stats.free_bytes
            self._backlog_checked = now
        if self.max_events is not None and self._backlog + adding > self.max_events:
            raise OutboxFullError(
                f"the outbox {self.location} holds {self._backlog} undelivered events, at its limit "
                f"max_events = {self.max_events}; nothing was stored. Retry later, or raise "
                "[outbox] max_events if the disk allows",
                retry_after=5.0,
            )
        if self.max_bytes and self._used_bytes >= self.max_bytes:
            raise OutboxFullError(
                f"the outbox {self.location} uses {self._used_bytes} bytes, at its limit max_bytes = "
                f"{self.max_bytes}; nothing was stored. Retry later (delivered rows are pruned after "
                "[outbox] delivered_retention_hours), or raise [outbox] max_bytes",
                retry_after=5.0,
            )

    def wait_for_room(self, adding: int = 1, timeout: float = 30.0, poll: float = 0.5) -> None:
        """Block until `adding` more events fit (for producers that prefer to wait than to fail).

        Raises OutboxFullError when `timeout` seconds pass without room.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._backlog_checked = -1.0
                self._check_capacity(adding)
                return
            except OutboxFullError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(poll)

    def enqueue_calls(
        self, calls: Sequence[tuple[Sequence[Event], str]]
    ) -> list[EnqueueResult | EventConflictError | InvalidEventError | OutboxError]:
        """Store several independent calls' validated events in ONE transaction (the HTTP committer).

        Each call is atomic on its own: a call refused (EventConflictError, the checker's
        InvalidEventError, OutboxFullError) stores nothing and gets its error in the returned list,
        at its position; the others are stored and get their EnqueueResult. Returns after COMMIT.
        Raises OutboxError when the transaction itself fails (nothing of any call is stored).
        """
        outcomes: list[EnqueueResult | EventConflictError | InvalidEventError | OutboxError | None] = [
            None
        ] * len(calls)
        checked: dict[int, list[Problem]] = {}
        groups: list[tuple[Sequence[Event], str]] = []
        positions: list[int] = []
        for index, (events, source) in enumerate(calls):
            if not events:
                outcomes[index] = EnqueueResult(source=source)
                continue
            try:
                checked[index] = list(self.checker(events)) if self.checker is not None else []
                self._check_capacity(len(events))
            except (InvalidEventError, OutboxFullError) as exc:
                outcomes[index] = exc
                continue
            groups.append((events, source))
            positions.append(index)
        if groups:
            with self._group.commit_lock:
                stored = self.store.insert_groups(groups, to_us(self._clock()))
            for index, (events, source), inserted in zip(positions, groups, stored, strict=True):
                if isinstance(inserted, EventConflictError):
                    outcomes[index] = inserted
                else:
                    outcomes[index] = self._stored(events, inserted, checked[index], source)
        return [outcome for outcome in outcomes if outcome is not None]


def _result(
    events: Sequence[Event], inserted: InsertResult, checked: list[Problem], source: str
) -> EnqueueResult:
    """What one call stored, with its warnings (the events' own and the checker's) and late events."""
    return EnqueueResult(
        new=inserted.new,
        duplicates=inserted.duplicates,
        warnings=[w for e in events for w in e.warnings] + checked,
        late=[e.event_id for e in events if e.late],
        source=source,
        retimed=inserted.retimed,
    )
