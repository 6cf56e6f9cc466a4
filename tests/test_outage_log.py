"""The outbox outage lines: one when it goes, a reminder a minute, one when it is back (with how long)."""

from __future__ import annotations

import time

import pytest
from structlog.testing import capture_logs

from agent.delivery.outage import OutboxOutage
from agent.delivery.worker import Worker
from agent.errors import OutboxError
from agent.store import Store
from tests.builders import stored_event


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_one_line_when_it_goes_a_reminder_a_minute_one_line_when_it_is_back() -> None:
    clock = Clock()
    outage = OutboxOutage("postgresql://app:***@db/app", clock=clock)
    with capture_logs() as logs:
        outage.succeeded()  # up and staying up: nothing
        clock.now += 1
        outage.failed(OutboxError("the outbox is unreachable: timeout"), began=clock.now - 10)
        for _ in range(50):  # a failed tick every second: no line each
            clock.now += 1
            outage.failed(OutboxError("connection refused"))
        clock.now += 10  # 60 s after the first line
        outage.failed(OutboxError("connection refused"))
        clock.now += 5
        assert outage.down and outage.error == "connection refused"
        outage.succeeded()
        outage.succeeded()
    assert [entry["event"] for entry in logs] == [
        "outbox_unreachable",
        "outbox_still_unreachable",
        "outbox_reconnected",
    ]
    gone, reminder, back = logs
    assert gone["outbox"] == "postgresql://app:***@db/app" and "timeout" in gone["error"]
    assert gone["log_level"] == "error" and "503" in gone["action"]
    assert reminder["down_seconds"] == 70.0 and reminder["error"] == "connection refused"
    assert back["down_seconds"] == 75.0 and back["failed_ticks"] == 52 and back["log_level"] == "warning"
    assert not outage.down and outage.error == ""


def test_the_worker_reports_a_failing_outbox_once_and_its_return(
    store: Store, worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.insert_groups([([stored_event(1)], "test")], int(time.time() * 1e6))

    def unreachable(*_: object, **__: object) -> int:
        raise OutboxError(f"the outbox {store.location} is unreachable: connection refused")

    with capture_logs() as logs:
        with monkeypatch.context() as broken:
            broken.setattr(store, "release_expired", unreachable)
            for _ in range(5):
                with pytest.raises(OutboxError):
                    worker.drain_once()
        assert worker.outage.down
        assert worker.drain_once().delivered == 1
    names = [entry["event"] for entry in logs if entry["event"].startswith("outbox_")]
    assert names == ["outbox_unreachable", "outbox_reconnected"]
    assert logs[0]["failed_ticks"] == 1 and not worker.outage.down
