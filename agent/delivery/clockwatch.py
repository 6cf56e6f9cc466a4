"""Clock repair: undo what a step back of the wall clock does to stored retry times and leases.

Contract: :meth:`ClockWatch.check` runs before every drain. At the first drain it brings in anything
stored further ahead than this agent could have scheduled (``Store.cap_future``): the clock stepped
back while the agent was down. Later, when the wall clock fell behind the monotonic one by more than
:data:`CLOCK_STEP_SECONDS` between two drains, it brings stored retry times and leases back by the
step (``Store.shift_back``), logs ``clock_stepped_back`` and returns the step so the caller moves its
own instants (the breaker, the pause's probe) too. (Before: a step back of an hour stalled retries,
and a dead worker's leases, for an hour.) See agent/store/clock.py. Not thread-safe: the worker calls
it from its one drain at a time.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from agent.config import DeliverySettings
from agent.delivery.backoff import MAX_HINT_SECONDS
from agent.logs import get_logger
from agent.store import OutboxStore
from agent.timestamps import to_us

log = get_logger(__name__)

CLOCK_STEP_SECONDS = 2.0
"""A wall clock falling behind the monotonic one by more than this between drains stepped back."""


class ClockWatch:
    """Compares ``clock`` (epoch seconds) with the monotonic clock from one drain to the next."""

    def __init__(
        self,
        store: OutboxStore,
        settings: DeliverySettings,
        clock: Callable[[], float],
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._settings = settings
        self._clock = clock
        self._monotonic = monotonic
        self._seen: tuple[float, float] | None = None  # (wall, monotonic) at the last check

    def check(self) -> float:
        """Repair the outbox after a step back of the wall clock; return the step in seconds (0.0: none)."""
        wall, mono = self._clock(), self._monotonic()
        last, self._seen = self._seen, (wall, mono)
        d = self._settings
        if last is None:
            longest = max(d.backoff_max_seconds, MAX_HINT_SECONDS) + d.interval_seconds
            self._store.cap_future(
                now_us=to_us(wall), max_delay_us=to_us(longest), lease_us=to_us(d.lease_seconds)
            )
            return 0.0
        step = last[0] + (mono - last[1]) - wall
        if step <= CLOCK_STEP_SECONDS:
            return 0.0
        moved = self._store.shift_back(now_us=to_us(wall), step_us=to_us(step))
        log.warning("clock_stepped_back", seconds=round(step, 3), rows_rescheduled=moved)
        return step
