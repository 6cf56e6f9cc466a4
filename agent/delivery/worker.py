"""The worker: one drain tick turns due pending rows into delivered, retried or dead rows.

``drain_once`` releases expired leases, claims up to ``max_in_flight`` batches (oldest event time
first), applies the late-event policy, sends the batches concurrently and settles every row (see
``settle`` for the rules). ``drain_until_idle`` repeats it while anything is due: the burst mode
that the scheduler and ``dodo-outbox drain --once`` share.

Delivery pauses on a configuration fault (no key, a refused key, a wrong base URL): no row is
dead-lettered and no attempt consumed. While paused, one probe batch goes out every
``auth_retry_seconds`` with the key read afresh; the first answer that proves the key and the URL
work resumes delivery. The pause and its reason are written to the outbox for ``status``.
"""

from __future__ import annotations

import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor

from agent.config import ApiKey, Settings, read_api_key
from agent.delivery.backoff import MAX_HINT_SECONDS, DestinationBackoff, Outcome
from agent.delivery.batch import Batch, Counts, DrainReport, prepare
from agent.delivery.client import BODY_OVERHEAD, DodoClient, SendResult
from agent.delivery.pacing import TokenBucket
from agent.delivery.settle import BatchRunner, log
from agent.logs import add_secret
from agent.ops import metrics, status
from agent.store import Claimed, OutboxStore

US = 1_000_000
CLOCK_STEP_SECONDS = 2.0
"""A wall clock falling behind the monotonic one by more than this between drains stepped back."""


class _Environ(Mapping[str, str]):
    """A live view of the environment the key may come from; its repr shows no values (the key)."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._values = environ

    def __getitem__(self, name: str) -> str:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"<environment: {len(self._values)} variables>"


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
        self._environ = _Environ(environ)
        d = settings.delivery
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.pacer = TokenBucket(d.requests_per_minute, d.burst)
        self.breaker = DestinationBackoff()
        self.paused: str | None = None
        self.last_tick = time.monotonic()
        self._clock_seen: tuple[float, float] | None = None  # (wall, monotonic) at the last drain
        self._pause_kind: str | None = None
        self._paused_since = 0.0
        self._next_probe = 0.0
        self._key: ApiKey | None = None
        self._key_source = ""
        self._key_loaded = False
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._pool: ThreadPoolExecutor | None = None
        # A pause recorded by an earlier process is cleared by our first delivery.
        self._stale_pause = status.read_pause(store) is not None
        self.runner = BatchRunner(
            store, client, d, owner=self.owner, pacer=self.pacer, breaker=self.breaker, gate=self, rand=rand
        )

    def __repr__(self) -> str:
        return f"Worker(owner={self.owner!r}, url={self.client.url!r}, paused={self.paused!r})"

    # -- the API key ------------------------------------------------------------------------------

    def reload_key(self) -> bool:
        """Read the API key again (SIGHUP, or a fixed key file); a paused worker probes at its next drain.

        Returns whether a key was found. Never logs the key, only where it came from.
        """
        found = self._load_key() is not None
        with self._lock:
            self._next_probe = 0.0
        return found

    def _load_key(self) -> ApiKey | None:
        key, source = read_api_key(self.settings, self._environ)
        if key is not None:
            add_secret(key)  # defence in depth: the log redactor masks it wherever it might show up
        with self._lock:
            self._key, self._key_source, self._key_loaded = key, source, True
        return key

    # -- the gate (called by the sender threads) --------------------------------------------------

    def blocked(self) -> bool:
        return self.paused is not None

    def observe(self, outcome: Outcome, result: SendResult, now: float) -> None:
        """Pause on 401/403/404; resume on any answer that shows the key and URL work."""
        if outcome is Outcome.PAUSE_NOT_FOUND:
            self._pause(
                "not_found",
                f"base URL {self.client.base_url} answered 404 to POST /events/ingest: check [dodo] base_url",
                now,
                result.status,
            )
        elif outcome is Outcome.PAUSE_AUTH:
            self._pause(
                "auth",
                f"Dodo refused the API key from {self._key_source} with HTTP {result.status} "
                f"({result.text[:120]}): fix the key; it is re-read before each probe, every "
                f"{self.settings.delivery.auth_retry_seconds:g} s",
                now,
                result.status,
            )
        elif outcome is not Outcome.RETRY and (self.paused is not None or self._stale_pause):
            self._resume(now)

    def _pause(self, kind: str, reason: str, now: float, http_status: int | None) -> None:
        with self._lock:
            changed = self.paused != reason
            if self.paused is None:
                self._paused_since = now
            self.paused, self._pause_kind = reason, kind
            self._next_probe = now + self.settings.delivery.auth_retry_seconds
        if changed:
            status.write_pause(self.store, reason, now)
            log.warning(
                "delivery_paused",
                kind=kind,
                reason=reason,
                status=http_status,
                probe_every_s=self.settings.delivery.auth_retry_seconds,
            )

    def _resume(self, now: float) -> None:
        with self._lock:
            was, self.paused, self._pause_kind = self.paused, None, None
            self._stale_pause = False
        status.write_pause(self.store, None, now)
        if was is not None:
            log.info("delivery_resumed", paused_for_s=round(now - self._paused_since, 3), previous=was)

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
        try:
            self._check_clock()
            return self._tick(self._clock() if now is None else now, stop)
        finally:
            self.last_tick = time.monotonic()

    def _check_clock(self) -> None:
        """Undo what a step back of the wall clock does to stored retry times and leases (see
        agent/store/sqlite/clock.py): at the first drain, bring in anything further ahead than this agent
        could have scheduled; later, when the wall clock fell behind the monotonic one by more than
        CLOCK_STEP_SECONDS, bring stored instants, the breaker and the pause probe back by the step.
        (Before: a step back of an hour stalled retries, and a dead worker's leases, for an hour.)"""
        wall, mono = self._clock(), time.monotonic()
        last = self._clock_seen
        self._clock_seen = (wall, mono)
        d = self.settings.delivery
        if last is None:
            longest = max(d.backoff_max_seconds, MAX_HINT_SECONDS) + d.interval_seconds
            self.store.cap_future(
                now_us=int(wall * US), max_delay_us=int(longest * US), lease_us=int(d.lease_seconds * US)
            )
            return
        step = last[0] + (mono - last[1]) - wall
        if step <= CLOCK_STEP_SECONDS:
            return
        moved = self.store.shift_back(now_us=int(wall * US), step_us=int(step * US))
        with self._lock:
            self.breaker.open_until -= step
            self._next_probe -= step
        log.warning("clock_stepped_back", seconds=round(step, 3), rows_rescheduled=moved)

    def _tick(self, base: float, stop: threading.Event) -> DrainReport:
        started = time.monotonic()

        def now() -> float:
            return base + (time.monotonic() - started)

        report = DrainReport()
        if stop.is_set():
            return report
        probe = False
        if self.paused is not None:
            if base < self._next_probe:
                report.paused, report.next_due = self.paused, self._next_probe
                return report
            probe = True
            with self._lock:
                self._next_probe = base + self.settings.delivery.auth_retry_seconds
        key = self._current_key(reload=probe or not self._key_loaded)
        if key is None:
            self._pause("no_key", self._key_source, base, None)
            report.paused, report.next_due = self.paused, self._next_probe
            return report
        if probe and self._pause_kind == "no_key":
            self._resume(base)  # the key is there now; whether it works, the next answer says
            probe = False
        breaker_probe = False
        if not probe and self.breaker.retry_at is not None:
            if not self.breaker.try_begin(base):
                report.next_due = max(base, self.breaker.retry_at or base)
                report.released = self.store.release_expired(int(base * US))
                return report
            breaker_probe = True
        try:
            return self._send_batches(report, base, now, key, stop, probe, 1 if probe or breaker_probe else 0)
        finally:
            if breaker_probe:
                self.breaker.end_probe()

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
        base_us = int(base * US)
        report.released = self.store.release_expired(base_us)
        batches = only or d.max_in_flight
        futures: list[Future[Counts]] = []
        inline: list[Batch] = []
        exhausted = False
        for _ in range(batches):
            if stop.is_set():
                break
            rows = self.store.claim(
                now_us=base_us,
                limit=d.batch_max_events,
                max_bytes=d.batch_max_bytes - BODY_OVERHEAD,
                lease_us=int(d.lease_seconds * US),
                owner=self.owner,
            )
            if not rows:
                exhausted = True
                break
            report.claimed += len(rows)
            batch = self._prepare(rows, base, report)
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
        report.paused = self.paused
        if self.paused is not None:
            report.next_due = self._next_probe
            return report
        if not exhausted and report.claimed:
            report.next_due = base  # stopped at the batch limit: more is due now
        else:
            # Only here, at the end of a backlog, is the (index-scanning) due-time query worth it.
            due = self.store.next_due_us()
            report.next_due = None if due is None else due / US
        retry_at = self.breaker.retry_at
        if report.next_due is not None and retry_at is not None:
            report.next_due = max(report.next_due, retry_at)
        return report

    def _prepare(self, rows: list[Claimed], base: float, report: DrainReport) -> Batch:
        batch_id = uuid.uuid4().hex[:12]
        batch, expired = prepare(rows, base, self.settings.delivery, batch_id)
        if expired:
            d = self.settings.delivery
            moved = self.store.mark_dead(
                [row.id for row in expired],
                owner=self.owner,
                now_us=int(base * US),
                reason="expired",
                http_status=None,
                response=(
                    f"the event time is older than Dodo's window ({d.window_seconds:g} s) minus the margin "
                    f"({d.late_margin_seconds:g} s); [delivery] late_events = dead_letter"
                ),
            )
            report.dead += moved
            metrics.record_settled(dead=moved, reason="expired")
            log.warning(
                "events_dead_lettered",
                batch_id=batch_id,
                part="-",
                events=len(expired),
                status=None,
                reason="expired",
                event_ids=[row.event_id for row in expired[:10]],
            )
        return batch

    def _current_key(self, reload: bool) -> ApiKey | None:
        return self._load_key() if reload else self._key

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
