"""The delivery engine over real loopback HTTP against the Dodo emulator: every row of the outcome
table, bisection, pauses, leases, Retry-After, pacing and the late-event policies.

Backoffs are short (10-50 ms) and time is moved forward with ``drain_once(now=...)`` instead of waiting.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from structlog.testing import capture_logs

from agent.config import DodoSettings
from agent.delivery.client import DodoClient
from agent.delivery.pause import PROBE_SLOT
from agent.delivery.worker import Worker
from agent.emulator import EmulatorServer
from agent.events import Event
from agent.ops import status
from agent.store import Store
from tests.builders import FAST as FAST  # importable from here, as before
from tests.builders import KEY, make_settings, make_worker
from tests.builders import stored_event as event
from tests.emulator_fixture import FakeDodoFactory
from tests.waiting import PATIENCE, wait_until


def poisoned(e: Event, **bad: Any) -> Event:
    """The event with a payload Dodo refuses (it slipped past validation, e.g. a contract change)."""
    doc = orjson.loads(e.payload)
    doc.update(bad or {"metadata": {"note": "x" * 600}})  # Dodo: metadata values <= 500 characters
    return dataclasses.replace(e, payload=orjson.dumps(doc, option=orjson.OPT_SORT_KEYS).decode())


def put(store: Store, events: list[Event]) -> list[str]:
    store.insert_groups([(events, "test")], int(time.time() * 1e6))
    return [e.event_id for e in events]


def rows(store: Store) -> dict[str, dict[str, Any]]:
    """Every outbox row by event_id (tests may read the file directly)."""
    with store.read() as conn:
        cursor = conn.execute(
            "SELECT event_id, state, attempts, next_attempt_at, reason, http_status, response, restamped, "
            "last_error, payload FROM dodo_outbox_events"
        )
        names = [c[0] for c in cursor.description]
        return {r[0]: dict(zip(names, r, strict=True)) for r in cursor.fetchall()}


def requests_logged(store: Store) -> list[tuple[Any, ...]]:
    with store.read() as conn:
        return conn.execute(
            "SELECT status, outcome, events, delivered, dead, duplicates FROM dodo_outbox_requests"
        ).fetchall()


# -- 2xx ------------------------------------------------------------------------------------------


def test_delivers_in_batches_and_records_each_request(store: Store, fake: EmulatorServer) -> None:
    ids = put(store, [event(i) for i in range(2500)])
    worker = make_worker(store, make_settings(fake.url, batch_max_events=1000, max_in_flight=2))
    created = worker.last_tick
    report = worker.drain_until_idle()
    assert (report.sent, report.delivered, report.dead, report.retried) == (3, 2500, 0, 0)
    assert report.paused is None and report.next_due is None
    assert set(fake.events) == set(ids)
    assert {r["state"] for r in rows(store).values()} == {"delivered"}
    assert sorted(r[2] for r in requests_logged(store)) == [500, 1000, 1000]
    assert worker.last_tick > created  # the watchdog's heartbeat moved with the drain
    worker.close()


def test_one_drain_sends_max_in_flight_batches(store: Store, fake: EmulatorServer) -> None:
    put(store, [event(i) for i in range(10)])
    worker = make_worker(store, make_settings(fake.url, batch_max_events=3, max_in_flight=2))
    report = worker.drain_once()
    assert (report.sent, report.delivered, report.claimed) == (2, 6, 6)
    assert report.next_due is not None and report.next_due <= time.time()  # more is due at once
    assert worker.drain_until_idle().delivered == 4
    worker.close()


def test_batch_max_bytes_bounds_the_body(store: Store, fake: EmulatorServer) -> None:
    put(store, [event(i, note="y" * 200) for i in range(40)])
    worker = make_worker(store, make_settings(fake.url, batch_max_bytes=2048))
    assert worker.drain_until_idle().delivered == 40
    sizes = [entry["body_bytes"] for entry in fake.ingest_log()]
    assert len(sizes) > 1 and max(sizes) <= 2048
    worker.close()


def test_ingested_count_below_batch_size_counts_duplicates(
    store: Store, fake: EmulatorServer, worker: Worker
) -> None:
    events = [event(i) for i in range(10)]
    put(store, events)
    body = b'{"events":[' + ",".join(e.payload for e in events[:4]).encode() + b"]}"
    httpx.post(f"{fake.url}/events/ingest", content=body, headers={"Authorization": f"Bearer {KEY}"})
    report = worker.drain_until_idle()
    assert (report.delivered, report.duplicates_ignored) == (10, 4)
    assert requests_logged(store)[-1] == (200, "delivered", 10, 10, 0, 4)


# -- retryable ------------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", [408, 409, 429, 500, 502, 503, "timeout", "drop"])
def test_transient_failures_go_back_to_pending_then_deliver(
    store: Store, fake: EmulatorServer, fault: int | str
) -> None:
    ids = put(store, [event(i) for i in range(5)])
    fake.set_faults(script=[fault], timeout_sleep_seconds=5, retry_after_seconds=0)
    worker = make_worker(store, make_settings(fake.url, timeout_seconds=0.5))
    start = time.time()
    report = worker.drain_once(now=start)
    assert (report.sent, report.retried, report.delivered, report.dead) == (1, 5, 0, 0)
    for row in rows(store).values():
        assert row["state"] == "pending" and row["attempts"] == 1
        assert row["next_attempt_at"] >= start * 1e6 and row["last_error"]
    assert report.next_due is not None
    report = worker.drain_once(now=start + 10)
    assert report.delivered == 5 and set(fake.events) == set(ids)
    assert [r[1] for r in requests_logged(store)] == ["retry", "delivered"]
    worker.close()


def test_retry_after_is_a_minimum_and_slows_the_pacer(store: Store, fake: EmulatorServer) -> None:
    put(store, [event(i) for i in range(3)])
    fake.set_faults(script=[429], retry_after_seconds=40)
    worker = make_worker(store, make_settings(fake.url, requests_per_minute=240))
    start = time.time()
    report = worker.drain_once(now=start)
    assert report.retried == 3
    due = {r["next_attempt_at"] for r in rows(store).values()}
    assert min(due) >= (start + 40) * 1e6  # jitter alone would have been <= 50 ms
    assert report.next_due is not None and report.next_due >= start + 40
    assert worker.pacer.blocked_until is not None and worker.pacer.rate_per_minute == 120
    assert worker.drain_once(now=start + 1).sent == 0  # not due yet
    worker.close()


def test_rate_limit_reset_is_a_minimum_when_nothing_remains(store: Store) -> None:
    answer = httpx.Response(503, headers={"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "25"})
    settings = make_settings("https://dodo.test")
    client = DodoClient("https://dodo.test", transport=httpx.MockTransport(lambda request: answer))
    put(store, [event(0)])
    worker = Worker(store, settings, client, environ={"DODO_PAYMENTS_API_KEY": KEY})
    start = time.time()
    worker.drain_once(now=start)
    (row,) = rows(store).values()
    assert row["next_attempt_at"] >= (start + 25) * 1e6
    worker.close()


def test_backoff_never_defers_an_event_past_the_window(store: Store, fake: EmulatorServer) -> None:
    start = time.time()
    put(store, [event(0, ts=start - 3000)])  # deadline: ts + 3600 - 300 = start + 300
    fake.set_faults(script=[503], retry_after_seconds=0)
    worker = make_worker(
        store, make_settings(fake.url, backoff_initial_seconds=3000, backoff_max_seconds=3000)
    )
    worker.drain_once(now=start)
    (row,) = rows(store).values()
    assert row["state"] == "pending"
    assert row["next_attempt_at"] <= (start + 300) * 1e6
    worker.close()


def test_destination_backs_off_as_a_whole_then_probes_one_batch(store: Store, fake: EmulatorServer) -> None:
    put(store, [event(i) for i in range(2)])
    fake.set_faults(error_rates={503: 1.0})
    settings = make_settings(fake.url, backoff_initial_seconds=10, backoff_max_seconds=10, batch_max_events=1)
    worker = make_worker(store, settings, rand=lambda: 0.99)
    t = time.time()
    for step in range(3):  # three failed drains: the breaker opens
        worker.drain_once(now=t + 20 * step)
    assert worker.breaker.retry_at is not None
    requests = fake.stats()["requests"]
    put(store, [event(i, prefix="new") for i in range(3)])  # due at once, but the destination is down
    report = worker.drain_once(now=t + 41)
    assert report.sent == 0 and fake.stats()["requests"] == requests
    assert report.next_due == worker.breaker.retry_at
    fake.clear_faults()
    report = worker.drain_once(now=t + 100)  # half-open: one probe batch, not max_in_flight
    assert report.sent == 1 and report.delivered == 1
    assert worker.breaker.retry_at is None
    assert worker.drain_once(now=t + 100).delivered == 2  # closed again: max_in_flight batches
    assert worker.drain_once(now=t + 100).delivered == 2
    worker.close()


# -- bisection, rejection, 413 --------------------------------------------------------------------


def test_bisection_isolates_poison_events_in_about_k_log2_n_requests(
    store: Store, fake: EmulatorServer
) -> None:
    n, poison_at = 1000, {17, 230, 499, 500, 871}
    events = [
        poisoned(e) if i in poison_at else e
        for i, e in enumerate(event(i, ts=time.time() - 600 + i * 0.1) for i in range(n))
    ]
    put(store, events)
    worker = make_worker(store, make_settings(fake.url, batch_max_events=1000))
    worker.runner.use_hints = False  # Dodo's refusal need not name the event: plain bisection
    report = worker.drain_until_idle()
    k = len(poison_at)
    extra = report.sent - 1
    assert (report.delivered, report.dead) == (n - k, k)
    assert k < extra <= 2 * k * math.log2(n), extra  # ~1.2·k·log2(n); never n
    bad_ids = {events[i].event_id for i in poison_at}
    assert set(fake.events) == {e.event_id for e in events} - bad_ids
    state = rows(store)
    for event_id in bad_ids:
        row = state[event_id]
        assert (row["state"], row["reason"], row["http_status"]) == ("dead", "rejected", 400)
        assert "500 characters" in row["response"]
    assert sum(r["state"] == "dead" for r in state.values()) == k
    worker.close()


def test_a_refusal_naming_the_offender_isolates_it_in_two_requests(
    store: Store, fake: EmulatorServer, worker: Worker
) -> None:
    n, poison_at = 1000, {17, 230, 499, 500, 871}
    events = [poisoned(e) if i in poison_at else e for i, e in enumerate(event(i) for i in range(n))]
    put(store, events)
    report = worker.drain_until_idle()
    k = len(poison_at)
    # The emulator says "events[17].metadata.note: ...": each offender alone, then the rest whole.
    assert (report.sent, report.delivered, report.dead) == (1 + 2 * k, n - k, k)
    assert {r["event_id"] for r in rows(store).values() if r["state"] == "dead"} == {
        events[i].event_id for i in poison_at
    }


def test_a_wrong_position_in_the_refusal_falls_back_to_bisection(store: Store) -> None:
    events = [event(i) for i in range(16)]
    bad = events[11].event_id

    def dodo(request: httpx.Request) -> httpx.Response:
        body = orjson.loads(request.content)["events"]
        if any(e["event_id"] == bad for e in body):  # always blames the first event: wrong
            return httpx.Response(400, json={"code": "BAD_REQUEST", "message": "events[0].event_id: no"})
        return httpx.Response(200, json={"ingested_count": len(body)})

    put(store, events)
    settings = make_settings("https://dodo.test")
    client = DodoClient("https://dodo.test", transport=httpx.MockTransport(dodo))
    worker = Worker(store, settings, client, environ={"DODO_PAYMENTS_API_KEY": KEY})
    report = worker.drain_until_idle()
    assert (report.delivered, report.dead) == (15, 1)
    assert rows(store)[bad]["state"] == "dead"
    assert report.sent <= 1 + 2 * 2 * math.log2(16)
    worker.close()


def test_a_transient_failure_inside_a_bisection_retries_only_that_part(
    store: Store, fake: EmulatorServer, worker: Worker
) -> None:
    events = [event(i) for i in range(8)]
    events[6] = poisoned(events[6])
    put(store, events)
    fake.set_faults(script=[200, 503])  # the batch: 400; its left half: 503; the rest as they are
    worker.runner.use_hints = False
    t = time.time()
    report = worker.drain_once(now=t)
    assert (report.delivered, report.retried, report.dead) == (3, 4, 1)
    state = rows(store)
    assert {state[e.event_id]["state"] for e in events[:4]} == {"pending"}
    assert state[events[6].event_id]["reason"] == "rejected"
    assert worker.drain_once(now=t + 10).delivered == 4


def test_bisection_stops_when_the_destination_starts_failing(store: Store, fake: EmulatorServer) -> None:
    events = [event(i) for i in range(16)]
    events[0] = poisoned(events[0])
    put(store, events)
    # 400 (0-15), 400 (0-7), 400 (0-3), then 503 (0-1), 503 (2-3), 503 (4-7): three failures in a
    # row open the breaker, so 8-15 are not sent into a failing destination.
    fake.set_faults(script=[200, 200, 200, 503, 503, 503])
    worker = make_worker(store, make_settings(fake.url, backoff_initial_seconds=5, backoff_max_seconds=5))
    worker.runner.use_hints = False
    t = time.time()
    report = worker.drain_once(now=t)
    assert (report.sent, report.retried, report.dead, report.delivered) == (6, 8, 0, 0)
    retry_at = worker.breaker.retry_at
    assert retry_at is not None
    state = rows(store)
    for e in events[8:]:
        row = state[e.event_id]
        assert (row["state"], row["attempts"]) == ("pending", 0)  # deferred, attempt refunded
        assert row["next_attempt_at"] == int(retry_at * 1e6)
    while worker.drain_once(now=t + 60).sent:
        pass
    assert {e.event_id for e in events} - set(fake.events) == {events[0].event_id}
    assert rows(store)[events[0].event_id]["reason"] == "rejected"
    worker.close()


def test_schema_violation_422_is_isolated_too(store: Store, fake: EmulatorServer, worker: Worker) -> None:
    events = [event(i) for i in range(8)]
    events[5] = poisoned(events[5], quantity=3)  # an unknown top-level field: 422 at Dodo
    put(store, events)
    report = worker.drain_until_idle()
    assert (report.delivered, report.dead) == (7, 1)
    row = rows(store)[events[5].event_id]
    assert (row["reason"], row["http_status"]) == ("rejected", 422)


def test_single_event_400_is_dead_rejected(store: Store, fake: EmulatorServer, worker: Worker) -> None:
    (event_id,) = put(store, [poisoned(event(0))])
    report = worker.drain_until_idle()
    assert (report.sent, report.dead) == (1, 1)
    row = rows(store)[event_id]
    assert (row["state"], row["reason"], row["http_status"], row["attempts"]) == ("dead", "rejected", 400, 1)


def test_other_4xx_bisects_and_a_single_event_is_dead_with_its_status(
    store: Store, fake: EmulatorServer, worker: Worker
) -> None:
    put(store, [event(i) for i in range(4)])
    fake.set_faults(script=[410])  # the batch is refused once; its halves go through
    report = worker.drain_until_idle()
    # 4 requests: the batch, its left half (delivered), then the right half is known to hold the
    # offender and is split without being re-sent whole: each of its events goes alone (and passes).
    assert (report.sent, report.delivered, report.dead) == (4, 4, 0)
    (lonely,) = put(store, [event(0, prefix="x")])
    fake.set_faults(script=[410])
    assert worker.drain_until_idle().dead == 1
    row = rows(store)[lonely]
    assert (row["reason"], row["http_status"]) == ("http_410", 410)


def test_413_splits_and_a_single_oversized_event_is_dead_too_large(
    store: Store, fake_dodo_factory: FakeDodoFactory
) -> None:
    fake = fake_dodo_factory(keys={KEY}, rate_limit=False, max_body_bytes=4000)
    small = [event(i, note="s" * 100) for i in range(60)]
    wide: dict[str, Any] = {f"k{j}": "b" * 400 for j in range(12)}
    big = event(999, **wide)
    put(store, [*small, big])
    worker = make_worker(store, make_settings(fake.url))
    report = worker.drain_until_idle()
    assert (report.delivered, report.dead) == (60, 1)
    assert set(fake.events) == {e.event_id for e in small}
    row = rows(store)[big.event_id]
    assert (row["state"], row["reason"], row["http_status"]) == ("dead", "too_large", 413)
    assert max(entry["body_bytes"] for entry in fake.ingest_log() if entry["outcome"] == "200") <= 4000
    worker.close()


# -- pauses ---------------------------------------------------------------------------------------


def test_401_pauses_refunds_and_resumes_when_the_key_file_is_fixed(
    store: Store, fake: EmulatorServer, tmp_path: Path
) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("sk_wrong_key_value\n")
    ids = put(store, [event(i) for i in range(6)])
    settings = dataclasses.replace(
        make_settings(fake.url, batch_max_events=2),
        dodo=DodoSettings(base_url=fake.url, api_key_file=str(key_file)),
    )
    worker = make_worker(store, settings, environ={})
    t = time.time()
    with capture_logs() as logs:
        report = worker.drain_once(now=t)
        assert report.paused is not None and "HTTP 401" in report.paused and str(key_file) in report.paused
        # Both batches of the tick may be in flight before the first 401 comes back.
        assert 1 <= report.sent <= 2 and report.dead == 0
        state = rows(store)
        assert {(r["state"], r["attempts"]) for r in state.values()} == {("pending", 0)}
        assert status.read_pause(store) is not None
        assert worker.drain_once(now=t + 1).sent == 0  # no probe before auth_retry_seconds
        assert worker.drain_until_idle().sent == 0
        key_file.write_text(KEY + "\n")
        # The fleet's probe slot is timed by the store's clock, not the tick's `now`: let its
        # auth_retry_seconds pass by freeing it.
        store.reset_slot(PROBE_SLOT)
        report = worker.drain_once(now=t + 31)  # the probe, with the key read afresh
        assert report.paused is None and report.delivered == 2
        assert worker.paused is None and status.read_pause(store) is None
        assert worker.drain_until_idle().delivered == 4
    assert set(fake.events) == set(ids)
    assert {r["state"] for r in rows(store).values()} == {"delivered"}
    names = [entry["event"] for entry in logs]
    assert names.count("delivery_paused") == 1 and names.count("delivery_resumed") == 1
    assert "sk_wrong_key_value" not in repr(logs) and KEY not in repr(logs)
    worker.close()


def test_reload_key_makes_the_probe_due_at_once(store: Store, fake: EmulatorServer) -> None:
    environ = {"DODO_PAYMENTS_API_KEY": "sk_wrong_key_value"}
    put(store, [event(0)])
    worker = make_worker(store, make_settings(fake.url), environ=environ)
    assert worker.drain_once().paused is not None
    for holder in (worker, worker.runner, worker.client):
        assert "sk_wrong_key_value" not in repr(vars(holder))
    environ["DODO_PAYMENTS_API_KEY"] = KEY
    assert worker.reload_key() is True
    report = worker.drain_until_idle()
    assert report.paused is None and report.delivered == 1
    worker.close()


def test_403_read_only_key_pauses(store: Store, fake_dodo_factory: FakeDodoFactory) -> None:
    fake = fake_dodo_factory(keys={KEY}, read_only_keys={"sk_read_only"}, rate_limit=False)
    put(store, [event(i) for i in range(3)])
    worker = make_worker(store, make_settings(fake.url), environ={"DODO_PAYMENTS_API_KEY": "sk_read_only"})
    report = worker.drain_once()
    assert report.paused is not None and "HTTP 403" in report.paused
    assert {(r["state"], r["attempts"]) for r in rows(store).values()} == {("pending", 0)}
    worker.close()


def test_404_pauses_with_its_own_reason(store: Store, fake: EmulatorServer) -> None:
    put(store, [event(i) for i in range(3)])
    worker = make_worker(store, make_settings(fake.url + "/wrong/prefix"))
    report = worker.drain_once()
    assert report.paused is not None and "404" in report.paused and "[dodo] base_url" in report.paused
    assert status.read_pause(store) == {
        "reason": report.paused,
        "since": pytest.approx(time.time(), abs=5),
        "kind": "not_found",
        "by": worker.owner,
    }
    assert {(r["state"], r["attempts"]) for r in rows(store).values()} == {("pending", 0)}
    assert report.dead == 0
    worker.close()


def test_no_key_pauses_without_sending_and_resumes_when_one_appears(
    store: Store, fake: EmulatorServer
) -> None:
    environ: dict[str, str] = {}
    put(store, [event(0)])
    worker = make_worker(store, make_settings(fake.url), environ=environ)
    t = time.time()
    report = worker.drain_once(now=t)
    assert report.paused is not None and "no API key" in report.paused
    assert fake.stats()["requests"] == 0
    assert {(r["state"], r["attempts"]) for r in rows(store).values()} == {("pending", 0)}
    environ["DODO_PAYMENTS_API_KEY"] = KEY
    report = worker.drain_once(now=t + 31)  # the probe re-reads the key
    assert report.paused is None and report.delivered == 1
    worker.close()


# -- late events ----------------------------------------------------------------------------------


def test_late_events_are_restamped_by_default(store: Store, fake: EmulatorServer, worker: Worker) -> None:
    now = time.time()
    late, fresh = event(0, ts=now - 7200), event(1, ts=now - 60)
    put(store, [late, fresh])
    report = worker.drain_until_idle()
    assert (report.delivered, report.restamped) == (2, 1)
    state = rows(store)
    assert state[late.event_id]["restamped"] == 1 and state[fresh.event_id]["restamped"] == 0
    assert state[late.event_id]["payload"] == late.payload  # the original stays in the outbox
    received = datetime.fromisoformat(fake.events[late.event_id]["timestamp"].replace("Z", "+00:00"))
    assert abs(received.timestamp() - now) < 60  # stamped by Dodo on receipt


def test_late_events_are_dead_lettered_when_configured(store: Store, fake: EmulatorServer) -> None:
    now = time.time()
    # 3400 s old: inside Dodo's hour but past the 300 s safety margin.
    late, fresh = event(0, ts=now - 3400), event(1, ts=now - 60)
    put(store, [late, fresh])
    worker = make_worker(store, make_settings(fake.url, late_events="dead_letter"))
    report = worker.drain_until_idle()
    assert (report.delivered, report.dead, report.sent) == (1, 1, 1)
    row = rows(store)[late.event_id]
    assert (row["state"], row["reason"], row["http_status"]) == ("dead", "expired", None)
    assert set(fake.events) == {fresh.event_id}
    worker.close()


def test_a_clock_skewed_dodo_refusal_is_isolated(store: Store, fake: EmulatorServer, worker: Worker) -> None:
    # Dodo's clock runs 20 minutes ahead: to it, an event 45 minutes old is outside the hour.
    fake.set_clock_offset(1200)
    now = time.time()
    old, fresh = event(0, ts=now - 2700), event(1, ts=now - 10)
    put(store, [old, fresh])
    report = worker.drain_until_idle()
    assert (report.delivered, report.dead) == (1, 1)
    assert rows(store)[old.event_id]["reason"] == "rejected"


# -- leases ---------------------------------------------------------------------------------------


def test_expired_leases_are_released_and_sent_again(
    store: Store, fake: EmulatorServer, worker: Worker
) -> None:
    put(store, [event(i) for i in range(4)])
    t = time.time()
    store.claim(now_us=int(t * 1e6), limit=10, max_bytes=1_000_000, lease_us=1_000_000, owner="a-dead-worker")
    assert worker.drain_once(now=t).claimed == 0  # leased to someone else
    report = worker.drain_once(now=t + 5)
    assert (report.released, report.delivered) == (4, 4)
    assert {r["attempts"] for r in rows(store).values()} == {2}


def test_a_settle_after_a_lost_lease_is_logged_not_raised(store: Store, fake: EmulatorServer) -> None:
    put(store, [event(i) for i in range(3)])
    fake.set_faults(latency_ms=1500)  # slow's request is in flight long enough to be overtaken
    # One batch per tick: with two, slow's second claim could take back the rows other releases.
    slow = make_worker(store, make_settings(fake.url, lease_seconds=1, max_in_flight=1))
    other = make_worker(store, make_settings(fake.url))
    results: list[Any] = []
    with capture_logs() as logs:
        thread = threading.Thread(target=lambda: results.append(slow.drain_once()))
        thread.start()
        wait_until(lambda: store.counts()["inflight"] == 3, what="slow to claim the rows and send them")
        taken = other.drain_once(now=time.time() + 5)  # slow's lease has run out by this clock
        thread.join()
    assert taken.delivered == 3 and results[0].delivered == 0
    assert any(entry["event"] == "lease_lost" for entry in logs)
    assert {r["state"] for r in rows(store).values()} == {"delivered"}
    slow.close()
    other.close()


class _GatedSettles:
    """The store, with each `mark_delivered` held at a gate until the test opens it (in call order)."""

    def __init__(self, store: Store, gates: int) -> None:
        self._store = store
        self.arrived = [threading.Event() for _ in range(gates)]
        self.open = [threading.Event() for _ in range(gates)]
        self._calls = 0
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def mark_delivered(self, ids: Any, **kw: Any) -> int:
        with self._lock:
            n, self._calls = self._calls, self._calls + 1
        if n < len(self.open):
            self.arrived[n].set()
            assert self.open[n].wait(PATIENCE), "the test never opened the gate"
        return int(self._store.mark_delivered(ids, **kw))


def test_a_stale_batch_of_a_worker_cannot_settle_rows_the_same_worker_claimed_again(
    store: Store, fake: EmulatorServer
) -> None:
    put(store, [event(i) for i in range(3)])
    gated = _GatedSettles(store, 2)
    worker = make_worker(gated, make_settings(fake.url, lease_seconds=1, max_in_flight=1))
    t = time.time()
    results: dict[str, Any] = {}
    with capture_logs() as logs:
        stale = threading.Thread(target=lambda: results.update(stale=worker.drain_once(now=t)))
        stale.start()  # claims all three, sends, and its answer waits at the first gate
        assert gated.arrived[0].wait(PATIENCE)
        # The same worker's next drain: the stale batch's lease has run out by its clock; it takes
        # the rows back under a claim of its own, sends them, and waits at the second gate.
        fresh = threading.Thread(target=lambda: results.update(fresh=worker.drain_once(now=t + 5)))
        fresh.start()
        assert gated.arrived[1].wait(PATIENCE)
        gated.open[0].set()  # the stale batch's late answer settles first
        stale.join(PATIENCE)
        gated.open[1].set()
        fresh.join(PATIENCE)
    assert results["fresh"].released == 3
    assert results["stale"].delivered == 0  # before per-claim tokens: 3, rows it no longer held
    assert results["fresh"].delivered == 3
    assert [e for e in logs if e["event"] == "lease_lost"] != []
    assert {r["state"] for r in rows(store).values()} == {"delivered"}
    worker.close()


WORKER_SCRIPT = """
import sys
from agent.config import DeliverySettings, DodoSettings, Settings
from agent.delivery.client import DodoClient
from agent.store import Store
from agent.delivery.worker import Worker
url, db = sys.argv[1], sys.argv[2]
delivery = DeliverySettings(lease_seconds=1, timeout_seconds=60)
settings = Settings(dodo=DodoSettings(base_url=url), delivery=delivery)
environ = {"DODO_PAYMENTS_API_KEY": "test_key"}
worker = Worker(Store(db), settings, DodoClient.from_settings(settings), environ=environ)
worker.drain_once()
print("finished")
"""


def test_rows_of_a_killed_worker_process_are_delivered_after_the_lease(
    store: Store, fake: EmulatorServer, worker: Worker, tmp_path: Path
) -> None:
    ids = put(store, [event(i) for i in range(5)])
    fake.set_faults(script=["timeout"], timeout_sleep_seconds=60)  # the send hangs
    proc = subprocess.Popen(
        [sys.executable, "-c", WORKER_SCRIPT, fake.url, str(store.path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    try:
        deadline = time.monotonic() + PATIENCE
        while fake.stats()["requests_by_status"].get("timeout", 0) < 1:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the worker process never sent"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)  # killed mid-send: no settle, no cleanup
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert {(r["state"], r["attempts"]) for r in rows(store).values()} == {("inflight", 1)}
    fake.clear_faults()
    assert worker.drain_once().claimed == 0  # still leased
    report = worker.drain_once(now=time.time() + 2)  # the 1 s lease has passed
    assert (report.released, report.delivered) == (5, 5)
    assert set(fake.events) == set(ids)
    assert {(r["state"], r["attempts"]) for r in rows(store).values()} == {("delivered", 2)}


# -- pacing ---------------------------------------------------------------------------------------


def test_pacing_keeps_a_burst_under_dodos_rate_limit(
    store: Store, fake_dodo_factory: FakeDodoFactory
) -> None:
    # Dodo here allows a burst of 10 and 10 requests/s; the agent paces at 8/s with a burst of 8.
    fake = fake_dodo_factory(keys={KEY}, rate_per_second=10, rate_per_minute=100_000)
    n = 24
    put(store, [event(i) for i in range(n)])
    settings = make_settings(fake.url, batch_max_events=1, max_in_flight=2, requests_per_minute=480, burst=8)
    worker = make_worker(store, settings)
    started = time.monotonic()
    report = worker.drain_until_idle()
    elapsed = time.monotonic() - started
    assert (report.sent, report.delivered) == (n, n)
    assert fake.stats()["requests_by_status"] == {"200": n}  # not one 429
    assert elapsed >= (n - 8) / 8 * 0.9  # paced: the bucket, not the server, set the rate


def test_without_pacing_the_same_burst_meets_429_and_backs_off(
    store: Store, fake_dodo_factory: FakeDodoFactory
) -> None:
    fake = fake_dodo_factory(keys={KEY}, rate_per_second=10, rate_per_minute=100_000)
    put(store, [event(i) for i in range(24)])
    worker = make_worker(store, make_settings(fake.url, batch_max_events=1, max_in_flight=2))
    report = worker.drain_until_idle()
    # drain_until_idle returns when the next retry is not yet due; a busy machine can end it with a
    # retry still scheduled, so drain again until every event has settled.
    deadline, last = time.monotonic() + PATIENCE, report
    while report.delivered + report.dead < 24 and time.monotonic() < deadline:
        due = last.next_due

        def retry_due(due: float | None = due) -> bool:
            return due is None or due <= time.time()

        wait_until(retry_due, what="the retry to be due")
        last = worker.drain_until_idle()
        report.add(last)
    by_status = fake.stats()["requests_by_status"]
    assert by_status.get("429", 0) >= 1 and report.retried >= 1
    # The 429's Retry-After paused the shared bucket; after it everything went through.
    assert worker.pacer.blocked_until is not None
    assert (report.delivered, report.dead) == (24, 0)
    assert report.sent == 24 + by_status["429"]
    worker.close()
