"""The delivery pause: the one switch that stops sending on a configuration fault, and its probe,
shared by every agent on the outbox (the fleet).

Contract. One :class:`Pause` is shared by the worker (which asks whether to drain, and when to probe)
and the batch runner (whose every answer passes :meth:`Pause.observe`). Kinds:

- ``no_key``: no API key is usable (:meth:`Pause.no_key`); nothing is sent. It ends when a key is
  found (:meth:`Pause.key_found`); whether that key works, the next answer says. This one is the
  agent's own (its key source): it is recorded for ``status`` but other agents do not adopt it.
- ``auth``: Dodo answered 401/403 (the key is wrong or read-only).
- ``not_found``: Dodo answered 404 (``[dodo] base_url`` is wrong).

``auth`` and ``not_found`` pause the fleet: the pause is recorded in the outbox
(``agent.ops.status.write_pause``, with its ``kind`` and the agent that saw it) and every agent reads
that record at the start of its tick (:meth:`Pause.sync`, one key lookup) and pauses too. While
paused, no row is dead-lettered and no attempt consumed (the runner refunds what it does not send),
and one probe batch goes out every ``auth_retry_seconds`` for the whole fleet: the probe is a slot of
the store (``pause_probe``, taken atomically on the store's clock), so whichever agent takes it
probes, with its key read afresh. The first answer that proves the key and the URL work (anything
but a retry or a pause) clears the record, and every agent resumes at its next tick. A re-read key
(SIGHUP) makes the fleet's next probe due at once (:meth:`Pause.probe_now`).

A pause recorded by an earlier process (it died paused) is adopted at the first :meth:`sync`; a
starting agent has just read its key, so the fleet's probe is made due at once, and the first probe
that goes through clears the record. Instants are epoch seconds. Thread-safe.
"""

from __future__ import annotations

import threading
from typing import Any

from agent.config import DeliverySettings
from agent.delivery.backoff import Outcome
from agent.delivery.client import SendResult
from agent.delivery.keys import ApiKeys
from agent.errors import OutboxError
from agent.logs import get_logger
from agent.ops import status
from agent.store import OutboxStore
from agent.timestamps import US

log = get_logger(__name__)

PROBE_SLOT = "pause_probe"
"""The store's slot row the fleet's probes are taken from."""
FLEET_KINDS = ("auth", "not_found")
"""The kinds that pause every agent: the fleet shares one key and one base URL."""


class Pause:
    """Whether delivery is paused, why (``reason``, a sentence for people; ``kind``, a short code),
    since when, and when the next probe is due."""

    def __init__(
        self,
        store: OutboxStore,
        settings: DeliverySettings,
        *,
        base_url: str,
        keys: ApiKeys,
        agent_id: str = "",
    ) -> None:
        self._store = store
        self._retry_every = settings.auth_retry_seconds
        self._base_url = base_url
        self._keys = keys
        self._agent_id = agent_id
        self._reason: str | None = None
        self._kind: str | None = None
        self._since = 0.0
        self._next_probe = 0.0
        self._lock = threading.Lock()
        # A pause recorded by an earlier process is cleared by our first delivery.
        record = status.read_pause(store)
        self._stale = record is not None
        if record is not None and record.get("kind") in FLEET_KINDS:
            # A (re)started agent has read its key afresh, as on SIGHUP: it may probe at once.
            store.reset_slot(PROBE_SLOT)

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

    def sync(self, now: float) -> None:
        """Follow the fleet: pause when the outbox records an ``auth``/``not_found`` pause another
        agent saw, resume when such a record is gone. One key lookup; call it once per tick."""
        record = status.read_pause(self._store)
        kind = None if record is None else record.get("kind")
        with self._lock:
            # An agent without a key keeps its own pause: it has nothing to probe with.
            if (
                record is not None
                and kind in FLEET_KINDS
                and self._kind != "no_key"
                and self._reason != record.get("reason")
            ):
                adopted = self._reason is None
                self._reason, self._kind = str(record.get("reason")), str(kind)
                if adopted:
                    self._since = float(record.get("since") or now)
                    self._next_probe = now  # the probe slot decides; see take_probe
            elif record is None and self._kind in FLEET_KINDS:
                adopted = False
            else:
                return
        if record is not None:
            if adopted:
                log.warning("delivery_paused", kind=kind, reason=record.get("reason"), by=record.get("by"))
            return
        self._resume(now, clear=False, by="another agent")

    def take_probe(self, now: float) -> bool:
        """While paused: whether this agent sends the probe now. For ``auth``/``not_found`` one
        probe per ``auth_retry_seconds`` goes out for the whole fleet (the store's probe slot);
        ``no_key`` is timed locally (finding a key is this agent's business)."""
        if self._kind in FLEET_KINDS:
            wait_us = self._store.take_slot(PROBE_SLOT, per_minute=60.0 / self._retry_every, burst=1)
            with self._lock:
                self._next_probe = now + (wait_us / US if wait_us else self._retry_every)
            return wait_us == 0
        with self._lock:
            if now < self._next_probe:
                return False
            self._next_probe = now + self._retry_every
            return True

    def probe_now(self) -> None:
        """Make the next probe due at once, for the fleet too (the key was read again: SIGHUP)."""
        with self._lock:
            self._next_probe = 0.0
        try:
            self._store.reset_slot(PROBE_SLOT)
        except OutboxError as exc:  # the local probe is due anyway; the fleet's waits its turn
            log.warning("probe_reset_failed", error=str(exc))

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
        self._resume(now, clear=_own_no_key(status.read_pause(self._store), self._agent_id))
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
            since = self._since
        if not changed:
            return
        record = status.read_pause(self._store)
        if kind in FLEET_KINDS:
            # The fleet's next probe is a period away, whoever takes it.
            self._store.hold_slot(
                PROBE_SLOT,
                delay_us=round(self._retry_every * US),
                per_minute=60.0 / self._retry_every,
                burst=1,
            )
            self._write(reason, since, kind)
        elif record is None or record.get("kind") == "no_key":
            self._write(reason, since, kind)  # never over the fleet's auth/not_found pause
        log.warning(
            "delivery_paused",
            kind=kind,
            reason=reason,
            status=http_status,
            probe_every_s=self._retry_every,
        )

    def _write(self, reason: str | None, since: float, kind: str | None) -> None:
        status.write_pause(self._store, reason, since, kind=kind, by=self._agent_id or None)

    def _resume(self, now: float, *, clear: bool | None = None, by: str | None = None) -> None:
        """Resume locally; clear the record when `clear` (None: when our proof of life clears it)."""
        with self._lock:
            was, self._reason, self._kind = self._reason, None, None
            self._stale = False
        if clear is None:
            clear = _clearable(status.read_pause(self._store), self._agent_id)
        if clear:
            self._write(None, now, None)
        if was is not None:
            extra: dict[str, Any] = {} if by is None else {"by": by}
            log.info("delivery_resumed", paused_for_s=round(now - self._since, 3), previous=was, **extra)


def _clearable(record: dict[str, Any] | None, agent_id: str) -> bool:
    """Whether our proof of life clears the recorded pause: the fleet's kinds (and records without a
    kind, from an earlier version) yes; another agent's ``no_key`` no (it still has no key)."""
    if record is None:
        return False
    return record.get("kind") != "no_key" or not record.get("by") or record.get("by") == agent_id


def _own_no_key(record: dict[str, Any] | None, agent_id: str) -> bool:
    """Whether the recorded pause is our own ``no_key`` (finding a key ends only that one)."""
    if record is None or record.get("kind") not in ("no_key", None):
        return False
    return not record.get("by") or record.get("by") == agent_id
