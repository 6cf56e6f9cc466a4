"""The scheduler: interval drains that never overlap, wake-ups, bursts, extra jobs and shutdown.

Intervals are long (30 s) wherever a test asserts that something happened "at once": had it waited
for the interval, the test would time out instead of passing by luck.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.config import DeliverySettings, Settings
from agent.delivery.batch import DrainReport
from agent.delivery.scheduler import AgentScheduler, next_poll
from agent.emulator import EmulatorServer
from agent.outbox import Outbox
from tests.builders import make_settings, make_worker
from tests.waiting import PATIENCE

LONG = 3600.0
"""An interval no test waits out: a drain within a test's deadline came from a wake or a retry."""


def wait_for(condition: Callable[[], bool], timeout: float = PATIENCE) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


class StubWorker:
    """Counts drains and how many ran at once; each drain takes ``seconds`` (or blocks on ``gate``)."""

    def __init__(self, seconds: float = 0.0, next_due: list[float | None] | None = None) -> None:
        self.seconds = seconds
        self.next_due = next_due or []
        self.calls = 0
        self.active = 0
        self.most_active = 0
        self.gate: threading.Event | None = None
        self.stops: list[threading.Event | None] = []
        self.at: list[float] = []
        self.work: list[int] = []
        """Rows each drain claims, in order (then none)."""
        self.heartbeat = _StubBeat()
        self.on_drain: Callable[[], object] | None = None
        self._lock = threading.Lock()

    def drain_until_idle(self, stop: threading.Event | None = None, on_progress: Any = None) -> DrainReport:
        with self._lock:
            self.calls += 1
            self.active += 1
            self.most_active = max(self.most_active, self.active)
            self.stops.append(stop)
            self.at.append(time.monotonic())
            due = self.next_due.pop(0) if self.next_due else None
            claimed = self.work.pop(0) if self.work else 0
            if self.on_drain is not None:
                self.on_drain()
        try:
            if self.gate is not None:
                self.gate.wait(10)
            time.sleep(self.seconds)
        finally:
            with self._lock:
                self.active -= 1
        return DrainReport(next_due=due, claimed=claimed)


class _StubBeat:
    def beat(self) -> bool:
        return True


def settings(interval: float = LONG, idle_max: float = 5.0) -> Settings:
    return Settings(delivery=DeliverySettings(interval_seconds=interval, idle_interval_max_seconds=idle_max))


@pytest.fixture
def make_scheduler() -> Iterator[Callable[..., AgentScheduler]]:
    started: list[AgentScheduler] = []

    def make(worker: Any, interval: float = LONG, idle_max: float = 5.0) -> AgentScheduler:
        scheduler = AgentScheduler(worker, settings(interval, idle_max))
        started.append(scheduler)
        return scheduler

    yield make
    for scheduler in started:
        scheduler.shutdown(5)


def test_first_drain_runs_at_start_then_on_the_interval(
    make_scheduler: Callable[..., AgentScheduler],
) -> None:
    worker = StubWorker()
    scheduler = make_scheduler(worker, interval=0.05)
    scheduler.start()
    assert wait_for(lambda: worker.calls >= 4)
    assert worker.most_active == 1


def test_drains_never_overlap_however_often_woken(make_scheduler: Callable[..., AgentScheduler]) -> None:
    worker = StubWorker(seconds=0.02)
    scheduler = make_scheduler(worker, interval=0.01)
    scheduler.start()

    def hammer() -> None:
        for _ in range(200):
            scheduler.wake()
            time.sleep(0.001)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wait_for(lambda: worker.calls >= 3)
    assert worker.most_active == 1


def test_wake_runs_an_idle_drain_at_once(make_scheduler: Callable[..., AgentScheduler]) -> None:
    worker = StubWorker()
    scheduler = make_scheduler(worker)
    scheduler.start()
    assert wait_for(lambda: worker.calls == 1 and worker.active == 0)  # the start-up drain is over
    scheduler.wake()
    assert wait_for(lambda: worker.calls == 2)  # not after the hour's interval


def test_a_wake_during_a_drain_is_not_lost(make_scheduler: Callable[..., AgentScheduler]) -> None:
    worker = StubWorker()
    worker.gate = threading.Event()
    scheduler = make_scheduler(worker)
    scheduler.start()
    assert wait_for(lambda: worker.active == 1)  # the start-up drain is running (held by the gate)
    scheduler.wake()
    worker.gate.set()
    assert wait_for(lambda: worker.calls == 2)  # it went round once more


def test_a_retry_due_before_the_next_tick_brings_the_drain_forward(
    make_scheduler: Callable[..., AgentScheduler],
) -> None:
    worker = StubWorker(next_due=[time.time() + 0.2])
    scheduler = make_scheduler(worker)
    scheduler.start()
    assert wait_for(lambda: worker.calls == 2)  # not after the hour's interval


def test_extra_interval_jobs_run_and_survive_their_errors(
    make_scheduler: Callable[..., AgentScheduler],
) -> None:
    scheduler = make_scheduler(StubWorker())
    runs: list[int] = []

    def job() -> None:
        runs.append(1)
        if len(runs) == 1:
            raise RuntimeError("boom")

    scheduler.add_interval_job(job, 0.02, "retention")
    scheduler.start()
    assert wait_for(lambda: len(runs) >= 3)


def test_shutdown_waits_for_the_running_drain(make_scheduler: Callable[..., AgentScheduler]) -> None:
    worker = StubWorker()
    worker.gate = threading.Event()
    scheduler = make_scheduler(worker)
    scheduler.start()
    assert wait_for(lambda: worker.active == 1)
    assert scheduler.shutdown(0.1) is False  # still running at the timeout
    stop = worker.stops[0]
    assert stop is not None and stop.is_set()  # the burst was asked to stop
    worker.gate.set()
    assert wait_for(lambda: worker.active == 0)
    assert scheduler.shutdown(1) is True
    calls = worker.calls
    scheduler.wake()  # ignored after shutdown
    time.sleep(0.05)  # a negative check: on a slow machine it can only pass vacuously, never fail
    assert worker.calls == calls


def test_an_enqueued_event_reaches_dodo_within_one_round_trip(
    make_scheduler: Callable[..., AgentScheduler], fake_dodo: EmulatorServer, tmp_path: Path
) -> None:
    fake_dodo.set_faults(latency_ms=1000)  # a wide window to enqueue the second while the first is sent
    with Outbox(tmp_path / "outbox.db") as outbox:
        worker = make_worker(outbox.store, make_settings(fake_dodo.url, interval_seconds=LONG))
        drained: list[object] = []
        drain_until_idle = worker.drain_until_idle

        def counted(*args: Any, **kwargs: Any) -> Any:
            report = drain_until_idle(*args, **kwargs)
            drained.append(report)
            return report

        worker.drain_until_idle = counted  # type: ignore[method-assign]
        scheduler = AgentScheduler(worker, worker.settings)
        outbox.add_listener(lambda result: scheduler.wake())
        scheduler.start()
        try:
            assert wait_for(lambda: len(drained) == 1)  # the start-up drain found nothing
            outbox.enqueue({"event_id": "first", "customer_id": "cus_1", "event_name": "api.call"})
            # Its drain is now in flight (1 s at the emulator) ...
            assert wait_for(lambda: outbox.store.counts()["inflight"] == 1 or "first" in fake_dodo.events)
            outbox.enqueue({"event_id": "second", "customer_id": "cus_1", "event_name": "api.call"})
            # ... and the second is picked up by that same drain's next round, not by the hourly tick.
            assert wait_for(lambda: {"first", "second"} <= set(fake_dodo.events))
        finally:
            assert scheduler.shutdown(5)
            worker.close()
    assert fake_dodo.stats()["requests"] <= 2, fake_dodo.ingest_log()


# -- adaptive idle polling ---------------------------------------------------------------------------


def test_the_idle_poll_doubles_up_to_its_cap_and_work_resets_it() -> None:
    assert next_poll(1.0, 1.0, 5.0, busy=False) == 2.0
    assert next_poll(4.0, 1.0, 5.0, busy=False) == 5.0
    assert next_poll(5.0, 1.0, 5.0, busy=False) == 5.0
    assert next_poll(5.0, 1.0, 5.0, busy=True) == 1.0
    assert next_poll(1.0, 1.0, 0.5, busy=False) == 1.0  # a cap below the interval: a fixed pace


def test_an_idle_agent_polls_less_often_and_a_wake_or_work_brings_it_back(
    make_scheduler: Callable[..., AgentScheduler],
) -> None:
    worker = StubWorker()
    scheduler = make_scheduler(worker, interval=0.05, idle_max=0.4)
    scheduler.start()
    assert wait_for(lambda: worker.calls >= 6)
    assert scheduler.poll_delay == 0.4
    gaps = [b - a for a, b in zip(worker.at, worker.at[1:], strict=False)]
    # A scheduler runs a job no sooner than asked: once backed off, the polls are the cap apart.
    assert min(gaps[4:]) >= 0.35
    seen: list[float] = []  # the poll delay each drain starts with: what the drain before it left
    with worker._lock:
        worker.on_drain = lambda: seen.append(scheduler.poll_delay)
    scheduler.wake()
    assert wait_for(lambda: len(seen) >= 1)
    assert seen[0] == 0.05  # the wake reset it
    with worker._lock:
        seen.clear()
        worker.work = [0, 0, 0, 5]  # a few idle drains back it off, then one finds work
    assert wait_for(lambda: len(seen) >= 5)
    assert seen[1] > 0.05 and seen[4] == 0.05  # backed off while idle, back to the interval after work
