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
- 401/403/404: the rows go back to pending with the attempt refunded, and the shared
  :class:`~agent.delivery.pause.Pause` pauses delivery; the rest of the batch is not sent while paused.
- Rows expired before sending (late under ``late_events = dead_letter``, set aside by
  :func:`agent.delivery.batch.prepare`) are dead-lettered as ``expired`` before the batch is sent.
  Every dead-lettering goes through one method and one ``events_dead_lettered`` log line.

Data flows one way: every answer goes to the breaker, the token bucket and the pause; nothing here
reaches back into the worker. One :class:`BatchRunner` is shared by the sender threads of a worker;
each :meth:`BatchRunner.run` call handles one batch in the calling thread.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

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
from agent.delivery.batch import Batch, Counts
from agent.delivery.client import DodoClient, SendResult, build_body
from agent.delivery.pacing import TokenBucket
from agent.delivery.pause import Pause
from agent.logs import get_logger
from agent.ops import metrics
from agent.store import Claimed, Store
from agent.timestamps import from_us, to_us

log = get_logger(__name__)

# "events[36].metadata.note: ..." in a refusal: the position of the offending event in the request.
_POSITION = re.compile(r"\bevents\[(\d+)\]")
# Outcomes after which the whole (sub-)batch is settled without another request.
_FINAL = (Outcome.DELIVERED, Outcome.RETRY, Outcome.REJECT, Outcome.TOO_LARGE)


@dataclass
class _Run:
    """One :meth:`BatchRunner.run`: what every request and every settle of its batch needs."""

    batch: Batch
    key: str
    now: Callable[[], float]
    """Epoch seconds."""
    stop: threading.Event
    """Set: shutting down; parts not yet sent go back to pending, attempt refunded."""
    probe: bool
    """The next request goes out even while paused (the pause's probe); only the run's first can."""

    def __repr__(self) -> str:  # never the key
        return f"_Run(batch_id={self.batch.batch_id!r}, probe={self.probe})"


class BatchRunner:
    """Sends batches and settles their rows. Thread-safe: share one between sender threads."""

    def __init__(
        self,
        store: Store,
        client: DodoClient,
        settings: DeliverySettings,
        *,
        owner: str,
        pacer: TokenBucket,
        breaker: DestinationBackoff,
        pause: Pause,
        rand: Callable[[], float],
    ) -> None:
        self.store = store
        self.client = client
        self.settings = settings
        self.owner = owner
        self.pacer = pacer
        self.breaker = breaker
        self.pause = pause
        self.rand = rand
        self.use_hints = True
        """Use the offender's position when a refusal names it (``events[36]...``); else bisect."""

    def run(
        self, batch: Batch, key: str, now: Callable[[], float], stop: threading.Event, probe: bool = False
    ) -> Counts:
        """Dead-letter ``batch.expired``, send ``batch`` (bisecting or splitting as answers require)
        and settle every row.

        ``now`` gives epoch seconds; ``stop`` set means shutting down: parts not yet sent go back to
        pending, attempt refunded. ``probe``: send the first request even while delivery is paused
        (the pause's probe). Returns the counts; raises only store errors.
        """
        run = _Run(batch, key, now, stop, probe)
        if batch.expired:
            s = self.settings
            self._dead_letter(
                batch,
                batch.expired,
                "",
                "expired",
                now(),
                f"the event time is older than Dodo's window ({s.window_seconds:g} s) minus the margin "
                f"({s.late_margin_seconds:g} s); [delivery] late_events = dead_letter",
            )
        if batch.rows:
            self._part(run, 0, len(batch.rows), "", None)
        return batch.counts

    def _send(self, run: _Run, lo: int, hi: int, path: str) -> tuple[SendResult, Outcome] | None:
        """One request for rows ``[lo, hi)``, unless delivery is paused, the destination failing or
        the worker stopping: then the rows go back to pending (refunded) and None is returned."""
        b, now = run.batch, run.now
        probe, run.probe = run.probe, False
        if not probe and self.pause.blocked():
            self._refund(b, lo, hi, "delivery paused", now())
            return None
        retry_at = self.breaker.retry_at
        if path and retry_at is not None:
            # Mid-bisection the destination started failing: stop narrowing down; the part is
            # sent again, whole, when the breaker lets requests through.
            self._refund(b, lo, hi, "the destination is failing; bisection resumes later", retry_at)
            return None
        if run.stop.is_set() or not self.pacer.acquire(time.monotonic, run.stop.wait):
            self._refund(b, lo, hi, "stopped before sending", now())
            return None
        result = self.client.send(build_body(b.payloads[lo:hi]), run.key)
        b.counts.sent += 1
        outcome = classify(result.status, hi - lo)
        self._observe(outcome, result, now())
        return result, outcome

    def _part(self, run: _Run, lo: int, hi: int, path: str, inferred: SendResult | None) -> Outcome | None:
        """Send rows ``[lo, hi)`` of the run's batch and settle them; returns the outcome (None: not sent).

        ``inferred`` is a refusal of a larger request when this part is known to hold an offender:
        it is split without being sent whole.
        """
        b, now = run.batch, run.now
        first: Outcome | None = None
        while lo < hi:  # a loop, not recursion, for the "rest" after each isolated offender
            n = hi - lo
            if inferred is None:
                sent = self._send(run, lo, hi, path)
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
                alone = self._part(run, lo, lo + 1, path + "s", None)
                lo, path = lo + 1, path + "r"
                inferred = result if alone is Outcome.DELIVERED and hi - lo > 1 else None
                continue
            # Halve. Each half may itself be delivered, retried, halved again or dead.
            mid = lo + n // 2
            left = self._part(run, lo, mid, path + "0", None)
            knows_right_bad = outcome is Outcome.BISECT and left is Outcome.DELIVERED and hi - mid > 1
            self._part(run, mid, hi, path + "1", result if knows_right_bad else None)
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
        """Feed the breaker, the token bucket and the pause with one answer."""
        if outcome is Outcome.RETRY:
            pass  # the breaker hears of it in _retry_delay, with the delay chosen there
        elif outcome in (Outcome.PAUSE_AUTH, Outcome.PAUSE_NOT_FOUND):
            self.breaker.end_probe()
        else:
            self.breaker.on_success()
            if outcome is Outcome.DELIVERED:
                self.pacer.on_success()
        self.pause.observe(outcome, result, now)

    def _settle(
        self, b: Batch, lo: int, hi: int, path: str, outcome: Outcome, result: SendResult, now: float
    ) -> None:
        rows = b.rows[lo:hi]
        ids = [row.id for row in rows]
        duration_ms = round(result.duration * 1000, 1)
        common = {"batch_id": b.batch_id, "part": path or "-", "events": len(ids), "status": result.status}
        if outcome is Outcome.DELIVERED:
            restamped = [i for i in ids if i in b.restamped] if b.restamped else []
            moved = self.store.mark_delivered(ids, self.owner, to_us(now), restamped)
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
                ids, self.owner, to_us(now + delay), _error_text(result), refund=False
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
            self._dead_letter(b, rows, path, dead_reason(status), now, result.text, (result, outcome))

    def _dead_letter(
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
        moved = self.store.mark_dead(ids, self.owner, to_us(now), reason, http_status, response)
        b.counts.dead += moved
        metrics.record_settled(dead=moved, reason=reason)
        answer: dict[str, Any] = {}
        if refusal is not None:
            result, outcome = refusal
            self._record(result, outcome, len(ids), now, dead=len(ids))
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

    def _refund(self, b: Batch, lo: int, hi: int, why: str, due: float) -> None:
        """Back to pending, due at ``due``, attempt given back: nothing was learnt about these events."""
        ids = [row.id for row in b.rows[lo:hi]]
        moved = self.store.mark_retry(ids, self.owner, to_us(due), why, refund=True)
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
            to_us(now),
            result.status,
            outcome.value,
            events,
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
