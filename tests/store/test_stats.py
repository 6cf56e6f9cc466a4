"""Conformance: counts, lookups, key-value, the request log's windows and sparkline, the meter cache."""

from __future__ import annotations

from agent.store import MeterRow, OutboxStore
from tests.ops_helpers import add_dead, add_delivered, add_pending, us
from tests.store.helpers import NOW, NOW_US, US, events


def test_counts_by_state_and_lookup(store: OutboxStore) -> None:
    assert store.counts() == {"pending": 0, "inflight": 0, "delivered": 0, "dead": 0}
    assert store.get("nope") is None
    add_delivered(store, ["d1", "d2"])
    add_dead(store, ["x1"], reason="rejected", status=400)
    add_pending(store, ["p1"])
    assert store.counts() == {"pending": 1, "inflight": 0, "delivered": 2, "dead": 1}
    assert store.backlog() == 1
    record = store.get("x1")
    assert record is not None
    assert (record.event_id, record.state, record.reason, record.http_status, record.attempts) == (
        "x1",
        "dead",
        "rejected",
        400,
        1,
    )
    assert record.as_document()["event"]["event_id"] == "x1"


def test_kv_set_overwrites_and_keeps_the_time(store: OutboxStore) -> None:
    assert store.kv_get("pause") is None
    store.kv_set("pause", '{"reason": "401"}', 5)
    store.kv_set("pause", '{"reason": "403"}', 9)
    assert store.kv_get("pause") == ('{"reason": "403"}', 9)


def test_window_rates_come_from_the_request_log_and_dead_rows(store: OutboxStore) -> None:
    [empty] = store.window_rates(us(NOW), (60,))
    assert empty.delivery_success_ratio is None and empty.request_success_ratio is None
    store.record_request(now_us=us(NOW - 120), status=200, outcome="delivered", events=5, delivered=5)
    store.record_request(now_us=us(NOW - 100), status=503, outcome="retry", events=2, duration_ms=30.0)
    store.record_request(now_us=us(NOW - 1000), status=200, outcome="delivered", events=3, delivered=3)
    add_dead(store, ["x1"], now=NOW - 90)
    five, hour = store.window_rates(us(NOW), (300, 3600))
    assert (five.seconds, five.delivered, five.dead, five.requests, five.requests_ok) == (300, 5, 1, 2, 1)
    assert (hour.delivered, hour.requests, hour.requests_ok) == (8, 3, 2)
    assert five.delivery_success_ratio == 5 / 6 and five.request_success_ratio == 0.5


def test_delivered_per_minute_buckets_the_last_minutes(store: OutboxStore) -> None:
    store.record_request(now_us=NOW_US - 30 * US, status=200, outcome="delivered", events=4, delivered=4)
    store.record_request(now_us=NOW_US - 150 * US, status=200, outcome="delivered", events=2, delivered=2)
    buckets = store.delivered_per_minute(NOW_US, minutes=5)
    assert len(buckets) == 5 and sum(buckets) == 6
    assert buckets[-1] == 4 and buckets[-3] == 2


def test_the_meter_cache_is_replaced_whole(store: OutboxStore) -> None:
    assert store.meters_pulled_at_us() is None and store.cached_meters() == []
    first = [MeterRow("m1", "api.call", "Calls", "count", None, None, 0)]
    assert store.replace_meters(first, 10) == 1
    assert store.meters_pulled_at_us() == 10
    second = [
        MeterRow("m2", "b.event", "B", "sum", "tokens", '{"k": 1}', 0),
        MeterRow("m3", "a.event", None, None, None, None, 0),
    ]
    assert store.replace_meters(second, 20) == 2
    assert [(m.meter_id, m.pulled_at_us) for m in store.cached_meters()] == [("m3", 20), ("m2", 20)]
    assert store.replace_meters([], 30) == 0
    assert store.cached_meters() == [] and store.meters_pulled_at_us() == 30  # pulled, and none


def test_recent_events_by_name_and_delivered_sample(store: OutboxStore) -> None:
    add_delivered(store, ["d1"], now=NOW - 10)
    store.insert_groups([(events("a1", "a2", tokens=3), "cli"), (events("b1"), "cli")], NOW_US)
    stats = store.recent_events_by_name(NOW_US - US, {"api.call": ["tokens"]})
    [name] = stats
    assert (name.event_name, name.events) == ("api.call", 3)
    [key] = name.keys
    assert (key.key, key.missing) == ("tokens", 1)
    sample = store.delivered_sample(0, limit=10)
    assert [event_id for event_id, *_ in sample] == ["d1"]


def test_range_reads_give_billable_rows(store: OutboxStore) -> None:
    add_delivered(store, ["d1"], ts=NOW - 100)
    add_dead(store, ["x1"], ts=NOW - 100)
    add_pending(store, ["p1"], ts=NOW - 50)
    rows = list(store.billable_rows(us(NOW - 200), us(NOW)))
    assert sorted(r[0] for r in rows) == ["d1", "p1"]  # dead rows are not billable
    assert list(store.billable_rows(us(NOW - 75), us(NOW))) == [r for r in rows if r[0] == "p1"]
    found = store.rows_by_event_id(["d1", "x1", "missing"])
    assert set(found) >= {"d1"} and "missing" not in found
    assert found["d1"].state == "delivered"
