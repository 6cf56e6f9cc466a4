"""Settle rows of a sent batch: delivered, retried later, dead, or back to pending untouched.

The rules are :func:`agent.delivery.backoff.classify`'s; :class:`Settler` carries out the settling
half (``agent.delivery.send`` the sending half), with the guarded transitions of the store (a row
another worker took after our lease ran out is not moved: ``lease_lost`` is logged):

- 2xx: the rows are delivered; ``ingested_count`` below the batch size counts duplicates Dodo ignored.
- 408/409/429/5xx/no answer: the rows go back to pending after a jittered exponential delay that
  honours Retry-After / X-RateLimit-Reset as a minimum, is capped so it does not push an event past
  Dodo's window, and feeds the destination-wide breaker; a 429 also slows the shared token bucket.
- a single event refused (400/422/413/other 4xx): it is dead, with its status and response.
- late rows under ``late_events = dead_letter`` (``Batch.expired``): dead as ``expired``, unsent.
  Every dead-lettering goes through :meth:`Settler.dead_letter` and its one ``events_dead_lettered``
  log line.
- not sent (paused, stopping, the destination failing): back to pending, the attempt refunded.

Every request is recorded (metrics and the outbox's request log) by :meth:`Settler.record`.
Thread-safe: one Settler serves every sender thread of a worker.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from agent.config import DeliverySettings
from agent.delivery.backoff import (
    DestinationBackoff,
    Outcome,
    cap_delay_before_deadline,
    dead_reason,
    deadline_for,
    parse_rate_limit_reset,
    retry_after_from_headers,
    retry_delay,
)
from agent.delivery.batch import Batch
from agent.delivery.client import SendResult
from agent.delivery.pacing import Pacer
from agent.logs import get_logger
from agent.ops import metrics
from agent.store import Claimed, OutboxStore
from agent.timestamps import from_us, to_us

log = get_logger(__name__)


class Settler:
    """Moves the rows of a batch part to their next state and records the request that decided it."""

    def __init__(
        self,
        store: OutboxStore,
        settings: DeliverySettings,
        *,
        owner: str,
        pacer: Pacer,
        breaker: DestinationBackoff,
        rand: Callable[[], float],
    ) -> None:
        self.store = store
        self.settings = settings
        self.owner = owner
        self.pacer = pacer
        self.breaker = breaker
        self.rand = rand

    def owner_of(self, b: Batch) -> str:
        """The claim token guarding every settle of ``b``: the one its rows were claimed under."""
        return b.owner or self.owner

    def expire(self, b: Batch, now: float) -> None:
        """Dead-letter ``b.expired`` as ``expired``: too late to send (``late_events = dead_letter``)."""
        s = self.settings
        self.dead_letter(
            b,
            b.expired,
            "",
            "expired",
            now,
            f"the event time is older than Dodo's window ({s.window_seconds:g} s) minus the margin "
            f"({s.late_margin_seconds:g} s); [delivery] late_events = dead_letter",
        )

    def settle(
        self, b: Batch, lo: int, hi: int, path: str, outcome: Outcome, result: SendResult, now: float
    ) -> None:
        """Rows ``[lo, hi)`` of ``b`` after a final answer (delivered, retry, a single refused event)."""
        rows = b.rows[lo:hi]
        ids = [row.id for row in rows]
        duration_ms = round(result.duration * 1000, 1)
        common = {"batch_id": b.batch_id, "part": path or "-", "events": len(ids), "status": result.status}
        if outcome is Outcome.DELIVERED:
            restamped = [i for i in ids if i in b.restamped] if b.restamped else []
            moved = self.store.mark_delivered(
                ids, owner=self.owner_of(b), now_us=to_us(now), restamped=restamped
            )
            duplicates = 0
            if result.ingested_count is not None and result.ingested_count < len(ids):
                duplicates = len(ids) - result.ingested_count
            b.counts.delivered += moved
            b.counts.restamped += len(restamped)
            b.counts.duplicates_ignored += duplicates
            metrics.record_settled(delivered=moved, restamped=len(restamped), ignored_duplicates=duplicates)
            metrics.observe_latencies([row.enqueued_at_us for row in rows], now)
            self.record(result, outcome, len(ids), now, delivered=len(ids), duplicates=duplicates)
            self._check_lease(b, moved, len(ids), path)
            log.info(
                "batch_delivered",
                **common,
                delivered=moved,
                duplicates=duplicates,
                restamped=len(restamped),
                duration_ms=duration_ms,
            )
        elif outcome is Outcome.RETRY:
            delay = self._retry_delay(b, rows, result, now)
            moved = self.store.mark_retry(
                ids,
                owner=self.owner_of(b),
                next_attempt_us=to_us(now + delay),
                error=_error_text(result),
                refund=False,
            )
            b.counts.retried += moved
            metrics.record_settled(retried=moved)
            self.record(result, outcome, len(ids), now)
            self._check_lease(b, moved, len(ids), path)
            log.warning(
                "batch_retry_scheduled",
                **common,
                retry_in_s=round(delay, 3),
                attempts=max(row.attempts for row in rows),
                error=_error_text(result)[:300],
                duration_ms=duration_ms,
            )
        else:
            status = result.status if result.status is not None else 0
            self.dead_letter(b, rows, path, dead_reason(status), now, result.text, (result, outcome))

    def dead_letter(
        self,
        b: Batch,
        rows: Sequence[Claimed],
        path: str,
        reason: str,
        now: float,
        response: str,
        refusal: tuple[SendResult, Outcome] | None = None,
    ) -> None:
        """``rows`` → dead with ``reason`` and ``response``: the one place rows are dead-lettered.

        ``refusal`` is Dodo's answer to these rows sent on their own; None for rows never sent
        (expired), whose log line then has no ``response`` or ``duration_ms``.
        """
        ids = [row.id for row in rows]
        http_status = None if refusal is None else refusal[0].status
        moved = self.store.mark_dead(
            ids,
            owner=self.owner_of(b),
            now_us=to_us(now),
            reason=reason,
            http_status=http_status,
            response=response,
        )
        b.counts.dead += moved
        metrics.record_settled(dead=moved, reason=reason)
        answer: dict[str, Any] = {}
        if refusal is not None:
            result, outcome = refusal
            self.record(result, outcome, len(ids), now, dead=len(ids))
            answer = {"response": result.text[:300], "duration_ms": round(result.duration * 1000, 1)}
        self._check_lease(b, moved, len(ids), path)
        log.warning(
            "events_dead_lettered",
            batch_id=b.batch_id,
            part=path or "-",
            events=len(ids),
            status=http_status,
            reason=reason,
            event_ids=[row.event_id for row in rows[:10]],
            **answer,
        )

    def _retry_delay(self, b: Batch, rows: Sequence[Claimed], result: SendResult, now: float) -> float:
        """Jittered backoff, raised to the server's hint, capped by the batch's earliest deadline."""
        s = self.settings
        retry_after = retry_after_from_headers(result.headers, now)
        reset = None
        # X-RateLimit-Reset is on every answer; it is a hint only when the limit is what refused us.
        if result.status == 429 or result.headers.get("x-ratelimit-remaining") == "0":
            reset = parse_rate_limit_reset(result.headers.get("x-ratelimit-reset"), now)
        failures = max(row.attempts for row in rows)
        delay = retry_delay(
            failures, s.backoff_initial_seconds, s.backoff_max_seconds, self.rand(), retry_after, reset
        )
        timed = [row.ts_us for row in rows if row.id not in b.restamped]
        if timed:
            # A tick of slack so the retry is claimed before the agent itself would call it late.
            deadline = deadline_for(from_us(min(timed)), s.window_seconds, s.late_margin_seconds)
            delay = cap_delay_before_deadline(delay, now, deadline - s.interval_seconds)
        self.breaker.on_failure(now, delay)
        if result.status == 429:
            self.pacer.slow_down(time.monotonic(), retry_after if retry_after is not None else reset or 0.0)
        return delay

    def refund(self, b: Batch, lo: int, hi: int, why: str, due: float) -> None:
        """Back to pending, due at ``due``, attempt given back: nothing was learnt about these events."""
        ids = [row.id for row in b.rows[lo:hi]]
        moved = self.store.mark_retry(
            ids, owner=self.owner_of(b), next_attempt_us=to_us(due), error=why, refund=True
        )
        self._check_lease(b, moved, len(ids), "")

    def record(
        self,
        result: SendResult,
        outcome: Outcome,
        events: int,
        now: float,
        *,
        delivered: int = 0,
        dead: int = 0,
        duplicates: int = 0,
    ) -> None:
        """One request to Dodo that decided ``events`` rows, in the metrics and the outbox's request log."""
        metrics.record_request(outcome.value, result.status, result.duration, events)
        self.store.record_request(
            now_us=to_us(now),
            status=result.status,
            outcome=outcome.value,
            events=events,
            delivered=delivered,
            dead=dead,
            duplicates=duplicates,
            duration_ms=round(result.duration * 1000, 3),
        )

    def _check_lease(self, b: Batch, moved: int, expected: int, path: str) -> None:
        # Short: the lease ran out mid-send and another worker took (or settled) the rows. Dodo
        # ignores the repeated event_ids, so this costs a request, not a double bill.
        if moved < expected:
            log.warning("lease_lost", batch_id=b.batch_id, part=path or "-", expected=expected, settled=moved)


def _error_text(result: SendResult) -> str:
    if result.status is None:
        return result.error or result.text
    return f"HTTP {result.status}: {result.text}"
