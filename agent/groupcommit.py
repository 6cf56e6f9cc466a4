"""Group commit: concurrent enqueue calls from many threads share one commit.

The first caller to find no commit in progress becomes the leader and commits every call queued so
far, its own included; the others wait, each on its own lock, and usually find their work durable
when they wake. One thread alone pays one commit per call, with no hand-off to another thread.

Every route an enqueue takes into the store, side by side (SQLite costs; the code is
`agent.store.sqlite.queue.insert_groups`, `SqliteStore.insert_on`, `agent.store.sqlite.insert`):

| strategy                 | runs when                              | costs                                  |
|--------------------------|----------------------------------------|----------------------------------------|
| autocommit INSERT        | the batch (all groups) has <= 32 rows  | 1 statement, its own transaction; any  |
|                          | and every event_id is new              | repeat writes nothing, falls through   |
| one-call transaction     | one group, not all new or over 32 rows | BEGIN IMMEDIATE, INSERTs, COMMIT; the  |
|                          | (the uncontended case)                 | transaction is the group's atomicity   |
| all groups in one INSERT | several groups, every event_id new     | 1 transaction of power-of-two          |
|                          |                                        | multi-row INSERTs; rolled back if not  |
|                          |                                        | all rows were new                      |
| per-group savepoints     | several groups, after the all-new try  | a 2nd transaction; SAVEPOINT + INSERT  |
|                          | rolled back (a repeat, a conflict)     | + RELEASE per group; a conflict rolls  |
|                          |                                        | back its own group only                |
| the caller's transaction | `enqueue(..., conn=app_conn)`; not via | INSERTs on the app's connection, in    |
|                          | this module: `OutboxStore.insert_on`   | its transaction; never commits; no     |
|                          |                                        | capacity check                         |

Each commit with synchronous=FULL is an fsync: group commit turns N concurrent calls into one.
`Outbox` (agent/outbox.py) owns one `GroupCommit` and hands it every call without `conn=`.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from agent.errors import EventConflictError, OutboxError
from agent.events import Event
from agent.store import InsertResult, OutboxStore


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


class GroupCommit:
    """The commit queue of one store: `commit(events, source, now_us)` from any thread."""

    def __init__(self, store: OutboxStore) -> None:
        self.store = store
        self._queue: list[_Pending] = []
        self._queue_lock = threading.Lock()
        self.commit_lock = threading.Lock()
        """Held while a commit runs; `Outbox.close` takes it so calls in progress finish first."""
        self._leading = False  # a leader is committing; guarded by _queue_lock

    def commit(self, events: Sequence[Event], source: str, now_us: int) -> InsertResult:
        """Store one enqueue call (atomic), sharing the commit with concurrent calls. Returns after
        the commit. Raises EventConflictError (nothing of this call stored), OutboxFullError, OutboxError."""
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
            return self._alone(events, source, now_us)
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

    def _alone(self, events: Sequence[Event], source: str, now_us: int) -> InsertResult:
        """The leader's path when nobody was waiting: commit this call alone, then hand on the lead.

        The same as _lead with a batch of one, without the queue's bookkeeping (the uncontended
        single-thread case is the library's most common call).
        """
        try:
            with self.commit_lock:
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
            with self.commit_lock:
                self._commit_batch(batch, now_us)
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

    def _commit_batch(self, batch: list[_Pending], now_us: int) -> None:
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
