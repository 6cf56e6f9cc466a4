"""The worker: one drain tick turns due pending rows into delivered, retried or dead rows.

``drain_once`` repairs the outbox after a wall-clock step (``clockwatch``), releases expired leases,
claims up to ``max_in_flight`` batches (oldest event time first), applies the late-event policy
(``batch.prepare``), sends the batches concurrently on its sender pool and settles every row (see
``settle`` for the rules). ``drain_until_idle`` repeats it while anything is due: the burst mode
that the scheduler and ``dodo-outbox drain --once`` share.

Delivery pauses on a configuration fault (no key, a refused key, a wrong base URL; see ``pause``): no
row is dead-lettered and no attempt consumed. While paused, one probe batch goes out every
``auth_retry_seconds`` with the key read afresh (``keys``); the first answer that proves the key and
the URL work resumes delivery. Every agent on the outbox shares the rate budget (``budget``), the
pause and its probe (``pause``) through the store, and heartbeats its row in the fleet's registry
(``heartbeat``). Data flows one way: claim → send → settle; the worker owns the parts
(key, pause, breaker, bucket, clock watch) and hands them down, nothing calls back up into it.
"""

from __future__ import annotations

import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor

from agent.config import ApiKey, Settings
from agent.delivery.backoff import DestinationBackoff
from agent.delivery.batch import Batch, Counts, DrainReport, prepare
from agent.delivery.budget import SharedBudget
from agent.delivery.client import BODY_OVERHEAD, DodoClient
from agent.delivery.clockwatch import ClockWatch
from agent.delivery.heartbeat import Heartbeat
from agent.delivery.keys import ApiKeys
from agent.delivery.outage import OutboxOutage, quiet_pool_warnings
from agent.delivery.pause import Pause
from agent.delivery.send import BatchRunner
from agent.errors import OutboxClosedError, OutboxError
from agent.store import OutboxStore
from agent.timestamps import from_us, to_us


class Worker:
    """Delivers the outbox to Dodo. Thread-safe for one drain at a time (the scheduler never overlaps).

    The worker owns ``client`` and closes it in :meth:`close`. ``clock`` gives epoch seconds, ``rand``
    floats in [0, 1) for the jitter, ``environ`` is where the API key may come from.
    """

    def __init__(
        self,
        store: OutboxStore,
        settings: Settings,
        client: DodoClient,
        *,
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
        environ: Mapping[str, str] = os.environ,
    ) -> None:
        self.store = store
        self.settings = settings
        self.client = client
        self._clock = clock
        d = settings.delivery
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        # One budget and one pause for every agent on this outbox (the fleet): see budget and pause.
        self.pacer = SharedBudget(store, d.requests_per_minute, d.burst)
        self.breaker = DestinationBackoff()
        self.keys = ApiKeys(settings, environ)
        self.pause = Pause(store, d, base_url=client.base_url, keys=self.keys, agent_id=self.owner)
        self.heartbeat = Heartbeat(store, self.owner)
        self.clockwatch = ClockWatch(store, d, clock)
        self.outage = OutboxOutage(store.location)
        quiet_pool_warnings()  # the outage lines say what the pool's per-attempt warnings would repeat
        self.last_tick = time.monotonic()
        self._closed = threading.Event()
        self._pool: ThreadPoolExecutor | None = None
        self.runner = BatchRunner(
            store,
            client,
            d,
            owner=self.owner,
            pacer=self.pacer,
            breaker=self.breaker,
            pause=self.pause,
            rand=rand,
        )

    def __repr__(self) -> str:
        return f"Worker(owner={self.owner!r}, url={self.client.url!r}, paused={self.paused!r})"

    @property
    def paused(self) -> str | None:
        """Why delivery is paused (a sentence), or None while it runs."""
        return self.pause.reason

    def reload_key(self) -> bool:
        """Read the API key again (SIGHUP, or a fixed key file); a paused worker probes at its next drain.

        Returns whether a key was found. Never logs the key, only where it came from.
        """
        found = self.keys.load() is not None
        self.pause.probe_now()
        return found

    # -- draining ---------------------------------------------------------------------------------

    def drain_once(self, now: float | None = None) -> DrainReport:
        """One tick: release expired leases, claim up to ``max_in_flight`` batches, send, settle.

        ``now`` (epoch seconds) replaces the clock for this tick. Returns the report; raises only
        outbox errors (OutboxError), after every batch of the tick has finished.
        """
        return self._drain(now, self._closed)

    def drain_until_idle(
        self,
        stop: threading.Event | None = None,
        on_progress: Callable[[DrainReport], None] | None = None,
    ) -> DrainReport:
        """Drain tick after tick while anything is due; stop when idle, paused, or ``stop`` is set.

        ``on_progress`` gets each tick's report. Returns the totals, with the last tick's ``paused``
        and ``next_due``.
        """
        stop = stop or self._closed
        total = DrainReport()
        while not stop.is_set() and not self._closed.is_set():
            report = self._drain(None, stop)
            total.add(report)
            total.paused, total.next_due = report.paused, report.next_due
            if on_progress is not None:
                on_progress(report)
            idle = report.claimed == 0 and report.sent == 0
            if idle or report.paused or report.next_due is None or report.next_due > self._clock():
                break
        return total

    def _drain(self, now: float | None, stop: threading.Event) -> DrainReport:
        began = time.monotonic()
        try:
            step = self.clockwatch.check()
            if step:  # the wall clock stepped back: keep our own instants as far ahead as they were
                self.breaker.shift_back(step)
                self.pause.shift_back(step)
            report = self._tick(self._clock() if now is None else now, stop)
            self.heartbeat.count(claimed=report.claimed, delivered=report.delivered)
        except OutboxClosedError:
            raise  # closed by us (shutting down): not an outage
        except OutboxError as exc:
            self.outage.failed(exc, began)  # one line when it starts, a reminder a minute (see outage)
            raise
        finally:
            self.last_tick = time.monotonic()
            self.heartbeat.beat()
        if self.outage.down:
            self._probe_outbox()
        return report

    def _probe_outbox(self) -> None:
        """During an outage, after a tick that raised nothing: did it reach the outbox? (A paused tick
        reads nothing.) One cheap read decides whether the outage is over."""
        try:
            self.store.next_due_us()
        except OutboxClosedError:
            return
        except OutboxError as exc:
            self.outage.failed(exc)
            return
        self.outage.succeeded()

    def _tick(self, base: float, stop: threading.Event) -> DrainReport:
        started = time.monotonic()

        def now() -> float:
            return base + (time.monotonic() - started)

        report = DrainReport()
        if stop.is_set():
            return report
        self.pause.sync(base)  # another agent's 401/404 pauses us too; its proof of life resumes us
        probe = False
        if self.pause.blocked():
            if not self.pause.take_probe(base):
                return self._paused(report)
            probe = True
        key = self.keys.current(reload=probe)
        if key is None:
            self.pause.no_key(base)
            return self._paused(report)
        if self.pause.key_found(base):
            probe = False  # the key is there now; whether it works, the next answer says
        breaker_probe = False
        if not probe and self.breaker.retry_at is not None:
            if not self.breaker.try_begin(base):
                report.next_due = max(base, self.breaker.retry_at or base)
                report.released = self.store.release_expired(to_us(base))
                return report
            breaker_probe = True
        try:
            return self._send_batches(report, base, now, key, stop, probe, 1 if probe or breaker_probe else 0)
        finally:
            if breaker_probe:
                self.breaker.end_probe()

    def _paused(self, report: DrainReport) -> DrainReport:
        report.paused, report.next_due = self.pause.reason, self.pause.next_probe
        return report

    def _send_batches(
        self,
        report: DrainReport,
        base: float,
        now: Callable[[], float],
        key: ApiKey,
        stop: threading.Event,
        probe: bool,
        only: int,
    ) -> DrainReport:
        d = self.settings.delivery
        base_us = to_us(base)
        report.released = self.store.release_expired(base_us)
        batches = only or d.max_in_flight
        futures: list[Future[Counts]] = []
        inline: list[Batch] = []
        exhausted = False
        for _ in range(batches):
            if stop.is_set():
                break
            batch_id = uuid.uuid4().hex[:12]
            # Each claim its own token: a batch of this worker that stalls past its lease can never
            # settle the rows a later batch (of this worker too) claimed again.
            claim_owner = f"{self.owner}/{batch_id}"
            rows = self.store.claim(
                now_us=base_us,
                limit=d.batch_max_events,
                max_bytes=d.batch_max_bytes - BODY_OVERHEAD,
                lease_us=to_us(d.lease_seconds),
                owner=claim_owner,
            )
            if not rows:
                exhausted = True
                break
            report.claimed += len(rows)
            batch = prepare(rows, base, d, batch_id, claim_owner)
            if batches == 1:
                inline.append(batch)
            else:
                futures.append(self._executor().submit(self.runner.run, batch, key, now, stop, probe))
        errors: list[BaseException] = []
        for batch in inline:
            report.add(self.runner.run(batch, key, now, stop, probe))
        for future in futures:
            try:
                report.add(future.result())
            except Exception as exc:  # settle failed (outbox locked, disk full): leases cover the rows
                errors.append(exc)
        if errors:
            raise errors[0]
        if self.pause.blocked():
            return self._paused(report)
        if not exhausted and report.claimed:
            report.next_due = base  # stopped at the batch limit: more is due now
        else:
            # Only here, at the end of a backlog, is the (index-scanning) due-time query worth it.
            due = self.store.next_due_us()
            report.next_due = None if due is None else from_us(due)
        retry_at = self.breaker.retry_at
        if report.next_due is not None and retry_at is not None:
            report.next_due = max(report.next_due, retry_at)
        return report

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(
                self.settings.delivery.max_in_flight, thread_name_prefix="dodo-send"
            )
        return self._pool

    def close(self) -> None:
        """Stop: a drain in progress sends nothing new; then close the threads and the client."""
        self._closed.set()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self.client.close()
        if not self.store.closed:
            self.heartbeat.beat(stopped=True)
