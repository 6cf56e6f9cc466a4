"""The agent's clock: APScheduler 3 runs the drain every ``interval_seconds``, never overlapping, and
the other periodic jobs (drop-directory scan, retention) beside it.

An idle agent must deliver a new event within one round trip, not one interval: :meth:`AgentScheduler.wake`
(connected by the service to ``Outbox.add_listener``) runs the drain now. A wake that arrives while a
drain runs is not lost: the running drain goes round once more before it finishes. Each drain is a
burst (``Worker.drain_until_idle``): it repeats while anything is due, so a backlog is not paced by
the interval: after a full batch the next claim goes at once (the shared budget paces the
requests, not the claims).

While idle, the polling backs off: each drain that found nothing doubles the wait before the next,
from ``interval_seconds`` up to ``idle_interval_max_seconds`` (:func:`next_poll`); any work, or a
wake, brings it back to ``interval_seconds``. A retry due sooner still runs when due. Events another
process commits (an app's transaction on PostgreSQL, a fleet's other hosts) are seen at the next
poll: within ``idle_interval_max_seconds``.

LISTEN/NOTIFY is not used: a NOTIFY in the producer's transaction takes a database-wide lock at
commit (every committing producer queues behind it under load), and a LISTEN holds a session, which
PgBouncer's transaction pooling does not give (the agent keeps no session state; see the README's
"Running a fleet"). An opt-in listener for direct connections is left for later; the backoff's cap
bounds the latency it would save.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

from agent.config import Settings
from agent.delivery.batch import DrainReport
from agent.delivery.worker import Worker
from agent.errors import OutboxError
from agent.logs import get_logger
from agent.ops.fleet import BEAT_SECONDS

log = get_logger(__name__)

DRAIN_JOB = "drain"


def next_poll(current: float, interval: float, cap: float, busy: bool) -> float:
    """The wait before the next poll: ``interval`` after work, else double ``current``, at most
    ``cap`` (never below ``interval``)."""
    if busy:
        return interval
    return max(interval, min(cap, current * 2))


class _SkipNoise(logging.Filter):
    # APScheduler warns each time an interval tick finds the previous drain still running. With
    # max_instances=1 that is the design working (a long burst spans many ticks), not a problem.
    # Its executor also logs "Running job" and "executed successfully" at INFO for every run: with
    # a 1 s drain that is two lines a second of nothing. Warnings and errors (a job that raised, a
    # missed run) still pass.
    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING and record.name.startswith("apscheduler.executors"):
            return False
        return "maximum number of running instances" not in record.getMessage()


_aps_logger = logging.getLogger("apscheduler.scheduler.dodo_outbox")
_aps_logger.addFilter(_SkipNoise())
logging.getLogger("apscheduler.executors.default").addFilter(_SkipNoise())


class AgentScheduler:
    """Runs ``worker`` on ``settings.delivery.interval_seconds`` and on :meth:`wake`, plus extra jobs.

    Use :meth:`start` once and :meth:`shutdown` once. Thread-safe: :meth:`wake` may be called from any
    thread (an enqueue listener), as often as events arrive; it is cheap while a drain runs.
    """

    def __init__(self, worker: Worker, settings: Settings) -> None:
        self.worker = worker
        self.settings = settings
        interval = settings.delivery.interval_seconds
        self._interval = interval
        self._poll_cap = max(interval, settings.delivery.idle_interval_max_seconds)
        self.poll_delay = interval
        """The wait before the next poll: interval_seconds after work, growing while idle."""
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._running = False  # a drain job is executing
        self._wanted = False  # a wake arrived since the running drain last looked
        self._nudged = False  # a wake already moved the next run to now
        self._idle = threading.Event()
        self._idle.set()
        self._scheduler = BackgroundScheduler(
            timezone=UTC,
            logger=_aps_logger,
            # The drain plus a few housekeeping jobs; each job has max_instances=1.
            executors={"default": ThreadPoolExecutor(max_workers=4)},
            job_defaults={
                "max_instances": 1,
                "coalesce": True,
                # A late drain is still wanted (coalesced into one); only after a long stall (a
                # suspended machine) is the missed run dropped and the next one awaited.
                "misfire_grace_time": max(60, int(10 * interval)),
            },
        )
        self._scheduler.add_job(
            self._drain,
            "interval",
            seconds=interval,
            id=DRAIN_JOB,
            name=DRAIN_JOB,
            next_run_time=datetime.now(UTC),
        )
        # The agent's row in the fleet's registry, on its own clock: a long drain is not a dead agent.
        self.add_interval_job(lambda: self.worker.heartbeat.beat(), BEAT_SECONDS, "heartbeat")

    def start(self) -> None:
        """Start the scheduler thread; the first drain runs at once."""
        self._scheduler.start()

    def add_interval_job(self, func: Callable[[], Any], seconds: float, name: str) -> None:
        """Run ``func()`` every ``seconds``, never overlapping itself; its exceptions are logged."""

        def run() -> None:
            try:
                func()
            except Exception:
                log.exception("job_failed", job=name)

        self._scheduler.add_job(run, "interval", seconds=seconds, id=name, name=name, replace_existing=True)

    def wake(self) -> None:
        """Run the drain now (or once more, if one is running). Returns at once."""
        with self._lock:
            self._wanted = True
            self.poll_delay = self._interval
            if self._running or self._nudged or self._stop.is_set():
                return
            self._nudged = True
        try:
            self._scheduler.modify_job(DRAIN_JOB, next_run_time=datetime.now(UTC))
        except Exception:  # shut down meanwhile: nothing left to wake
            log.debug("wake_ignored", exc_info=True)

    def _drain(self) -> None:
        """The drain job: bursts until idle, then again if woken meanwhile."""
        with self._lock:
            self._running, self._nudged = True, False
            self._idle.clear()
        report = None
        try:
            while not self._stop.is_set():
                with self._lock:
                    self._wanted = False
                report = self.worker.drain_until_idle(self._stop)
                with self._lock:
                    # Checked under the lock wake() takes: a wake either lands before this check
                    # (and we go round again) or sees _running False and schedules a new run.
                    if not self._wanted or report.paused is not None:
                        self._running = False
                        break
            if report is not None:
                self._back_off(report)
                self._run_again_at(report.next_due)
        except OutboxError:
            if not self.worker.outage.down:
                log.exception("drain_failed")
            # else the worker said so once (outbox_unreachable), not with a traceback every tick
        except Exception:
            log.exception("drain_failed")
        finally:
            with self._lock:
                self._running = False
            self._idle.set()

    def _back_off(self, report: DrainReport) -> None:
        """While idle, put the next poll off by the growing ``poll_delay`` (see :func:`next_poll`)."""
        # Under the lock wake() takes: a wake either lands first (busy: no backoff) or moves the run
        # to now after this, so a backoff never swallows a wake.
        with self._lock:
            busy = bool(report.claimed or report.sent or self._wanted)
            self.poll_delay = next_poll(self.poll_delay, self._interval, self._poll_cap, busy)
            if self.poll_delay <= self._interval or self._stop.is_set():
                return  # the interval trigger's own pace
            when = datetime.now(UTC) + timedelta(seconds=self.poll_delay)
            try:
                self._scheduler.modify_job(DRAIN_JOB, next_run_time=when)
            except Exception:  # shut down meanwhile
                log.debug("reschedule_ignored", exc_info=True)

    def _run_again_at(self, next_due: float | None) -> None:
        """Bring the next drain forward to ``next_due`` (epoch seconds) when that is before the next tick.

        A retry due in 200 ms then goes out in 200 ms, not at the next interval tick.
        """
        if next_due is None or self._stop.is_set():
            return
        when = datetime.fromtimestamp(max(next_due, time.time()), UTC)
        job = self._scheduler.get_job(DRAIN_JOB)
        scheduled = None if job is None else job.next_run_time
        if scheduled is not None and when < scheduled:
            try:
                self._scheduler.modify_job(DRAIN_JOB, next_run_time=when)
            except Exception:  # shut down meanwhile
                log.debug("reschedule_ignored", exc_info=True)

    @property
    def running(self) -> bool:
        """Whether the scheduler thread is running."""
        return bool(self._scheduler.running)

    def shutdown(self, timeout: float) -> bool:
        """Stop scheduling and wait up to ``timeout`` seconds for a running drain to finish.

        A running drain sends nothing new once asked to stop; requests in flight finish (or time out).
        Returns True when no drain is running any more, False when it is still running at the timeout
        (its rows stay leased and are sent again after the lease).
        """
        self._stop.set()
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        return self._idle.wait(timeout)
