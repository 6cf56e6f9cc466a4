"""Send one claimed batch and settle every row of it: delivered, retried later, dead, or paused.

The rules are :func:`agent.delivery.backoff.classify`'s; this module carries them out:

- 2xx: the rows are delivered; ``ingested_count`` below the batch size counts duplicates Dodo ignored.
- 408/409/429/5xx/no answer: the rows go back to pending after a jittered exponential delay that
  honours Retry-After / X-RateLimit-Reset as a minimum, is capped so it does not push an event past
  Dodo's window, and feeds the destination-wide breaker; a 429 also slows the shared token bucket.
- 400/422/other 4xx on several events (BISECT) and 413 (SPLIT): the batch is narrowed down until
  the offending events stand alone; only they become dead, each with the status and response of its
  own single-event request. An event is never dead-lettered without having been refused on its own.
  - When the refusal names the offender's position (``events[36].metadata...``), that event is sent
    alone and the rest whole: about 2 extra requests per offender. A wrong or missing position costs
    nothing extra: the method falls back to
  - bisection: halves are re-sent, recursively. When a parent was refused and its left half then
    went through, the right half must hold the offender, so it is split without being sent whole:
    k poison events among n cost about 1.2·k·log2(n) extra requests, never n.
  Once the destination breaker opens mid-way, the parts not yet sent go back to pending for later.
- 401/403/404: the rows go back to pending with the attempt refunded, and the gate (the worker) pauses
  delivery; the rest of the batch is not sent while paused.

One :class:`BatchRunner` is shared by the sender threads of a worker; each :meth:`BatchRunner.run`
call handles one batch in the calling thread.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import structlog

from agent.config import DeliverySettings
from agent.delivery.backoff import (
    DestinationBackoff,
    Outcome,
    cap_delay_before_deadline,
    classify,
    dead_reason,
    deadline_for,
    parse_rate_limit_reset,
    retry_after_from_headers,
    retry_delay,
)
from agent.delivery.batch import US, Batch, Counts
from agent.delivery.client import DodoClient, SendResult, build_body
from agent.delivery.pacing import TokenBucket
from agent.ops import metrics
from agent.store import Claimed, OutboxStore

log = structlog.get_logger("dodo_outbox.worker")

# "events[36].metadata.note: ..." in a refusal: the position of the offending event in the request.
_POSITION = re.compile(r"\bevents\[(\d+)\]")
# Outcomes after which the whole (sub-)batch is settled without another request.
_FINAL = (Outcome.DELIVERED, Outcome.RETRY, Outcome.REJECT, Outcome.TOO_LARGE)


class Gate(Protocol):
    """The worker's pause switch, as the sender threads see it."""

    def blocked(self) -> bool:
        """True while delivery is paused: send nothing more."""
        ...

    def observe(self, outcome: Outcome, result: SendResult, now: float) -> None:
        """Every answer passes here: a 401/403/404 pauses delivery, a proof of life resumes it."""
        ...


class BatchRunner:
    """Sends batches and settles their rows. Thread-safe: share one between sender threads."""

    def __init__(
        self,
        store: OutboxStore,
        client: DodoClient,
        settings: DeliverySettings,
        *,
        owner: str,
        pacer: TokenBucket,
        breaker: DestinationBackoff,
        gate: Gate,
        rand: Callable[[], float],
    ) -> None:
        self.store = store
        self.client = client
        self.settings = settings
        self.owner = owner
        self.pacer = pacer
        self.breaker = breaker
        self.gate = gate
        self.rand = rand
        self.use_hints = True
        """Use the offender's position when a refusal names it (``events[36]...``); else bisect."""

    def run(
        self, batch: Batch, key: str, now: Callable[[], float], stop: threading.Event, probe: bool = False
    ) -> Counts:
        """Send ``batch`` (bisecting or splitting as answers require) and settle every row.

        ``now`` gives epoch seconds; ``stop`` set means shutting down: parts not yet sent go back to
        pending, attempt refunded. ``probe``: send the first request even while the gate is blocked
        (the worker's paused-delivery probe). Returns the counts; raises only store errors.
        """
        if batch.rows:
            self._part(batch, 0, len(batch.rows), "", None, key, now, stop, probe)
        return batch.counts

    def _send(
        self,
        b: Batch,
        lo: int,
        hi: int,
        path: str,
        key: str,
        now: Callable[[], float],
        stop: threading.Event,
        probe: bool,
    ) -> tuple[SendResult, Outcome] | None:
        """One request for rows ``[lo, hi)``, unless delivery is paused, the destination failing or
        the worker stopping: then the rows go back to pending (refunded) and None is returned."""
        if not probe and self.gate.blocked():
            self._refund(b, lo, hi, "delivery paused", now())
            return None
        retry_at = self.breaker.retry_at
        if path and retry_at is not None:
            # Mid-bisection the destination started failing: stop narrowing down; the part is
            # sent again, whole, when the breaker lets requests through.
            self._refund(b, lo, hi, "the destination is failing; bisection resumes later", retry_at)
            return None
        if stop.is_set() or not self.pacer.acquire(time.monotonic, stop.wait):
            self._refund(b, lo, hi, "stopped before sending", now())
            return None
        result = self.client.send(build_body(b.payloads[lo:hi]), key)
        b.counts.sent += 1
        outcome = classify(result.status, hi - lo)
        self._observe(outcome, result, now())
        return result, outcome

    def _part(
        self,
        b: Batch,
        lo: int,
        hi: int,
        path: str,
        inferred: SendResult | None,
        key: str,
        now: Callable[[], float],
        stop: threading.Event,
        probe: bool = False,
    ) -> Outcome | None:
        """Send rows ``[lo, hi)`` of ``b`` and settle them; returns the outcome (None: not sent).

        ``inferred`` is a refusal of a larger request when this part is known to hold an offender:
        it is split without being sent whole.
        """
        first: Outcome | None = None
        while lo < hi:  # a loop, not recursion, for the "rest" after each isolated offender
            n = hi - lo
            if inferred is None:
                sent = self._send(b, lo, hi, path, key, now, stop, probe)
                if sent is None:
                    return first
                result, outcome = sent
            else:
                result, outcome = inferred, Outcome.BISECT
            first = first or outcome
            if outcome in _FINAL:
                self._settle(b, lo, hi, path, outcome, result, now())
                return first
            if outcome in (Outcome.PAUSE_AUTH, Outcome.PAUSE_NOT_FOUND):
                self._refund(b, lo, hi, f"delivery paused after HTTP {result.status}", now())
                self._record(result, outcome, n, now())
                return first
            hint = None
            if inferred is None:
                self._record(result, outcome, n, now())
                hint = self._hint(result, n) if outcome is Outcome.BISECT else None
                log.info(
                    "batch_bisected" if outcome is Outcome.BISECT else "batch_split",
                    batch_id=b.batch_id,
                    part=path or "-",
                    events=n,
                    status=result.status,
                    suspect=hint,
                    duration_ms=round(result.duration * 1000, 1),
                    response=result.text[:300],
                )
            if hint is not None:
                # The refusal names the offender's position: send it alone, then the rest whole.
                # A wrong hint costs nothing: the event goes through alone, and the rest (which
                # must then hold the offender) is bisected without being re-sent whole.
                b.swap(lo, lo + hint)
                alone = self._part(b, lo, lo + 1, path + "s", None, key, now, stop)
                lo, path, probe = lo + 1, path + "r", False
                inferred = result if alone is Outcome.DELIVERED and hi - lo > 1 else None
                continue
            # Halve. Each half may itself be delivered, retried, halved again or dead.
            mid = lo + n // 2
            left = self._part(b, lo, mid, path + "0", None, key, now, stop)
            knows_right_bad = outcome is Outcome.BISECT and left is Outcome.DELIVERED and hi - mid > 1
            self._part(b, mid, hi, path + "1", result if knows_right_bad else None, key, now, stop)
            return first
        return first

    def _hint(self, result: SendResult, n: int) -> int | None:
        """The position of the refused event when the answer names it (``events[36].event_id: ...``)."""
        if not self.use_hints:
            return None
        found = _POSITION.search(result.text)
        position = int(found.group(1)) if found else -1
        return position if 0 <= position < n else None

    def _observe(self, outcome: Outcome, result: SendResult, now: float) -> None:
        """Feed the breaker, the token bucket and the gate with one answer."""
        if outcome is Outcome.RETRY:
            pass  # the breaker hears of it in _retry, with the delay chosen there
        elif outcome in (Outcome.PAUSE_AUTH, Outcome.PAUSE_NOT_FOUND):
            self.breaker.end_probe()
        else:
            self.breaker.on_success()
            if outcome is Outcome.DELIVERED:
                self.pacer.on_success()
        self.gate.observe(outcome, result, now)

    def _settle(
        self, b: Batch, lo: int, hi: int, path: str, outcome: Outcome, result: SendResult, now: float
    ) -> None:
        rows = b.rows[lo:hi]
        ids = [row.id for row in rows]
        now_us = int(now * US)
        duration_ms = round(result.duration * 1000, 1)
        common = {"batch_id": b.batch_id, "part": path or "-", "events": len(ids), "status": result.status}
        if outcome is Outcome.DELIVERED:
            restamped = [i for i in ids if i in b.restamped] if b.restamped else []
            moved = self.store.mark_delivered(ids, owner=self.owner, now_us=now_us, restamped=restamped)
            duplicates = 0
            if result.ingested_count is not None and result.ingested_count < len(ids):
                duplicates = len(ids) - result.ingested_count
            b.counts.delivered += moved
            b.counts.restamped += len(restamped)
            b.counts.duplicates_ignored += duplicates
            metrics.record_settled(delivered=moved, restamped=len(restamped), ignored_duplicates=duplicates)
            metrics.observe_latencies([row.enqueued_at_us for row in rows], now)
            self._record(result, outcome, len(ids), now, delivered=len(ids), duplicates=duplicates)
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
                owner=self.owner,
                next_attempt_us=int((now + delay) * US),
                error=_error_text(result),
                refund=False,
            )
            b.counts.retried += moved
            metrics.record_settled(retried=moved)
            self._record(result, outcome, len(ids), now)
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
            reason = dead_reason(status)
            moved = self.store.mark_dead(
                ids,
                owner=self.owner,
                now_us=now_us,
                reason=reason,
                http_status=result.status,
                response=result.text,
            )
            b.counts.dead += moved
            metrics.record_settled(dead=moved, reason=reason)
            self._record(result, outcome, len(ids), now, dead=len(ids))
            self._check_lease(b, moved, len(ids), path)
            log.warning(
                "events_dead_lettered",
                **common,
                reason=reason,
                event_ids=[row.event_id for row in rows[:10]],
                response=result.text[:300],
                duration_ms=duration_ms,
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
            deadline = deadline_for(min(timed) / US, s.window_seconds, s.late_margin_seconds)
            delay = cap_delay_before_deadline(delay, now, deadline - s.interval_seconds)
        self.breaker.on_failure(now, delay)
        if result.status == 429:
            self.pacer.slow_down(time.monotonic(), retry_after if retry_after is not None else reset or 0.0)
        return delay

    def _refund(self, b: Batch, lo: int, hi: int, why: str, due: float) -> None:
        """Back to pending, due at ``due``, attempt given back: nothing was learnt about these events."""
        ids = [row.id for row in b.rows[lo:hi]]
        moved = self.store.mark_retry(
            ids, owner=self.owner, next_attempt_us=int(due * US), error=why, refund=True
        )
        self._check_lease(b, moved, len(ids), "")

    def _record(
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
        metrics.record_request(outcome.value, result.status, result.duration, events)
        self.store.record_request(
            now_us=int(now * US),
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
