"""The fleet's one rate budget: every agent on the outbox takes a slot from the store before each
request to Dodo, so N agents together stay within one account's ``requests_per_minute`` and ``burst``.

:class:`SharedBudget` has the :class:`~agent.delivery.pacing.Pacer` shape the senders use:

- :meth:`SharedBudget.acquire` takes a slot (the store's GCRA row, one atomic statement timed by the
  database clock: see agent/store/rules.py) or sleeps as long as the store says, and asks again.
- :meth:`SharedBudget.slow_down` after a 429: nobody in the fleet gets a slot before Retry-After has
  passed (then one per interval, not a burst), and the fleet's rate is halved.
- The rate grows back additively: each slot taken while slowed adds ``recovery_per_success``
  requests/min, about 20 slots from half to the configured rate. This is the AIMD of the local
  :class:`~agent.delivery.pacing.TokenBucket`, kept in the shared row instead: a 429 means the account
  is over its limit, which is the fleet's doing, not one agent's, so the whole fleet slows down.
  (Counting a slot rather than a success is the price of no extra write per request; a failing
  request is retried later, and one more 429 halves the rate again.)

``requests_per_minute = 0`` means unlimited: slots are free, but a 429's wait still holds everyone.
A store error while taking a slot propagates (the batch's rows stay leased and go out again after
the lease): a fleet that cannot reach its store must not send unmetered.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from agent.delivery.pacing import wait_for_slot
from agent.store import OutboxStore
from agent.timestamps import US

SLOT = "dodo_requests"
"""The store's slot row every agent of the outbox takes its requests to Dodo from."""


class SharedBudget:
    """The fleet's budget, seen from one agent. Thread-safe (the store serialises the takes)."""

    def __init__(self, store: OutboxStore, rate_per_minute: float, burst: int) -> None:
        """Raises ValueError for ``burst`` < 1."""
        if burst < 1:
            raise ValueError(f"burst must be >= 1, got {burst}")
        self._store = store
        self.configured_rate_per_minute = max(0.0, float(rate_per_minute))
        self.burst = burst
        self.unlimited = self.configured_rate_per_minute <= 0
        self.recovery_per_success = max(1.0, self.configured_rate_per_minute / 20)
        self._blocked_until = float("-inf")
        self._lock = threading.Lock()

    @property
    def rate_per_minute(self) -> float:
        """The fleet's current rate (requests/min): the configured one, or lower after a 429."""
        slowed = self._store.slot_rate(SLOT)
        return self.configured_rate_per_minute if slowed is None else slowed

    @property
    def blocked_until(self) -> float | None:
        """The end (monotonic seconds) of the last wait this agent imposed after a 429, or None."""
        return None if self._blocked_until == float("-inf") else self._blocked_until

    def try_acquire(self, now: float) -> float:
        """Take a slot: 0.0 when taken, else the seconds to wait. ``now`` is unused: the store's
        clock decides, so every agent measures the budget on one clock."""
        wait_us = self._store.take_slot(
            SLOT,
            per_minute=self.configured_rate_per_minute,
            burst=self.burst,
            recovery=self.recovery_per_success,
        )
        return wait_us / US

    def acquire(
        self,
        clock: Callable[[], float],
        sleep: Callable[[float], object],
        timeout: float | None = None,
    ) -> bool:
        """Block until a slot is taken: True then; False on timeout or when ``sleep`` returns True
        (``threading.Event.wait``: asked to stop). ``clock`` is monotonic, for the timeout only.
        Raises OutboxError when the store cannot be asked."""
        return wait_for_slot(self.try_acquire, clock, sleep, timeout)

    def slow_down(self, now: float, seconds: float) -> None:
        """After a 429 at ``now`` (monotonic): no slot for the fleet for ``seconds``, rate halved."""
        with self._lock:
            self._blocked_until = max(self._blocked_until, now + max(0.0, seconds))
        self._store.hold_slot(
            SLOT,
            delay_us=round(max(0.0, seconds) * US),
            per_minute=self.configured_rate_per_minute,
            burst=self.burst,
            slow_down=True,
        )

    def on_success(self) -> None:
        """Nothing: the rate grows back as slots are taken (see the module's docstring)."""
