"""The HTTP intake's group commit: ONE thread commits every waiting request in one transaction.

A request validates its body on the event loop, then `await committer.submit(events)`: its events go
on a queue, and the committer thread takes everything queued, stores it with
`Outbox.enqueue_calls` (one transaction; each request atomic on its own, so a conflict refuses that
request only) and resolves each request's future on its event loop (`call_soon_threadsafe`, once
per batch). `submit` returns only after the COMMIT returned, so a 200 is never sent for an event that
is not on disk. This replaces one thread hop per request (and a pool of worker threads contending for
the GIL and the commit lock) with one hand-off per batch.

Bounded: past `max_waiting_events` queued, `submit` raises CommitterBusy (the endpoint answers 429
with Retry-After; the SDK retries it). `stop()` refuses new requests (CommitterClosed: 503), commits
what is queued, and answers every waiting request: none is left hanging.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from agent.errors import OutboxError
from agent.events import Event
from agent.logs import get_logger
from agent.outbox import EnqueueResult, Outbox

log = get_logger(__name__)

MAX_WAITING_EVENTS = 100_000
"""Events queued for the committer before new requests get 429 (a request alone is always taken)."""
MAX_BATCH_EVENTS = 20_000
"""Events one transaction takes at most (at least one whole request): bounds one commit's latency."""
BUSY_RETRY_AFTER = 1.0


class CommitterBusy(Exception):
    """The commit queue is full: retry after `retry_after` seconds. Nothing was stored."""

    def __init__(self, message: str, retry_after: float = BUSY_RETRY_AFTER) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class CommitterClosed(Exception):
    """The committer is stopped (the agent is shutting down). Nothing was stored."""


@dataclass(slots=True)
class _Call:
    events: Sequence[Event]
    source: str
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[EnqueueResult]


Outcome = EnqueueResult | BaseException
Pairs = list[tuple["asyncio.Future[EnqueueResult]", Outcome]]


def _settle(pairs: Pairs) -> None:
    """On the event loop: resolve each request's future (a cancelled one, whose client left, is skipped)."""
    for future, outcome in pairs:
        if future.done():
            continue
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)


class Committer:
    """The commit thread of one HTTP intake. Thread-safe; `submit` is called on an event loop.

    `start()` (the app's lifespan) opens it, again after a stop; `submit` starts the thread of a
    committer never started (an app served without lifespan), never one stopped. `stop(timeout)`
    drains and joins; idempotent.
    """

    def __init__(
        self,
        outbox: Outbox,
        *,
        max_waiting_events: int = MAX_WAITING_EVENTS,
        max_batch_events: int = MAX_BATCH_EVENTS,
    ) -> None:
        self.outbox = outbox
        self.max_waiting_events = max_waiting_events
        self.max_batch_events = max_batch_events
        self._queue: list[_Call] = []
        self._waiting_events = 0
        self._cond = threading.Condition(threading.Lock())
        self._thread: threading.Thread | None = None
        self._closed = False
        self._idle = False  # the thread sleeps on _cond; guarded by it
        # Requests of the current turn of each event loop, not yet queued (touched on that loop only).
        self._staged: dict[asyncio.AbstractEventLoop, list[_Call]] = {}
        self._staged_events = 0

    @property
    def waiting_events(self) -> int:
        return self._waiting_events

    def start(self) -> None:
        with self._cond:
            self._closed = False
            self._spawn()

    def _spawn(self) -> None:
        """Start the thread if there is none and the committer is open (caller holds _cond)."""
        if self._thread is None and not self._closed:
            self._thread = threading.Thread(target=self._run, name="dodo-outbox-committer", daemon=True)
            self._thread.start()

    async def submit(self, events: Sequence[Event], source: str = "http") -> EnqueueResult:
        """Store `events` as one atomic call; return once committed.

        Raises CommitterBusy (queue full), CommitterClosed (stopped), and what the outbox refuses the
        call with (EventConflictError, InvalidEventError, OutboxFullError, OutboxError).
        """
        if self._closed:
            raise CommitterClosed("the agent is shutting down; retry shortly")
        if self._thread is None:
            with self._cond:
                self._spawn()
        queued = self._waiting_events + self._staged_events
        if queued and queued + len(events) > self.max_waiting_events:
            raise CommitterBusy(
                f"{queued} events are waiting to be committed (the limit is {self.max_waiting_events}): "
                "the disk is slower than the intake; retry shortly"
            )
        loop = asyncio.get_running_loop()
        future: asyncio.Future[EnqueueResult] = loop.create_future()
        staged = self._staged.get(loop)
        if staged is None:
            # The requests that arrive in this turn of the loop go to the committer together: one lock
            # and at most one thread wake-up for all of them, instead of one per request.
            staged = self._staged[loop] = []
            loop.call_soon(self._hand_over, loop)
        staged.append(_Call(events, source, loop, future))
        self._staged_events += len(events)
        return await future

    def _hand_over(self, loop: asyncio.AbstractEventLoop) -> None:
        """On `loop`: queue its staged requests for the committer (refused if it stopped meanwhile)."""
        calls = self._staged.pop(loop, [])
        count = sum(len(call.events) for call in calls)
        self._staged_events -= count
        with self._cond:
            closed = self._closed
            if not closed:
                self._queue.extend(calls)
                self._waiting_events += count
                if self._idle:
                    self._cond.notify()
        if closed:
            _settle(
                [
                    (call.future, CommitterClosed("the agent is shutting down; retry shortly"))
                    for call in calls
                ]
            )

    def stop(self, timeout: float = 10.0) -> None:
        """Refuse new requests, commit what is queued, join the thread (up to `timeout` seconds).

        A request still queued after the timeout (the disk hangs) is refused with OutboxError, so no
        request waits forever; the batch being committed then is answered when its commit returns.
        """
        with self._cond:
            self._closed = True
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
        with self._cond:
            left, self._queue = self._queue, []
            self._waiting_events = 0
            if thread is not None and not thread.is_alive() and self._thread is thread:
                self._thread = None  # a later start() runs a new one
        if left:
            error = OutboxError("the agent stopped before this request was committed; nothing was stored")
            self._resolve(left, [error] * len(left))

    def _take(self) -> list[_Call] | None:
        """The next batch (None: closed and nothing left). Blocks while the queue is empty."""
        with self._cond:
            while not self._queue:
                if self._closed:
                    return None
                self._idle = True
                self._cond.wait()
                self._idle = False
            count, size = 0, 0
            for call in self._queue:
                if count and size + len(call.events) > self.max_batch_events:
                    break
                count += 1
                size += len(call.events)
            batch, self._queue = self._queue[:count], self._queue[count:]
            self._waiting_events -= size
            return batch

    def _run(self) -> None:
        while (batch := self._take()) is not None:
            outcomes: Sequence[EnqueueResult | BaseException]
            try:
                outcomes = self.outbox.enqueue_calls([(call.events, call.source) for call in batch])
            except OutboxError as exc:
                outcomes = [exc] * len(batch)
            except Exception as exc:  # a bug: every request of the batch learns it, the thread goes on
                log.error("intake_commit_crashed", error=repr(exc), exc_info=exc)
                outcomes = [OutboxError(f"the commit failed: {exc!r}")] * len(batch)
            self._resolve(batch, outcomes)

    @staticmethod
    def _resolve(batch: Sequence[_Call], outcomes: Sequence[EnqueueResult | BaseException]) -> None:
        """Hand each outcome to its request's event loop: one wake-up per loop per batch."""
        by_loop: dict[asyncio.AbstractEventLoop, Pairs] = {}
        for call, outcome in zip(batch, outcomes, strict=True):
            by_loop.setdefault(call.loop, []).append((call.future, outcome))
        for loop, pairs in by_loop.items():
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits on it
                loop.call_soon_threadsafe(_settle, pairs)
