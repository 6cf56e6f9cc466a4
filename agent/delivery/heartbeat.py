"""The agent's row in the fleet's registry: alive since when, last seen, and its share of the work.

:class:`Heartbeat` counts what the worker claimed and delivered, and writes the counts with a beat at
most every ``agent.ops.fleet.BEAT_SECONDS`` (the worker asks after each tick, the scheduler on its
own clock so a long tick does not look like a dead agent), and once more when the agent stops. A
failed beat (the outbox unreachable) keeps its counts for the next one and never stops delivery.
Beats also delete agents not seen for ``FORGET_SECONDS`` (stopped ones after
``FORGET_STOPPED_SECONDS``), at the first beat and then every minute.
Thread-safe.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable

from agent.errors import OutboxError
from agent.logs import get_logger
from agent.ops.fleet import BEAT_SECONDS, FORGET_SECONDS, FORGET_STOPPED_SECONDS
from agent.store import OutboxStore
from agent.timestamps import US

log = get_logger(__name__)

_FORGET_EVERY = 60.0


class Heartbeat:
    """One agent's beats. ``clock`` is monotonic seconds (when the next beat is due)."""

    def __init__(
        self, store: OutboxStore, agent_id: str, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._store = store
        self.agent_id = agent_id
        self._host = socket.gethostname()
        self._pid = os.getpid()
        self._clock = clock
        self._claimed = 0
        self._delivered = 0
        self._last: float | None = None
        self._forgot: float | None = None
        self._lock = threading.Lock()

    def count(self, *, claimed: int, delivered: int) -> None:
        """Add a tick's work to the next beat."""
        with self._lock:
            self._claimed += claimed
            self._delivered += delivered

    def beat(self, *, force: bool = False, stopped: bool = False) -> bool:
        """Write the beat when one is due (or ``force``); returns whether one was written."""
        now = self._clock()
        with self._lock:
            if not force and not stopped and self._last is not None and now - self._last < BEAT_SECONDS:
                return False
            claimed, delivered = self._claimed, self._delivered
            self._claimed = self._delivered = 0
            self._last = now
        try:
            self._store.heartbeat(
                self.agent_id,
                host=self._host,
                pid=self._pid,
                claimed=claimed,
                delivered=delivered,
                stopped=stopped,
            )
            if self._forgot is None or now - self._forgot >= _FORGET_EVERY:
                self._forgot = now
                self._store.forget_agents(round(FORGET_SECONDS * US), round(FORGET_STOPPED_SECONDS * US))
        except OutboxError as exc:
            self.count(claimed=claimed, delivered=delivered)  # kept for the next beat
            log.warning("heartbeat_failed", agent_id=self.agent_id, error=str(exc))
            return False
        return True
