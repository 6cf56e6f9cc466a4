"""Metrics: names follow Prometheus conventions, the record functions count what they are told, the
outbox gauges (rows by state, backlog age, pause, success ratios) match the outbox, and a real worker
against the Dodo emulator with scripted answers shows up in /metrics as it should."""

from __future__ import annotations

import dataclasses
import math
import platform
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent import __version__
from agent.config import DeliverySettings, DodoSettings, HttpIntakeSettings, Settings
from agent.delivery.client import DodoClient
from agent.delivery.worker import Worker
from agent.emulator import EmulatorServer
from agent.errors import Problem
from agent.events import validate
from agent.intake.http import create_app
from agent.intake.server import HttpServer
from agent.ops import metrics, status
from agent.outbox import EnqueueResult, Outbox
from agent.store import Store
from tests.emulator_fixture import FakeDodoFactory
from tests.ops_helpers import NOW, add_dead, add_delivered, add_pending, us
from tests.waiting import wait_until

KEY = "test_key"


def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The rendered /metrics text parsed back: (sample name, sorted labels) → value."""
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


def value(scraped: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return scraped.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "outbox.db") as s:
        yield s
    metrics.unwatch_store()


def test_names_follow_prometheus_conventions() -> None:
    for family in metrics.REGISTRY.collect():
        assert family.name.startswith("dodo_outbox_"), family.name
        for sample in family.samples:
            assert not {"event_id", "customer_id"} & set(sample.labels), sample
            if family.type == "counter" and not sample.name.endswith("_created"):
                assert sample.name.endswith("_total"), sample.name
    text = metrics.render().decode()
    assert 'dodo_outbox_build_info{python="' in text and f'version="{__version__}"' in text


def test_record_functions_count_what_they_are_told() -> None:
    before = scrape()

    metrics.record_enqueued(EnqueueResult(new=["a", "b", "c"], duplicates=["d"], source="http"))
    metrics.record_rejected("dropdir", "invalid", 2)
    metrics.record_rejected("http", "a reason nobody listed", 1)
    metrics.record_refused("http", "max_events")
    metrics.record_request("delivered", 200, 0.2, 40)
    metrics.record_request("retry", None, 30.0, 40)
    metrics.record_request("bisect", 400, 0.1, 40)
    metrics.record_settled(delivered=40, restamped=2, ignored_duplicates=3)
    metrics.record_settled(retried=40)
    metrics.record_settled(dead=1, reason="rejected")
    metrics.record_settled(dead=1, reason="a free-text reason that must not become a label")
    metrics.observe_latencies([us(NOW - 2.0)] * 4, NOW)
    after = scrape()

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("dodo_outbox_events_received_total", source="http") == 4
    assert delta("dodo_outbox_events_duplicate_total", source="http") == 1
    assert delta("dodo_outbox_events_rejected_total", source="dropdir", reason="invalid") == 2
    assert delta("dodo_outbox_events_rejected_total", source="http", reason="other") == 1
    assert delta("dodo_outbox_capacity_refusals_total", source="http", reason="max_events") == 1
    assert delta("dodo_outbox_delivery_requests_total", outcome="delivered", status_class="2xx") == 1
    assert delta("dodo_outbox_delivery_requests_total", outcome="retry", status_class="none") == 1
    assert delta("dodo_outbox_delivery_requests_total", outcome="bisect", status_class="4xx") == 1
    assert delta("dodo_outbox_request_duration_seconds_count") == 3
    assert delta("dodo_outbox_request_duration_seconds_bucket", le="0.25") == 2
    assert delta("dodo_outbox_batch_size_events_sum") == 120
    assert delta("dodo_outbox_events_delivered_total") == 40
    assert delta("dodo_outbox_events_retried_total") == 40
    assert delta("dodo_outbox_events_restamped_total") == 2
    assert delta("dodo_outbox_dodo_duplicates_ignored_total") == 3
    assert delta("dodo_outbox_events_dead_lettered_total", reason="rejected") == 1
    assert delta("dodo_outbox_events_dead_lettered_total", reason="other") == 1
    assert delta("dodo_outbox_delivery_latency_seconds_count") == 4
    assert delta("dodo_outbox_delivery_latency_seconds_bucket", le="1.0") == 0
    assert delta("dodo_outbox_delivery_latency_seconds_bucket", le="2.5") == 4


def test_outbox_gauges_match_the_outbox(store: Store) -> None:
    add_delivered(store, [f"d{i}" for i in range(9)], now=NOW - 100)
    store.record_request(now_us=us(NOW - 100), status=200, outcome="delivered", events=9, delivered=9)
    store.record_request(now_us=us(NOW - 90), status=400, outcome="reject", events=1, dead=1)
    add_dead(store, ["x1"], now=NOW - 90)
    add_pending(store, ["p1", "p2"], now=NOW - 600)
    status.write_pause(store, "Dodo refused the API key from env with HTTP 401", NOW, kind="auth")
    metrics.watch_store(store, max_events=1000)
    got = scrape()
    assert value(got, "dodo_outbox_outbox_up") == 1
    states = {
        s: value(got, "dodo_outbox_events", state=s) for s in ("pending", "inflight", "delivered", "dead")
    }
    assert states == {"pending": 2, "inflight": 0, "delivered": 9, "dead": 1}
    assert value(got, "dodo_outbox_oldest_pending_age_seconds") == pytest.approx(
        time.time() - (NOW - 600), abs=5
    )
    assert value(got, "dodo_outbox_delivery_paused", reason="auth") == 1
    for window in ("5m", "1h"):
        assert value(got, "dodo_outbox_delivery_success_ratio", window=window) == pytest.approx(0.9)
        assert value(got, "dodo_outbox_request_success_ratio", window=window) == pytest.approx(0.5)
    assert value(got, "dodo_outbox_max_events") == 1000
    assert value(got, "dodo_outbox_database_size_bytes") > 0

    status.write_pause(store, None, NOW)

    def resumed() -> bool:  # gauges are cached for CACHE_SECONDS between scrapes
        got = scrape().items()
        paused = {labels: v for (name, labels), v in got if name == "dodo_outbox_delivery_paused"}
        return paused == {(("reason", ""),): 0}

    wait_until(resumed, what="the pause gauge to read 0 once the pause is cleared")


def test_no_traffic_is_nan_and_an_unreadable_outbox_does_not_break_the_scrape(tmp_path: Path) -> None:
    store = Store(tmp_path / "o.db")
    metrics.watch_store(store)
    got = scrape()
    assert math.isnan(value(got, "dodo_outbox_delivery_success_ratio", window="5m"))
    assert value(got, "dodo_outbox_oldest_pending_age_seconds") == 0
    store.close()
    wait_until(lambda: value(scrape(), "dodo_outbox_outbox_up") == 0, what="outbox_up 0 (the cache expiring)")
    got = scrape()
    assert ("dodo_outbox_events", (("state", "pending"),)) not in got
    assert (
        value(
            got,
            "dodo_outbox_build_info",
            python=platform.python_version(),
            version=__version__,
        )
        == 1
    )
    metrics.unwatch_store()


# -- a real worker against the emulator ----------------------------------------------------------


def _worker(store: Store, url: str) -> Worker:
    fast: dict[str, Any] = {
        "backoff_initial_seconds": 0.01,
        "backoff_max_seconds": 0.05,
        "requests_per_minute": 0.0,
        "timeout_seconds": 5.0,
    }
    settings = Settings(dodo=DodoSettings(base_url=url), delivery=DeliverySettings(**fast))
    return Worker(store, settings, DodoClient.from_settings(settings), environ={"DODO_PAYMENTS_API_KEY": KEY})


def test_scripted_emulator_outcomes_show_in_metrics(store: Store, fake_dodo_factory: FakeDodoFactory) -> None:
    fake: EmulatorServer = fake_dodo_factory(keys={KEY}, rate_limit=False)
    now = time.time()
    good = [
        validate(
            {
                "event_id": f"ok{i}",
                "customer_id": "cus_1",
                "event_name": "api.call",
                "timestamp": datetime.fromtimestamp(now, UTC),
            },
            now,
        )
        for i in range(9)
    ]
    # One event Dodo refuses: a metadata value longer than 500 characters slipped past validation.
    bad = validate(
        {"event_id": "bad", "customer_id": "cus_1", "event_name": "api.call", "metadata": {"note": "x"}}, now
    )
    bad = dataclasses.replace(bad, payload=bad.payload.replace('"note":"x"', '"note":"' + "x" * 600 + '"'))
    store.insert_groups([([*good, bad], "http")], us(now))
    fake.set_faults(script=[503])  # the first request fails transiently, then bisection finds `bad`
    metrics.watch_store(store)
    before = scrape()
    worker = _worker(store, fake.url)
    worker.drain_once(now=now)
    report = worker.drain_until_idle()
    worker.close()
    assert store.counts() == {"pending": 0, "inflight": 0, "delivered": 9, "dead": 1}, report
    # The gauges are cached for CACHE_SECONDS: wait until they show the drained outbox.
    wait_until(lambda: value(scrape(), "dodo_outbox_events", state="dead") == 1, what="the gauges to refresh")
    after = scrape()

    # The ready-made gauges, read from the outbox: 9 of 10 events delivered; of the requests, the
    # 503, the bisected parents and the refused single event failed.
    logged = store.window_rates(us(time.time()), (300,))[0]
    assert value(after, "dodo_outbox_delivery_success_ratio", window="5m") == pytest.approx(0.9)
    assert value(after, "dodo_outbox_request_success_ratio", window="5m") == pytest.approx(
        logged.requests_ok / logged.requests
    )
    assert value(after, "dodo_outbox_events", state="dead") == 1

    # The counters, bumped by the worker's settle step.
    delivered = value(after, "dodo_outbox_events_delivered_total") - value(
        before, "dodo_outbox_events_delivered_total"
    )
    assert delivered == 9
    latency = value(after, "dodo_outbox_delivery_latency_seconds_count") - value(
        before, "dodo_outbox_delivery_latency_seconds_count"
    )
    assert latency == 9
    dead = value(after, "dodo_outbox_events_dead_lettered_total", reason="rejected") - value(
        before, "dodo_outbox_events_dead_lettered_total", reason="rejected"
    )
    assert dead == 1
    requests = sum(
        v - value(before, name, **dict(labels))
        for (name, labels), v in after.items()
        if name == "dodo_outbox_delivery_requests_total"
    )
    assert requests == logged.requests
    assert (
        value(after, "dodo_outbox_delivery_requests_total", outcome="retry", status_class="5xx")
        - value(before, "dodo_outbox_delivery_requests_total", outcome="retry", status_class="5xx")
        == 1
    )


def test_http_refusals_are_counted_by_kind() -> None:
    before = scrape()
    problems = [
        Problem("events[0].metadata.a", "x"),
        Problem("events[0].metadata.b", "y"),
        Problem("events[4]", "z"),
    ]
    metrics.record_http_refusal("BAD_REQUEST", "2 problems", problems)
    metrics.record_http_refusal("UNPROCESSABLE_ENTITY", "body: malformed JSON")
    metrics.record_http_refusal(
        "OUTBOX_FULL", "the outbox holds 10 undelivered events, at its limit max_events"
    )
    metrics.record_http_refusal("OUTBOX_FULL", "the disk holding the outbox is full")
    metrics.record_http_refusal("UNAUTHORIZED", "wrong token")
    after = scrape()

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("dodo_outbox_events_rejected_total", source="http", reason="invalid") == 2
    assert delta("dodo_outbox_events_rejected_total", source="http", reason="schema") == 1
    assert delta("dodo_outbox_capacity_refusals_total", source="http", reason="max_events") == 1
    assert delta("dodo_outbox_capacity_refusals_total", source="http", reason="disk_full") == 1
    assert (
        sum(v for (name, _), v in after.items() if name == "dodo_outbox_events_rejected_total")
        - sum(v for (name, _), v in before.items() if name == "dodo_outbox_events_rejected_total")
        == 3
    )


@pytest.mark.parametrize(
    ("pause", "label"),
    [
        (None, ""),
        ({"reason": "x", "kind": "auth"}, "auth"),
        ({"reason": "Dodo refused the API key from env with HTTP 401 (...): fix the key"}, "auth"),
        (
            {"reason": "base URL http://h/x answered 404 to POST /events/ingest: check [dodo] base_url"},
            "not_found",
        ),
        (
            {"reason": "no API key: set [dodo] api_key_file, the systemd credential dodo_api_key, or ..."},
            "no_key",
        ),
        ({"reason": "something new"}, "other"),
    ],
)
def test_pause_label_is_one_of_a_few(pause: dict[str, object] | None, label: str) -> None:
    assert metrics.pause_label(pause) == label


def test_http_intake_counts_what_it_refuses(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.db", max_events=2)
    outbox.add_listener(metrics.record_enqueued)  # as the service wires it
    app = create_app(outbox, HttpIntakeSettings(), status=dict, readiness=dict, full_retry_after=0.1)
    server = HttpServer(app, "127.0.0.1:0").start()
    before = scrape()
    try:
        with httpx.Client(base_url=server.url, timeout=10) as client:

            def post(*events: dict[str, Any]) -> int:
                return client.post("/events/ingest", json={"events": list(events)}).status_code

            ok = {"event_id": "h1", "customer_id": "cus_1", "event_name": "api.call"}
            assert post(ok, {**ok, "event_id": "h2", "metadata": {"note": "x" * 600}}) == 400
            assert post(ok) == 200 and post(ok) == 200  # the second is a duplicate
            assert post({**ok, "event_id": "h3"}) == 200
            assert post({**ok, "event_id": "h4"}) == 429  # max_events = 2
    finally:
        server.stop(5.0)
        outbox.close()
    after = scrape()

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("dodo_outbox_events_rejected_total", source="http", reason="invalid") == 1
    assert delta("dodo_outbox_events_received_total", source="http") == 3
    assert delta("dodo_outbox_events_duplicate_total", source="http") == 1
    assert delta("dodo_outbox_capacity_refusals_total", source="http", reason="max_events") == 1
