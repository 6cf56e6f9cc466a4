"""The library API: `Outbox(path).enqueue(event)`. Validates, then commits before returning.

Group commit: concurrent `enqueue` calls from many threads share one transaction. The first caller to
find no commit in progress becomes the leader and commits every call queued so far, its own included;
the others wait on the commit lock and usually find their work already durable when they get it. One
thread alone pays one commit per call, with no hand-off to another thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from agent.errors import EventConflictError, InvalidEventError, OutboxError, OutboxFullError, Problem
from agent.events import MAX_EVENT_AGE_SECONDS, Event, check_event, validate_many
from agent.store import InsertResult, Retimed, Store, StoreOptions, insert_in_transaction

if TYPE_CHECKING:
    import sqlite3

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


class _Pending:
    """One enqueue call in the group-commit queue.

    `wake` is None for a call that leads at once. A call that has to wait gets a lock that is held
    from the start; its thread blocks acquiring it, and the leader releases it once the call is settled
    (`done`) or to promote the call to lead the next batch.
    """

    __slots__ = ("done", "error", "events", "result", "source", "wake")

    def __init__(self, events: Sequence[Event], source: str) -> None:
        self.events = events
        self.source = source
        self.result: InsertResult | None = None
        self.error: BaseException | None = None
        self.done = False
        self.wake: threading.Lock | None = None


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
        store: Store | None = None,
        checker: Checker | None = None,
        max_event_age: float = MAX_EVENT_AGE_SECONDS,
    ) -> None:
        self.store = store or Store(path, StoreOptions(synchronous=synchronous))
        self.path = self.store.path
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.max_event_age = max_event_age
        """Seconds: older events are refused (`[intake] max_event_age`); every intake validates with it."""
        self._used_bytes = 0
        self.source = source
        self._clock = clock
        self._queue: list[_Pending] = []
        self._queue_lock = threading.Lock()
        self._commit_lock = threading.Lock()
        self._leading = False  # a leader is committing; guarded by _queue_lock
        self._listeners: list[Listener] = []
        self.checker = checker
        self._backlog = 0
        self._backlog_checked = -1.0

    @classmethod
    def open(
        cls, path: str | Path | None = None, *, config: str | Path | None = None, **kwargs: Any
    ) -> Outbox:
        """Open the outbox named by `path`, or by the config file (`--config` / DODO_OUTBOX_CONFIG)."""
        from agent import config as config_module

        settings = config_module.load(config)
        kwargs.setdefault("synchronous", settings.outbox.synchronous)
        kwargs.setdefault("max_events", settings.outbox.max_events)
        kwargs.setdefault("max_bytes", settings.outbox.max_bytes)
        kwargs.setdefault("max_event_age", settings.intake.max_event_age)
        return cls(path or settings.outbox_path, **kwargs)

    def __enter__(self) -> Outbox:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the file. Calls in progress finish first."""
        with self._commit_lock:
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
        self, event: Mapping[str, Any], *, conn: sqlite3.Connection | None = None, source: str | None = None
    ) -> EnqueueResult:
        """Validate and durably store one event; return once it is on disk.

        With `conn`, the event is written on that connection inside its open transaction instead (the
        transactional outbox: it commits or rolls back with the caller's own change).
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
        conn: sqlite3.Connection | None = None,
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
        self, events: Sequence[Event], *, conn: sqlite3.Connection | None = None, source: str | None = None
    ) -> EnqueueResult:
        """Store events that were validated already (intake paths validate first to report problems)."""
        source = source or self.source
        if not events:
            return EnqueueResult(source=source)
        checked = list(self.checker(events)) if self.checker is not None else []
        now_us = int(self._clock() * 1_000_000)
        if conn is not None:
            inserted = insert_in_transaction(conn, events, source, now_us)
        else:
            self._check_capacity(len(events))
            inserted = self._group_commit(events, source, now_us)
        result = EnqueueResult(
            new=inserted.new,
            duplicates=inserted.duplicates,
            warnings=[w for e in events for w in e.warnings] + checked,
            late=[e.event_id for e in events if e.late],
            source=source,
            retimed=inserted.retimed,
        )
        if conn is None:
            self._backlog += len(result.new)
            for listener in self._listeners:
                listener(result)
        return result

    def _group_commit(self, events: Sequence[Event], source: str, now_us: int) -> InsertResult:
        item: _Pending | None = None
        with self._queue_lock:
            # The queue holds calls only while a leader commits. With none, this call leads at once:
            # one thread alone pays one commit per call, with no hand-off to another thread.
            if self._leading:
                item = _Pending(events, source)
                item.wake = threading.Lock()
                item.wake.acquire()
                self._queue.append(item)
            else:
                self._leading = True
        if item is None:
            return self._commit_alone(events, source, now_us)
        assert item.wake is not None
        # Each waiter sleeps on its own lock (not on one shared lock or condition): the leader wakes
        # exactly the calls it settled and one successor, so no convoy forms through a shared lock.
        item.wake.acquire()
        if not item.done:
            self._lead(item, now_us)
        if item.error is not None:
            raise item.error
        assert item.result is not None
        return item.result

    def _commit_alone(self, events: Sequence[Event], source: str, now_us: int) -> InsertResult:
        """The leader's path when nobody was waiting: commit this call alone, then hand on the lead.

        The same as _lead with a batch of one, without the queue's bookkeeping (the uncontended
        single-thread case is the library's most common call).
        """
        try:
            with self._commit_lock:
                [outcome] = self.store.insert_groups([(events, source)], now_us)
        finally:
            self._hand_on()
        if isinstance(outcome, EventConflictError):
            raise outcome
        return outcome

    def _hand_on(self) -> None:
        """Promote the first waiting call to leader, or mark that no leader is committing."""
        with self._queue_lock:
            successor = self._queue[0] if self._queue else None
            if successor is None:
                self._leading = False
        if successor is not None and successor.wake is not None:
            successor.wake.release()  # not done: it wakes up as the next leader

    def _lead(self, own: _Pending, now_us: int) -> None:
        """Commit every queued call (`own` included) in one transaction, settle them, hand on the lead."""
        with self._queue_lock:
            batch, self._queue = self._queue, []
        try:
            with self._commit_lock:
                self._commit(batch, now_us)
        finally:
            for pending in batch:
                if not pending.done:  # only after an interrupt (KeyboardInterrupt) inside the commit
                    pending.error = OutboxError(
                        "the commit was interrupted; nothing of this call is known stored"
                    )
                    pending.done = True
            for pending in batch:
                if pending.wake is not None and pending is not own:
                    pending.wake.release()
            self._hand_on()

    def _commit(self, batch: list[_Pending], now_us: int) -> None:
        try:
            results = self.store.insert_groups([(p.events, p.source) for p in batch], now_us)
        except OutboxError as exc:
            for pending in batch:
                pending.error = exc
                pending.done = True
            return
        for pending, outcome in zip(batch, results, strict=True):
            if isinstance(outcome, EventConflictError):
                pending.error = outcome
            else:
                pending.result = outcome
            pending.done = True

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
                f"the outbox {self.path} holds {self._backlog} undelivered events, at its limit "
                f"max_events = {self.max_events}; nothing was stored. Retry later, or raise "
                "[outbox] max_events if the disk allows",
                retry_after=5.0,
            )
        if self.max_bytes and self._used_bytes >= self.max_bytes:
            raise OutboxFullError(
                f"the outbox {self.path} uses {self._used_bytes} bytes, at its limit max_bytes = "
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
            now_us = int(self._clock() * 1_000_000)
            with self._commit_lock:
                stored = self.store.insert_groups(groups, now_us)
            for index, (events, source), inserted in zip(positions, groups, stored, strict=True):
                if isinstance(inserted, EventConflictError):
                    outcomes[index] = inserted
                    continue
                result = EnqueueResult(
                    new=inserted.new,
                    duplicates=inserted.duplicates,
                    warnings=[w for e in events for w in e.warnings] + checked[index],
                    late=[e.event_id for e in events if e.late],
                    source=source,
                    retimed=inserted.retimed,
                )
                self._backlog += len(result.new)
                for listener in self._listeners:
                    listener(result)
                outcomes[index] = result
        return [outcome for outcome in outcomes if outcome is not None]
