"""The parts the worker hands down (agent/delivery/pause.py, keys.py, clockwatch.py, batch.prepare)
and the one dead-letter path of settle, each on its own against a real outbox file.

The worker-level behaviour (pauses over HTTP, clock steps, late events) is in tests/test_worker.py
and tests/reliability/test_machine_faults.py; these pin each part's own contract.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import orjson
import pytest
from structlog.testing import capture_logs

from agent.config import DeliverySettings, DodoSettings, Settings
from agent.delivery.backoff import DestinationBackoff, Outcome, is_late
from agent.delivery.batch import prepare
from agent.delivery.client import SendResult
from agent.delivery.clockwatch import CLOCK_STEP_SECONDS, ClockWatch
from agent.delivery.keys import ApiKeys
from agent.delivery.pause import Pause
from agent.emulator import EmulatorServer
from agent.events import Event
from agent.ops import status
from agent.store import Claimed, Store
from agent.timestamps import to_us
from tests.builders import make_settings, make_worker
from tests.builders import stored_event as event

T = float(int(time.time()))
"""A whole epoch second (recent: events older than a day do not validate)."""
REFUSED = SendResult(401, '{"code":"UNAUTHORIZED"}', 0.01)
DELIVERED = SendResult(200, '{"ingested_count":1}', 0.01, ingested_count=1)


def keys_from(environ: dict[str, str]) -> ApiKeys:
    return ApiKeys(Settings(), environ)


def pause_on(store: Store, keys: ApiKeys | None = None) -> Pause:
    return Pause(
        store,
        DeliverySettings(auth_retry_seconds=30.0),
        base_url="https://dodo.test",
        keys=keys or keys_from({"DODO_PAYMENTS_API_KEY": "sk_test_value"}),
    )


# -- the pause ------------------------------------------------------------------------------------


def test_a_refused_key_pauses_records_the_pause_and_a_delivery_resumes(store: Store) -> None:
    keys = keys_from({"DODO_PAYMENTS_API_KEY": "sk_test_value"})
    keys.load()
    pause = pause_on(store, keys)
    with capture_logs() as logs:
        pause.observe(Outcome.PAUSE_AUTH, REFUSED, T)
        pause.observe(Outcome.PAUSE_AUTH, REFUSED, T + 1)  # the same reason again: logged once
        assert pause.blocked() and pause.kind == "auth"
        reason = pause.reason
        assert reason is not None and "DODO_PAYMENTS_API_KEY" in reason and "HTTP 401" in reason
        assert status.read_pause(store) == {"reason": pause.reason, "since": T, "kind": "auth"}
        pause.observe(Outcome.RETRY, SendResult(None, "timeout", 1.0), T + 2)  # proves nothing
        assert pause.blocked()
        pause.observe(Outcome.DELIVERED, DELIVERED, T + 40)
    assert not pause.blocked() and pause.reason is None and pause.kind is None
    assert status.read_pause(store) is None
    assert [entry["event"] for entry in logs] == ["delivery_paused", "delivery_resumed"]
    assert logs[1]["paused_for_s"] == 40.0  # since the first pause, not the repeat


def test_a_404_pauses_with_the_base_url_in_the_reason(store: Store) -> None:
    pause = pause_on(store)
    pause.observe(Outcome.PAUSE_NOT_FOUND, SendResult(404, "not found", 0.01), T)
    assert pause.kind == "not_found"
    assert pause.reason == (
        "base URL https://dodo.test answered 404 to POST /events/ingest: check [dodo] base_url"
    )


def test_one_probe_per_auth_retry_seconds_for_the_fleet_and_reload_makes_it_due(store: Store) -> None:
    # The probe of an auth pause is the fleet's: a slot of the store, timed by the store's clock.
    now = time.time()
    pause, other = pause_on(store), pause_on(store)
    pause.observe(Outcome.PAUSE_AUTH, REFUSED, now)
    other.sync(now)
    assert other.blocked() and other.kind == "auth"
    assert not pause.take_probe(now) and not other.take_probe(now)  # a period away for everyone
    assert pause.next_probe == pytest.approx(now + 30, abs=5)
    other.probe_now()  # the other agent re-read its key: the fleet's probe is due at once
    taken = [pause.take_probe(now), other.take_probe(now)]
    assert sorted(taken) == [False, True]  # one probe for the two agents
    assert not pause.take_probe(now) and not other.take_probe(now)
    pause.shift_back(20.0)  # the wall clock stepped back 20 s: the probe stays as far ahead
    assert pause.next_probe == pytest.approx(now + 30 - 20, abs=5)


def test_no_key_probes_are_the_agents_own(store: Store) -> None:
    pause = pause_on(store, keys_from({}))
    pause.no_key(T)
    assert pause.next_probe == T + 30
    assert not pause.take_probe(T + 29.9)
    assert pause.take_probe(T + 30)
    assert not pause.take_probe(T + 31)
    pause.probe_now()
    assert pause.take_probe(T + 31)


def test_no_key_pauses_with_the_sources_reason_and_only_a_key_ends_it(store: Store) -> None:
    keys = keys_from({})
    pause = pause_on(store, keys)
    assert keys.current(reload=False) is None  # never read: read now
    pause.no_key(T)
    assert pause.kind == "no_key" and pause.reason == keys.source and "no API key" in keys.source
    assert pause.key_found(T + 30) is True
    assert not pause.blocked() and status.read_pause(store) is None
    pause.observe(Outcome.PAUSE_AUTH, REFUSED, T + 31)
    assert pause.key_found(T + 32) is False  # a refused key is not ended by finding a key
    assert pause.kind == "auth"


def test_a_pause_left_by_an_earlier_process_is_cleared_by_the_first_proof_of_life(store: Store) -> None:
    status.write_pause(store, "Dodo refused the API key from a file with HTTP 401", T - 600)
    pause = pause_on(store)
    assert not pause.blocked()  # this process has not been refused (yet): it tries
    pause.observe(Outcome.RETRY, SendResult(503, "busy", 0.01), T)
    assert status.read_pause(store) is not None  # a 503 proves nothing about the key
    with capture_logs() as logs:
        pause.observe(Outcome.DELIVERED, DELIVERED, T + 1)
    assert status.read_pause(store) is None
    assert logs == []  # this process was never paused: nothing resumed


# -- the key --------------------------------------------------------------------------------------


def test_the_key_is_read_when_asked_and_shown_by_no_repr(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("sk_first_key_value\n")
    settings = dataclasses.replace(Settings(), dodo=DodoSettings(api_key_file=str(key_file)))
    environ = {"DODO_PAYMENTS_API_KEY": "sk_environment_value"}
    keys = ApiKeys(settings, environ)
    assert not keys.loaded
    assert keys.current(reload=False) == "sk_first_key_value"  # the first call reads
    assert keys.loaded and keys.source == str(key_file)
    key_file.write_text("sk_second_key_value\n")
    assert keys.current(reload=False) == "sk_first_key_value"  # as last read
    assert keys.current(reload=True) == "sk_second_key_value"
    for shown in (repr(keys), repr(vars(keys))):
        assert "sk_" not in shown


# -- the clock watch ------------------------------------------------------------------------------


class Clocks:
    """A wall clock and a monotonic clock the test moves."""

    def __init__(self) -> None:
        self.wall, self.mono = T, 0.0

    def read_wall(self) -> float:
        return self.wall

    def read_mono(self) -> float:
        return self.mono


def pending_due_at(store: Store, due: float) -> None:
    """One pending row due at `due` (a retry scheduled earlier)."""
    store.insert_groups([([event(0, ts=T)], "test")], to_us(T))
    rows = store.claim(now_us=to_us(T), limit=10, max_bytes=1 << 20, lease_us=to_us(30), owner="w")
    store.mark_retry([row.id for row in rows], owner="w", next_attempt_us=to_us(due), error="HTTP 503")


def test_the_first_check_brings_in_what_lies_further_ahead_than_the_agent_schedules(store: Store) -> None:
    pending_due_at(store, T + 86_400)  # a day ahead: the clock stepped back while no agent ran
    clocks = Clocks()
    watch = ClockWatch(store, DeliverySettings(), clocks.read_wall, clocks.read_mono)
    assert watch.check() == 0.0
    assert store.next_due_us() == to_us(T)


def test_a_step_back_moves_stored_instants_back_by_the_step(store: Store) -> None:
    pending_due_at(store, T + 100)
    clocks = Clocks()
    watch = ClockWatch(store, DeliverySettings(), clocks.read_wall, clocks.read_mono)
    assert watch.check() == 0.0
    assert store.next_due_us() == to_us(T + 100)  # within what the agent schedules: untouched
    clocks.wall, clocks.mono = T + 10 - CLOCK_STEP_SECONDS, 10.0  # a drift of the limit: no step
    assert watch.check() == 0.0
    clocks.wall, clocks.mono = T - 50, 11.0  # 1 s later by the monotonic clock, 58 s back by the wall
    with capture_logs() as logs:
        step = watch.check()
    assert step == 59.0
    assert store.next_due_us() == to_us(T + 100) - to_us(step)
    assert [(e["event"], e["rows_rescheduled"]) for e in logs] == [("clock_stepped_back", 1)]


def test_a_step_back_keeps_an_open_breaker_open_for_as_long_as_before() -> None:
    breaker = DestinationBackoff(threshold=1)
    breaker.on_failure(T, 10.0)
    breaker.shift_back(60.0)  # the wall clock now reads T - 60 where it read T
    assert breaker.retry_at == T - 50
    assert not breaker.try_begin(T - 50.1) and breaker.try_begin(T - 50)


# -- the late rule --------------------------------------------------------------------------------


def claimed(e: Event, row_id: int) -> Claimed:
    return Claimed(row_id, e.event_id, e.ts_us, e.payload, 1, e.ts_us)


def test_prepare_calls_late_exactly_what_is_late_calls_late() -> None:
    settings = DeliverySettings(window_seconds=3600.0, late_margin_seconds=300.0, late_events="dead_letter")
    now = T + 3300.0  # the deadline of an event stamped T
    on_time, late = event(0, ts=T), event(1, ts=T - 0.001)
    assert not is_late(T, now, 3600.0, 300.0) and is_late(T - 0.001, now, 3600.0, 300.0)
    batch = prepare([claimed(on_time, 1), claimed(late, 2)], now, settings, "b1")
    assert [row.event_id for row in batch.rows] == [on_time.event_id]
    assert [row.event_id for row in batch.expired] == [late.event_id]
    restamping = dataclasses.replace(settings, late_events="restamp")
    restamp = prepare([claimed(on_time, 1), claimed(late, 2)], now, restamping, "b2")
    assert restamp.restamped == frozenset({2}) and restamp.expired == []
    assert "timestamp" not in orjson.loads(restamp.payloads[1])


# -- one dead-letter path -------------------------------------------------------------------------


def test_expired_and_refused_rows_are_dead_lettered_with_one_log_line_each(
    store: Store, fake: EmulatorServer
) -> None:
    now = time.time()
    expired = event(0, ts=now - 3400)  # past the 300 s margin of Dodo's hour
    refused = event(1, ts=now - 60)
    store.insert_groups([([expired, refused], "test")], to_us(now))
    fake.set_faults(script=[410])  # the one request (the refused event alone) is refused
    worker = make_worker(store, make_settings(fake.url, late_events="dead_letter"))
    with capture_logs() as logs:
        report = worker.drain_until_idle()
    worker.close()
    assert (report.dead, report.sent) == (2, 1)
    lines = [entry for entry in logs if entry["event"] == "events_dead_lettered"]
    by_reason = {line["reason"]: line for line in lines}
    assert len(lines) == 2 and set(by_reason) == {"expired", "http_410"}
    common = {"event", "log_level", "batch_id", "part", "events", "status", "reason", "event_ids"}
    assert set(by_reason["expired"]) == common  # never sent: no response, no duration
    assert by_reason["expired"]["event_ids"] == [expired.event_id]
    assert (by_reason["expired"]["part"], by_reason["expired"]["status"]) == ("-", None)
    assert set(by_reason["http_410"]) == common | {"response", "duration_ms"}
    assert (by_reason["http_410"]["status"], by_reason["http_410"]["event_ids"]) == (410, [refused.event_id])
