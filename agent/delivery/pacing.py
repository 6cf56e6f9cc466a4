"""Request pacing: a local token bucket with AIMD slow-down on 429 (the meters pull paces itself with
it), the :class:`Pacer` shape senders take, and the wait loop both pacers share. Delivery paces with the
fleet's :class:`~agent.delivery.budget.SharedBudget` instead, the same rules kept in the outbox.

Pure apart from a lock: no clock is read and nothing sleeps inside. Callers pass ``now`` from one
monotonic clock (``time.monotonic()``); :meth:`TokenBucket.acquire` takes the clock and the sleep as
callables so tests drive it with a fake clock.

Dodo's default tier allows 40 requests/s burst and 240 requests/min sustained; configure below that.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol


class Pacer(Protocol):
    """What the senders need of a pacer: this module's local :class:`TokenBucket` (meters pull), or
    the fleet's :class:`~agent.delivery.budget.SharedBudget` (delivery)."""

    def acquire(
        self, clock: Callable[[], float], sleep: Callable[[float], object], timeout: float | None = None
    ) -> bool: ...

    def slow_down(self, now: float, seconds: float) -> None: ...

    def on_success(self) -> None: ...


class TokenBucket:
    """A token bucket: ``burst`` tokens, refilled at ``rate_per_minute``; one token per request.

    - :meth:`try_acquire` takes a token (returns 0.0) or says how long to wait (returns seconds > 0).
    - :meth:`slow_down` after a 429: no tokens until ``now + seconds``, the bucket is emptied, and the
      rate is halved (multiplicative decrease, floored at ``min_rate_per_minute``).
    - :meth:`on_success` after a delivered request: the rate grows back by ``recovery_per_success``
      requests/min (additive increase) up to the configured rate.
    - ``rate_per_minute <= 0`` means unlimited: tokens are free, but a slow-down's pause (the server's
      explicit "wait") is still honoured.

    The bucket starts full; time starts at the first call that passes ``now``. A clock that steps
    back is treated as standing still. All methods are thread-safe.
    """

    def __init__(
        self,
        rate_per_minute: float,
        burst: int,
        *,
        min_rate_per_minute: float | None = None,
        recovery_per_success: float | None = None,
    ) -> None:
        """Raises ValueError for ``burst`` < 1 on a limited bucket or a non-positive floor/step."""
        self.unlimited = rate_per_minute <= 0
        if not self.unlimited and burst < 1:
            raise ValueError(f"burst must be >= 1, got {burst}")
        self.configured_rate_per_minute = max(0.0, float(rate_per_minute))
        self.burst = max(1, burst)
        # Halving stops at 1 request/minute (or the configured rate if lower): slow, never stopped.
        floor = min(1.0, self.configured_rate_per_minute)
        if min_rate_per_minute is not None:
            floor = min_rate_per_minute
        # About 20 successes bring a halved rate back to the configured one.
        step = max(1.0, self.configured_rate_per_minute / 20)
        if recovery_per_success is not None:
            step = recovery_per_success
        if not self.unlimited and (floor <= 0 or step <= 0):
            raise ValueError("min_rate_per_minute and recovery_per_success must be > 0")
        self.min_rate_per_minute = min(floor, self.configured_rate_per_minute)
        self.recovery_per_success = step
        self._rate_per_minute = self.configured_rate_per_minute
        self._tokens = float(self.burst)
        self._last: float | None = None
        self._blocked_until = float("-inf")
        self._lock = threading.Lock()

    @property
    def rate_per_minute(self) -> float:
        """The current (possibly slowed-down) refill rate; 0.0 when unlimited."""
        return self._rate_per_minute

    @property
    def blocked_until(self) -> float | None:
        """The end of the last slow-down pause, or None if there never was one."""
        return None if self._blocked_until == float("-inf") else self._blocked_until

    def _refill(self, now: float) -> None:
        if self._last is None:
            self._last = now
            return
        # Time inside a slow-down pause earns nothing: the pause must not end in a burst.
        start = max(self._last, self._blocked_until)
        if now > start:
            self._tokens = min(float(self.burst), self._tokens + (now - start) * self._rate_per_minute / 60.0)
        self._last = max(self._last, now)

    def try_acquire(self, now: float) -> float:
        """Take one token at ``now``: returns 0.0 if taken, else the seconds to wait before trying again."""
        with self._lock:
            if now < self._blocked_until:
                return self._blocked_until - now
            if self.unlimited:
                return 0.0
            self._refill(now)
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return 0.0
            return (1.0 - self._tokens) * 60.0 / self._rate_per_minute

    def slow_down(self, now: float, seconds: float) -> None:
        """React to a 429 at ``now``: pause ``seconds`` (0 = no pause), empty the bucket, halve the rate.

        Overlapping pauses keep the later end, so several senders hitting 429 at once pause once.
        """
        with self._lock:
            self._blocked_until = max(self._blocked_until, now + max(0.0, seconds))
            if self.unlimited:
                return
            self._refill(now)
            self._tokens = 0.0
            self._rate_per_minute = max(self.min_rate_per_minute, self._rate_per_minute / 2)

    def on_success(self) -> None:
        """A request went through: grow the rate by ``recovery_per_success``, up to the configured rate.

        Tokens accrued since the last ``try_acquire`` are credited at the new rate (no ``now`` here);
        the error is at most one step's worth over that gap.
        """
        with self._lock:
            if self.unlimited:
                return
            self._rate_per_minute = min(
                self.configured_rate_per_minute, self._rate_per_minute + self.recovery_per_success
            )

    def acquire(
        self,
        clock: Callable[[], float],
        sleep: Callable[[float], object],
        timeout: float | None = None,
    ) -> bool:
        """Block until a token is taken; returns True then, False on timeout or when asked to stop.

        ``clock`` is the monotonic clock, ``sleep(seconds)`` waits. ``sleep`` may be
        ``threading.Event.wait``: when it returns True (the event was set, e.g. shutdown) this gives
        up and returns False. ``timeout`` bounds the total wait in seconds (None = no bound).
        """
        return wait_for_slot(self.try_acquire, clock, sleep, timeout)


def wait_for_slot(
    try_acquire: Callable[[float], float],
    clock: Callable[[], float],
    sleep: Callable[[float], object],
    timeout: float | None,
) -> bool:
    """Ask ``try_acquire(now)`` (0: taken, else seconds to wait) until it gives a slot: True then;
    False on ``timeout`` or when ``sleep`` returns True (``threading.Event.wait``: asked to stop)."""
    start = clock()
    while True:
        now = clock()
        wait = try_acquire(now)
        if wait <= 0.0:
            return True
        if timeout is not None:
            left = start + timeout - now
            if left <= 0.0:
                return False
            wait = min(wait, left)
        if sleep(wait) is True:
            return False
