"""The delivery pause: the one switch that stops sending on a configuration fault, and its probe.

Contract. One :class:`Pause` is shared by the worker (which asks whether to drain, and when to probe)
and the batch runner (whose every answer passes :meth:`Pause.observe`). Kinds:

- ``no_key``: no API key is usable (:meth:`Pause.no_key`); nothing is sent. It ends when a key is
  found (:meth:`Pause.key_found`); whether that key works, the next answer says.
- ``auth``: Dodo answered 401/403 (the key is wrong or read-only).
- ``not_found``: Dodo answered 404 (``[dodo] base_url`` is wrong).

While paused, no row is dead-lettered and no attempt consumed (the runner refunds what it does not
send), and one probe batch may go every ``auth_retry_seconds`` (:meth:`Pause.take_probe`); the first
answer that proves the key and the URL work (anything but a retry or a pause) resumes delivery.
A pause recorded by an earlier process (it died paused) is cleared by our first such answer.

The pause is recorded in the outbox (``agent.ops.status.write_pause``) whenever it changes, so
``dodo-outbox status`` shows it from any process; this is the only writer. Instants are epoch
seconds. Thread-safe.
"""

from __future__ import annotations

import threading

from agent.config import DeliverySettings
from agent.delivery.backoff import Outcome
from agent.delivery.client import SendResult
from agent.delivery.keys import ApiKeys
from agent.logs import get_logger
from agent.ops import status
from agent.store import OutboxStore

log = get_logger(__name__)


class Pause:
    """Whether delivery is paused, why (``reason``, a sentence for people; ``kind``, a short code),
    since when, and when the next probe is due."""

    def __init__(
        self, store: OutboxStore, settings: DeliverySettings, *, base_url: str, keys: ApiKeys
    ) -> None:
        self._store = store
        self._retry_every = settings.auth_retry_seconds
        self._base_url = base_url
        self._keys = keys
        self._reason: str | None = None
        self._kind: str | None = None
        self._since = 0.0
        self._next_probe = 0.0
        self._lock = threading.Lock()
        # A pause recorded by an earlier process is cleared by our first delivery.
        self._stale = status.read_pause(store) is not None

    def __repr__(self) -> str:
        return f"Pause(kind={self._kind!r}, reason={self._reason!r})"

    @property
    def reason(self) -> str | None:
        """The pause as a sentence (what is wrong, what to do), or None while delivery runs."""
        return self._reason

    @property
    def kind(self) -> str | None:
        """``no_key``, ``auth`` or ``not_found`` while paused, else None."""
        return self._kind

    @property
    def next_probe(self) -> float:
        """When the next probe may go (epoch seconds); meaningful while paused."""
        return self._next_probe

    def blocked(self) -> bool:
        """True while delivery is paused: send nothing but the probe."""
        return self._reason is not None

    def take_probe(self, now: float) -> bool:
        """While paused: whether a probe is due at ``now``; if so, the next one is scheduled."""
        with self._lock:
            if now < self._next_probe:
                return False
            self._next_probe = now + self._retry_every
            return True

    def probe_now(self) -> None:
        """Make the next probe due at once (the key was read again: SIGHUP, a fixed key file)."""
        with self._lock:
            self._next_probe = 0.0

    def shift_back(self, seconds: float) -> None:
        """The wall clock stepped back by ``seconds``: keep the probe as far ahead as it was."""
        with self._lock:
            self._next_probe -= seconds

    def no_key(self, now: float) -> None:
        """Pause: no API key is usable (the key source's explanation becomes the reason)."""
        self._pause("no_key", self._keys.source, now, None)

    def key_found(self, now: float) -> bool:
        """A key is there now: end a ``no_key`` pause. Returns whether one ended."""
        if self._kind != "no_key":
            return False
        self._resume(now)
        return True

    def observe(self, outcome: Outcome, result: SendResult, now: float) -> None:
        """Every answer passes here: pause on 401/403/404; resume on any that shows the key and URL work."""
        if outcome is Outcome.PAUSE_NOT_FOUND:
            self._pause(
                "not_found",
                f"base URL {self._base_url} answered 404 to POST /events/ingest: check [dodo] base_url",
                now,
                result.status,
            )
        elif outcome is Outcome.PAUSE_AUTH:
            self._pause(
                "auth",
                f"Dodo refused the API key from {self._keys.source} with HTTP {result.status} "
                f"({result.text[:120]}): fix the key; it is re-read before each probe, every "
                f"{self._retry_every:g} s",
                now,
                result.status,
            )
        elif outcome is not Outcome.RETRY and (self._reason is not None or self._stale):
            self._resume(now)

    def _pause(self, kind: str, reason: str, now: float, http_status: int | None) -> None:
        with self._lock:
            changed = self._reason != reason
            if self._reason is None:
                self._since = now
            self._reason, self._kind = reason, kind
            self._next_probe = now + self._retry_every
        if changed:
            status.write_pause(self._store, reason, now)
            log.warning(
                "delivery_paused",
                kind=kind,
                reason=reason,
                status=http_status,
                probe_every_s=self._retry_every,
            )

    def _resume(self, now: float) -> None:
        with self._lock:
            was, self._reason, self._kind = self._reason, None, None
            self._stale = False
        status.write_pause(self._store, None, now)
        if was is not None:
            log.info("delivery_resumed", paused_for_s=round(now - self._since, 3), previous=was)
