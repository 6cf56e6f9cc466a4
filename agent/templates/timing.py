"""Time-range metering: how long something ran, as `durationMs` (or `durationSeconds`/`durationMinutes`).

Durations are measured with a monotonic clock (`time.monotonic`, injectable), so a wall-clock step
(NTP) cannot make them negative or huge.

Event id: `event_id` when given; else `derive_event_id("time", event_name, customer_id, invocation_id)`
when the caller names the execution (a job id plus its attempt, a Lambda request id); else derived from
the start time (ns), the process id and a per-process counter, fixed when the measurement starts.
`invocation_id` names one execution: a second execution under the same id (a retried job with
another duration) is a conflict the outbox refuses, so put the attempt number in it.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ParamSpec, TypeVar

from agent.templates._common import (
    Enqueuer,
    Metadata,
    TemplateError,
    build_event,
    derive_event_id,
    occurrence_key,
    safe_record,
)

P = ParamSpec("P")
R = TypeVar("R")

DEFAULT_EVENT_NAME = "function_execution"
UNITS = {
    "ms": ("durationMs", 1000.0),
    "seconds": ("durationSeconds", 1.0),
    "minutes": ("durationMinutes", 1 / 60),
}


def duration_event(
    customer_id: str,
    seconds: float,
    *,
    unit: str = "ms",
    event_name: str = DEFAULT_EVENT_NAME,
    event_id: str | None = None,
    invocation_id: str | None = None,
    metadata: Metadata | None = None,
    timestamp: str | datetime | None = None,
) -> dict[str, Any]:
    """The event for a duration of `seconds`, in `unit` (`ms`, `seconds`, `minutes`), rounded to 1 µs/ms.

    Raises TemplateError for an unknown unit or a negative or non-finite duration.
    """
    if unit not in UNITS:
        raise TemplateError(f"unit must be one of {', '.join(UNITS)}, got {unit!r}")
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not 0 <= seconds < float("inf"):
        raise TemplateError(f"the duration must be a finite number of seconds >= 0, got {seconds!r}")
    key, factor = UNITS[unit]
    if event_id is None:
        parts: tuple[object, ...] = (invocation_id,) if invocation_id else occurrence_key()
        event_id = derive_event_id("time", event_name, customer_id, *parts)
    values = {key: round(seconds * factor, 6)}
    return build_event(event_id, customer_id, event_name, values, metadata, timestamp)


@dataclass
class Measurement:
    """What `measure` yields: `seconds` once the block ended, the `event` it built, whether it was stored."""

    started: float
    seconds: float | None = None
    event: dict[str, Any] | None = None
    recorded: bool = False
    metadata: dict[str, str | int | float | bool] = field(default_factory=dict)
    """Keys to add to the event; the block may fill this in (e.g. `memory_mb`)."""


@contextmanager
def measure(
    outbox: Enqueuer,
    customer_id: str,
    *,
    unit: str = "ms",
    event_name: str = DEFAULT_EVENT_NAME,
    event_id: str | None = None,
    invocation_id: str | None = None,
    metadata: Metadata | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[Measurement]:
    """Time the `with` block and record it, also when the block raises (the time was used).

    A refused enqueue is logged and counted (`FAILURES["timing"]`), never raised: the block's own
    result or exception is what the caller sees.
    """
    if unit not in UNITS:
        raise TemplateError(f"unit must be one of {', '.join(UNITS)}, got {unit!r}")
    if event_id is None:
        # Fixed before the block runs, so the id does not depend on when recording happens.
        parts: tuple[object, ...] = (invocation_id,) if invocation_id else occurrence_key()
        event_id = derive_event_id("time", event_name, customer_id, *parts)
    measurement = Measurement(started=clock(), metadata=dict(metadata or {}))
    try:
        yield measurement
    finally:
        measurement.seconds = max(0.0, clock() - measurement.started)
        measurement.event = duration_event(
            customer_id,
            measurement.seconds,
            unit=unit,
            event_name=event_name,
            event_id=event_id,
            metadata=measurement.metadata,
        )
        measurement.recorded = safe_record(outbox, measurement.event, "timing") is not None


def timed(
    outbox: Enqueuer,
    customer_id: str | Callable[..., str],
    *,
    unit: str = "ms",
    event_name: str = DEFAULT_EVENT_NAME,
    metadata: Metadata | None = None,
    function_name: str | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a function (sync or async) to record each call's duration, with `function_name`.

    `customer_id` is a string or a callable receiving the call's arguments. Each call is its own
    execution (no invocation id), so two calls are two events. For an async function the enqueue (one
    SQLite commit, milliseconds) runs on the event loop after the call.
    """

    def decorate(func: Callable[P, R]) -> Callable[P, R]:
        extra = {"function_name": function_name or func.__qualname__, **(metadata or {})}

        def customer(*args: Any, **kwargs: Any) -> str:
            return customer_id(*args, **kwargs) if callable(customer_id) else customer_id

        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                with measure(
                    outbox,
                    customer(*args, **kwargs),
                    unit=unit,
                    event_name=event_name,
                    metadata=extra,
                    clock=clock,
                ):
                    return await func(*args, **kwargs)

            return run_async  # type: ignore[return-value]

        @functools.wraps(func)
        def run(*args: P.args, **kwargs: P.kwargs) -> R:
            with measure(
                outbox,
                customer(*args, **kwargs),
                unit=unit,
                event_name=event_name,
                metadata=extra,
                clock=clock,
            ):
                return func(*args, **kwargs)

        return run

    return decorate
