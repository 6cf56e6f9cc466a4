"""What every template shares: deterministic event ids, the event dict, and the never-break recorder.

Event ids: `derive_event_id(kind, *parts)` is `"{kind}_" + sha256(canonical JSON of [kind, *parts])[:32]`
(128 bits, hex). The parts are the inputs that identify ONE usage (a provider response id, a request id,
a stream id and sequence, ...), so recording the same usage twice gives the same id, the outbox stores
it once, and Dodo bills it once. The kind and the event name are part of the hash, so one response
recorded under two event names gives two ids instead of a conflict.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any, Protocol

import orjson

from agent.errors import DodoOutboxError
from agent.logs import get_logger
from agent.outbox import EnqueueResult

log = get_logger(__name__)

Metadata = Mapping[str, str | int | float | bool]


class TemplateError(DodoOutboxError, ValueError):
    """A template was given inputs it cannot build a billable event from; the message says what to pass."""


class Enqueuer(Protocol):
    """What templates record into: an `agent.Outbox` (or anything with its `enqueue`)."""

    def enqueue(self, event: Mapping[str, Any]) -> EnqueueResult: ...


FAILURES: Counter[str] = Counter()
"""Events a template could not record, by template kind (`llm`, `gateway`, `timing`, ...)."""
_failures_lock = threading.Lock()
_sequence = itertools.count()


def derive_event_id(kind: str, *parts: object) -> str:
    """A stable id for one usage: `{kind}_` + the first 32 hex digits of sha256 over [kind, *parts].

    Parts must be JSON-serialisable (str, int, float, bool, None); the same parts always give the same id,
    in any process, on any machine.
    """
    digest = hashlib.sha256(orjson.dumps([kind, *parts])).hexdigest()
    return f"{kind}_{digest[:32]}"


def occurrence_key() -> tuple[int, int, int]:
    """Identifies one occurrence when the caller gives no id: (wall-clock ns, pid, per-process counter).

    Not random: the id is fixed when the usage happens, so recording that same occurrence again (a retry
    of the enqueue) gives the same id. Two different occurrences never share one.
    """
    return time.time_ns(), os.getpid(), next(_sequence)


def build_event(
    event_id: str,
    customer_id: str,
    event_name: str,
    metadata: Mapping[str, Any],
    extra: Metadata | None = None,
    timestamp: str | datetime | None = None,
) -> dict[str, Any]:
    """The event dict Dodo expects. `extra` keys are added but never override the template's own keys."""
    if not isinstance(customer_id, str) or not customer_id:
        raise TemplateError(f"customer_id must be a non-empty string, got {customer_id!r}")
    merged: dict[str, Any] = dict(extra or {})
    merged.update(metadata)
    event: dict[str, Any] = {"event_id": event_id, "customer_id": customer_id, "event_name": event_name}
    if merged:
        event["metadata"] = merged
    if timestamp is not None:
        event["timestamp"] = timestamp.isoformat() if isinstance(timestamp, datetime) else timestamp
    return event


def count_failure(kind: str) -> None:
    with _failures_lock:
        FAILURES[kind] += 1


def safe_record(outbox: Enqueuer, event: Mapping[str, Any], kind: str) -> EnqueueResult | None:
    """Enqueue, but never raise: a failure is logged (`usage_not_recorded`) and counted in FAILURES.

    For call sites where the usage already happened (a provider call was paid for, a response was
    sent): raising there would make the application retry work that was done, or fail a user's request.
    """
    try:
        return outbox.enqueue(event)
    except Exception as exc:
        count_failure(kind)
        log.error(
            "usage_not_recorded",
            template=kind,
            event_id=event.get("event_id"),
            event_name=event.get("event_name"),
            error=f"{type(exc).__name__}: {exc}",
        )
        return None


def read_field(source: object, *names: str) -> Any:
    """The first of `names` set on `source`: a dict key, an attribute, or a key of its `model_dump()`.

    Reads SDK response objects (pydantic models, dataclasses, SimpleNamespace) and their JSON dicts alike,
    without importing any SDK. None when none is set.
    """
    if source is None:
        return None
    if isinstance(source, Mapping):
        return next((source[n] for n in names if source.get(n) is not None), None)
    for name in names:
        value = getattr(source, name, None)
        if value is not None:
            return value
    dump = getattr(source, "model_dump", None)
    if callable(dump):
        try:
            data = dump()
        except Exception:
            return None
        if isinstance(data, Mapping):
            return read_field(data, *names)
    return None


class ClosingIterable:
    """A WSGI response body passed through; `on_close` runs once, after the body's own `close()`."""

    def __init__(self, body: Iterable[bytes], on_close: Callable[[], None]) -> None:
        self._body = body
        self._on_close: Callable[[], None] | None = on_close

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._body)

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if callable(close):
                close()
        finally:
            on_close, self._on_close = self._on_close, None
            if on_close is not None:
                on_close()


def require_count(name: str, value: object) -> int:
    """A whole, non-negative number (bool refused: True is not a byte count)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise TemplateError(f"{name} must be a whole number >= 0, got {value!r}")
    return value
