"""Stream metering: many small chunks become one `bytes` event per interval, and one at the stream's end.

Event id: `{stream_id}:{sequence}`, the sequence counting the events of one stream from
`start_sequence` (0). `stream_id` must name ONE stream for good (a session or connection id, a UUID
kept with the stream): a process that resumes a stream after a restart passes the next sequence as
`start_sequence`, or its first event would collide with one already stored.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime
from types import TracebackType
from typing import Any

from agent.outbox import EnqueueResult
from agent.templates._common import Enqueuer, Metadata, TemplateError, build_event, require_count

DEFAULT_EVENT_NAME = "stream_consumption"


def stream_event(
    customer_id: str,
    bytes: int,  # shadows the builtin on purpose: the metadata key
    *,
    stream_id: str,
    sequence: int,
    stream_type: str | None = None,
    event_name: str = DEFAULT_EVENT_NAME,
    metadata: Metadata | None = None,
    timestamp: str | datetime | None = None,
) -> dict[str, Any]:
    """One slice of a stream: `bytes`, `stream_type` (if given), `stream_id`; id `{stream_id}:{sequence}`."""
    if not stream_id:
        raise TemplateError("stream_id must be a non-empty string naming one stream")
    values: dict[str, Any] = {"bytes": require_count("bytes", bytes), "stream_id": stream_id}
    if stream_type:
        values["stream_type"] = stream_type
    event_id = f"{stream_id}:{require_count('sequence', sequence)}"
    return build_event(event_id, customer_id, event_name, values, metadata, timestamp)


class StreamMeter:
    """Counts a stream's bytes and enqueues one event per `interval_seconds` and one at `close()`.

    Thread-safe: `add` may be called from several threads. There is no timer thread: a due interval is
    flushed by the next `add` (or by `flush_if_due()` from the caller's own timer) and the rest by
    `close()`. `interval_seconds=None` gives one event per stream. An empty slice sends nothing.

    When the outbox refuses a flush (full, closed), the bytes stay counted and go with the next flush,
    under the same sequence number; the error is raised to the caller, who decides whether to go on.
    """

    def __init__(
        self,
        outbox: Enqueuer,
        customer_id: str,
        stream_id: str,
        *,
        stream_type: str | None = None,
        event_name: str = DEFAULT_EVENT_NAME,
        interval_seconds: float | None = 60.0,
        start_sequence: int = 0,
        metadata: Metadata | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if interval_seconds is not None and interval_seconds <= 0:
            raise TemplateError(f"interval_seconds must be > 0 or None, got {interval_seconds!r}")
        self.outbox = outbox
        self.customer_id = customer_id
        self.stream_id = stream_id
        self.stream_type = stream_type
        self.event_name = event_name
        self.interval_seconds = interval_seconds
        self.metadata = metadata
        self.clock = clock
        self.sequence = require_count("start_sequence", start_sequence)
        self.pending_bytes = 0
        self.total_bytes = 0
        self.closed = False
        self._window_start = clock()
        self._lock = threading.Lock()

    def add(self, chunk: int | bytes | bytearray | memoryview) -> EnqueueResult | None:
        """Count a chunk (or a byte count). Returns the flush's result when this closed an interval."""
        size = require_count("chunk size", chunk) if isinstance(chunk, int) else len(chunk)
        with self._lock:
            if self.closed:
                raise TemplateError(f"stream {self.stream_id!r} is closed")
            self.pending_bytes += size
            self.total_bytes += size
            return self._flush_locked() if self._due_locked() else None

    def _due_locked(self) -> bool:
        return (
            self.interval_seconds is not None and self.clock() - self._window_start >= self.interval_seconds
        )

    def flush_if_due(self) -> EnqueueResult | None:
        """Flush when the interval has passed (for callers with their own timer)."""
        with self._lock:
            return self._flush_locked() if self._due_locked() and not self.closed else None

    def flush(self) -> EnqueueResult | None:
        """Enqueue the bytes counted since the last event now; None when there were none."""
        with self._lock:
            return self._flush_locked()

    def _flush_locked(self) -> EnqueueResult | None:
        self._window_start = self.clock()
        if self.pending_bytes == 0:
            return None
        event = stream_event(
            self.customer_id,
            self.pending_bytes,
            stream_id=self.stream_id,
            sequence=self.sequence,
            stream_type=self.stream_type,
            event_name=self.event_name,
            metadata=self.metadata,
        )
        result = self.outbox.enqueue(event)
        # Only once it is stored: a refused flush keeps its bytes and its sequence number.
        self.sequence += 1
        self.pending_bytes = 0
        return result

    def close(self) -> EnqueueResult | None:
        """Flush what is left and refuse further chunks. Safe to call twice."""
        with self._lock:
            if self.closed:
                return None
            result = self._flush_locked()
            self.closed = True
            return result

    def __enter__(self) -> StreamMeter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
