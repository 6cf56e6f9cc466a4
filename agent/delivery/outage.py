"""Says when the outbox cannot be used and when it can again: one line each, a reminder a minute.

The worker's drain is the probe: it reads and writes the outbox at every tick (every
``interval_seconds``, sooner when woken), so its outcome tells whether the outbox answers. Its ticks
report here (``failed`` with the OutboxError, ``succeeded`` after a tick that reached the outbox);
this module alone decides what to log:

- ``outbox_unreachable`` (error): the first failure after a success, with the outbox's location (a
  URL with its password masked) and the error. Events are refused meanwhile (HTTP 503 + Retry-After),
  and delivery waits; nothing acknowledged is lost (committed rows stay, leased rows are sent again
  once their lease passes);
- ``outbox_still_unreachable`` (error): at most one every ``remind_seconds`` while it lasts, with
  how long it has been down and the latest error, instead of one line per failed tick;
- ``outbox_reconnected`` (warning): the first success after failures, with how long it was down.

The database driver reconnects by itself (psycopg_pool drops a broken connection when it comes
back and opens a new one); nothing here retries anything, it only says what happened. Its own
warnings about each failed connection attempt and each dropped connection (a dozen lines in the
first seconds of an outage) are filtered out of the agent's log (`quiet_pool_warnings`): these
lines say it once; its other warnings pass.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from agent.logs import get_logger

log = get_logger(__name__)

REMIND_SECONDS = 60.0
"""While the outbox stays unreachable, one reminder line this often (not one per failed tick)."""


_POOL_OUTAGE_NOISE = (
    "error connecting in ",
    "reconnection attempt in pool ",
    "discarding closed connection",
    "discarding broken connection",
)


class _PoolOutageNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg.startswith(_POOL_OUTAGE_NOISE))


_pool_filter = _PoolOutageNoise()


def quiet_pool_warnings() -> None:
    """Drop psycopg_pool's per-attempt connection warnings (idempotent); the outage lines replace them."""
    logger = logging.getLogger("psycopg.pool")
    if _pool_filter not in logger.filters:
        logger.addFilter(_pool_filter)


class OutboxOutage:
    """The outage state of one outbox, as the worker's ticks see it. Thread-safe.

    ``location`` names the outbox in the lines (already masked: ``OutboxStore.location``); ``clock``
    is monotonic seconds.
    """

    def __init__(
        self,
        location: str,
        *,
        remind_seconds: float = REMIND_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.location = location
        self.remind_seconds = remind_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._since: float | None = None  # when the current outage began (monotonic)
        self._reminded = 0.0
        self._failures = 0
        self._error = ""

    @property
    def down(self) -> bool:
        """Whether the last tick that reached for the outbox failed."""
        return self._since is not None

    @property
    def error(self) -> str:
        """The latest error of the current outage ("" while the outbox answers)."""
        return self._error if self.down else ""

    def failed(self, exc: BaseException, began: float | None = None) -> None:
        """A tick failed on the outbox with ``exc``: log it if it is news (or a reminder is due).

        ``began`` (the clock's seconds) is when the failed tick started: a call to an unreachable
        database fails only after the pool's timeout, and the outage is counted from its start."""
        now = self._clock()
        with self._lock:
            self._failures += 1
            self._error = str(exc) or type(exc).__name__
            if self._since is None:
                self._since = min(now, now if began is None else began)
                self._reminded = now
                line = "outbox_unreachable"
            elif now - self._reminded >= self.remind_seconds:
                self._reminded = now
                line = "outbox_still_unreachable"
            else:
                return
            down_for, failures, error = now - self._since, self._failures, self._error
        log.error(
            line,
            outbox=self.location,
            error=error,
            down_seconds=round(down_for, 1),
            failed_ticks=failures,
            action=(
                "events are refused with 503 (clients retry) and delivery waits; the agent reconnects by "
                "itself and logs outbox_reconnected. Check that the database is up and reachable"
            ),
        )

    def succeeded(self) -> None:
        """A tick reached the outbox: end the outage, if there was one, with a line saying how long."""
        if self._since is None:  # the common case: no lock, no line
            return
        now = self._clock()
        with self._lock:
            since, failures = self._since, self._failures
            if since is None:
                return
            self._since, self._failures, self._error = None, 0, ""
        log.warning(
            "outbox_reconnected",
            outbox=self.location,
            down_seconds=round(now - since, 1),
            failed_ticks=failures,
        )
