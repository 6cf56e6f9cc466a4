"""Send one claimed batch, narrowing it down as Dodo's answers require, and hand every part to settle.

The rules are :func:`agent.delivery.backoff.classify`'s; :class:`BatchRunner` carries out the sending
half (``agent.delivery.settle`` the settling half):

- 2xx, 408/409/429/5xx/no answer, and a refusal of a single event: the part is settled as it is
  (delivered, retried later, dead).
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
- Rows expired before sending (``Batch.expired``) are dead-lettered before the batch is sent.

Data flows one way: every answer goes to the breaker, the token bucket and the pause; nothing here
reaches back into the worker. One :class:`BatchRunner` is shared by the sender threads of a worker;
each :meth:`BatchRunner.run` call handles one batch in the calling thread.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from agent.config import DeliverySettings
from agent.delivery.backoff import DestinationBackoff, Outcome, classify
from agent.delivery.batch import Batch, Counts
from agent.delivery.client import DodoClient, SendResult, build_body
from agent.delivery.pacing import Pacer
from agent.delivery.pause import Pause
from agent.delivery.settle import Settler
from agent.logs import get_logger
from agent.store import OutboxStore

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
    """Sends batches; its :class:`~agent.delivery.settle.Settler` settles their rows. Thread-safe:
    share one between sender threads."""

    def __init__(
        self,
        store: OutboxStore,
        client: DodoClient,
        settings: DeliverySettings,
        *,
        owner: str,
        pacer: Pacer,
        breaker: DestinationBackoff,
        pause: Pause,
        rand: Callable[[], float],
    ) -> None:
        self.client = client
        self.pacer = pacer
        self.breaker = breaker
        self.pause = pause
        self.settler = Settler(store, settings, owner=owner, pacer=pacer, breaker=breaker, rand=rand)
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
            self.settler.expire(batch, now())
        if batch.rows:
            self._part(run, 0, len(batch.rows), "", None)
        return batch.counts

    def _send(self, run: _Run, lo: int, hi: int, path: str) -> tuple[SendResult, Outcome] | None:
        """One request for rows ``[lo, hi)``, unless delivery is paused, the destination failing or
        the worker stopping: then the rows go back to pending (refunded) and None is returned."""
        b, now = run.batch, run.now
        probe, run.probe = run.probe, False
        if not probe and self.pause.blocked():
            self.settler.refund(b, lo, hi, "delivery paused", now())
            return None
        retry_at = self.breaker.retry_at
        if path and retry_at is not None:
            # Mid-bisection the destination started failing: stop narrowing down; the part is
            # sent again, whole, when the breaker lets requests through.
            self.settler.refund(b, lo, hi, "the destination is failing; bisection resumes later", retry_at)
            return None
        if run.stop.is_set() or not self.pacer.acquire(time.monotonic, run.stop.wait):
            self.settler.refund(b, lo, hi, "stopped before sending", now())
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
                self.settler.settle(b, lo, hi, path, outcome, result, now())
                return first
            if outcome in (Outcome.PAUSE_AUTH, Outcome.PAUSE_NOT_FOUND):
                self.settler.refund(b, lo, hi, f"delivery paused after HTTP {result.status}", now())
                self.settler.record(result, outcome, n, now())
                return first
            hint = None
            if inferred is None:
                self.settler.record(result, outcome, n, now())
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
            pass  # the breaker hears of it in Settler.settle, with the delay chosen there
        elif outcome in (Outcome.PAUSE_AUTH, Outcome.PAUSE_NOT_FOUND):
            self.breaker.end_probe()
        else:
            self.breaker.on_success()
            if outcome is Outcome.DELIVERED:
                self.pacer.on_success()
        self.pause.observe(outcome, result, now)
