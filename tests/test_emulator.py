"""The fake Dodo, over real HTTP on 127.0.0.1: every contract rule, the rate limit, the read-back
endpoints, each fault kind and the admin API. Time-dependent rules use an injected clock."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.emulator import EmulatorConfig, EmulatorServer
from tests.builders import raw_event as event

KEY = "test_key"
AUTH = {"Authorization": f"Bearer {KEY}"}


def iso(moment: datetime) -> str:
    return moment.isoformat()


class FakeTime:
    """A clock that moves only when told: for the rate limit, outages and the timestamp window."""

    def __init__(self, start: float = 1_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def shared_server() -> Iterator[EmulatorServer]:
    # One server for the many stateless-rule tests; each test starts from a reset.
    with EmulatorServer(EmulatorConfig(rate_limit=False, read_only_keys=("ro_key",))) as server:
        yield server


@pytest.fixture
def dodo(shared_server: EmulatorServer) -> EmulatorServer:
    shared_server.reset()
    return shared_server


@pytest.fixture
def client(dodo: EmulatorServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=dodo.url, headers=AUTH, timeout=5) as http:
        yield http


def ingest(http: httpx.Client, *events: dict[str, Any], **kwargs: Any) -> httpx.Response:
    return http.post("/events/ingest", json={"events": list(events)}, **kwargs)


# -- the fixtures the rest of the suite uses -------------------------------------------------------


def test_fake_dodo_fixture_serves_on_loopback(fake_dodo: EmulatorServer) -> None:
    assert fake_dodo.url.startswith("http://127.0.0.1:")
    response = httpx.post(f"{fake_dodo.url}/events/ingest", headers=AUTH, json={"events": [event()]})
    assert response.json() == {"ingested_count": 1}
    assert list(fake_dodo.events) == ["e1"]


def test_factory_takes_config_kwargs(fake_dodo_factory: Callable[..., EmulatorServer]) -> None:
    fake = fake_dodo_factory(keys=["other"])
    response = httpx.post(f"{fake.url}/events/ingest", headers=AUTH, json={"events": [event()]})
    assert response.status_code == 401


# -- success and idempotency -----------------------------------------------------------------------


def test_ingest_stores_events_with_the_timestamp_dodo_would_use(
    dodo: EmulatorServer, client: httpx.Client
) -> None:
    stamp = datetime.now(UTC).replace(microsecond=0)
    given = event("a", timestamp=iso(stamp), metadata={"tokens": 150, "model": "m", "ok": True, "x": 1.5})
    response = ingest(client, given, event("b"))
    assert response.status_code == 200
    assert response.json() == {"ingested_count": 2}
    stored = dodo.events
    assert stored["a"]["timestamp"] == stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    assert stored["a"]["metadata"] == {"tokens": 150, "model": "m", "ok": True, "x": 1.5}
    # No timestamp: the receipt time, on the emulator's clock.
    assert abs(datetime.fromisoformat(stored["b"]["timestamp"]) - dodo.state.now()) < timedelta(minutes=1)
    assert client.get("/events/a").json() == stored["a"]


def test_resent_event_ids_are_ignored_and_not_counted(dodo: EmulatorServer, client: httpx.Client) -> None:
    assert ingest(client, event("a"), event("b")).json() == {"ingested_count": 2}
    assert ingest(client, event("a"), event("b"), event("c")).json() == {"ingested_count": 1}
    assert ingest(client, event("c", customer_id="cus_changed")).json() == {"ingested_count": 0}
    assert dodo.events["c"]["customer_id"] == "cus_1"  # the first copy wins
    stats = dodo.stats()
    assert stats["events_received"] == 6
    assert stats["events_stored"] == 3
    assert stats["duplicates_ignored"] == 3
    assert stats["requests_by_status"] == {"200": 3}


# -- auth ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer nope"}, {"Authorization": KEY}, {"Authorization": f"Basic {KEY}"}],
    ids=["missing", "unknown-key", "no-scheme", "wrong-scheme"],
)
def test_a_bad_key_gets_401(dodo: EmulatorServer, headers: dict[str, str]) -> None:
    response = httpx.post(f"{dodo.url}/events/ingest", headers=headers, json={"events": [event()]})
    assert response.status_code == 401
    assert response.json()["code"] == "UNAUTHORIZED"
    assert "x-ratelimit-limit" in response.headers
    assert dodo.events == {}


def test_a_read_only_key_gets_403_on_ingest_but_may_read(dodo: EmulatorServer) -> None:
    with httpx.Client(base_url=dodo.url, headers={"Authorization": "Bearer ro_key"}) as http:
        response = ingest(http, event())
        assert response.status_code == 403
        assert response.json()["code"] == "FORBIDDEN"
        assert http.get("/meters").status_code == 200
    assert dodo.events == {}


def test_read_endpoints_need_a_key(dodo: EmulatorServer) -> None:
    for path in ("/meters", "/events", "/events/e1"):
        assert httpx.get(f"{dodo.url}{path}").status_code == 401


def test_keys_can_be_changed_at_run_time(dodo: EmulatorServer, client: httpx.Client) -> None:
    assert client.post("/_emulator/keys", json={"keys": ["new"]}).status_code == 200
    assert ingest(client, event("a")).status_code == 401
    fixed = {"Authorization": "Bearer new"}
    assert (
        httpx.post(f"{dodo.url}/events/ingest", headers=fixed, json={"events": [event("a")]}).status_code
        == 200
    )
    dodo.set_keys([KEY])
    assert ingest(client, event("b")).status_code == 200


# -- the body: shape (422), counts (400), fields ---------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"[]", b'{"events": {}}', b"{}", b'{"events": [], "extra": 1}', b'{"events": ["x"]}'],
    ids=["malformed", "a-list", "events-not-list", "no-events", "unknown-top-key", "event-not-object"],
)
def test_a_malformed_body_gets_422(client: httpx.Client, body: bytes) -> None:
    response = client.post("/events/ingest", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    assert response.json()["code"] == "UNPROCESSABLE_ENTITY"


@pytest.mark.parametrize("count", [0, 1001])
def test_zero_or_more_than_1000_events_get_400(
    dodo: EmulatorServer, client: httpx.Client, count: int
) -> None:
    response = ingest(client, *(event(f"e{i}") for i in range(count)))
    assert response.status_code == 400
    assert "events" in response.json()["message"]
    assert dodo.events == {}


def test_1000_events_are_accepted(client: httpx.Client) -> None:
    assert ingest(client, *(event(f"e{i}") for i in range(1000))).json() == {"ingested_count": 1000}


TOO_MANY_KEYS = {f"k{i}": i for i in range(51)}
FIELD_RULES: list[tuple[str, dict[str, Any], int, str]] = [
    ("missing-id", {"event_id": None}, 422, "events[1].event_id: required"),
    ("id-not-string", {"event_id": 7}, 422, "events[1].event_id: must be a string"),
    ("customer-not-string", {"customer_id": ["c"]}, 422, "events[1].customer_id"),
    ("name-missing", {"event_name": None}, 422, "events[1].event_name: required"),
    ("empty-id", {"event_id": ""}, 400, "events[1].event_id: must not be empty"),
    ("empty-customer", {"customer_id": ""}, 400, "events[1].customer_id: must not be empty"),
    ("empty-name", {"event_name": ""}, 400, "events[1].event_name: must not be empty"),
    ("unknown-field", {"quantity": 3}, 422, "events[1].quantity: unknown field"),
    ("timestamp-not-string", {"timestamp": 1700000000}, 422, "events[1].timestamp"),
    ("timestamp-garbage", {"timestamp": "yesterday"}, 400, "events[1].timestamp"),
    ("timestamp-date-only", {"timestamp": "2024-01-01"}, 400, "events[1].timestamp"),
    ("metadata-not-object", {"metadata": [1]}, 422, "events[1].metadata"),
    ("metadata-null-value", {"metadata": {"a": None}}, 422, "events[1].metadata.a"),
    ("metadata-object-value", {"metadata": {"a": {"b": 1}}}, 422, "events[1].metadata.a"),
    ("metadata-array-value", {"metadata": {"a": [1]}}, 422, "events[1].metadata.a"),
    ("metadata-51-keys", {"metadata": TOO_MANY_KEYS}, 400, "events[1].metadata: at most 50 keys"),
    ("metadata-long-key", {"metadata": {"k" * 101: 1}}, 400, "events[1].metadata"),
    ("metadata-long-value", {"metadata": {"k": "v" * 501}}, 400, "events[1].metadata.k"),
]


@pytest.mark.parametrize(
    ("change", "status", "message"), [r[1:] for r in FIELD_RULES], ids=[r[0] for r in FIELD_RULES]
)
def test_one_bad_event_fails_the_whole_request(
    dodo: EmulatorServer, client: httpx.Client, change: dict[str, Any], status: int, message: str
) -> None:
    bad = event("bad")
    for name, value in change.items():
        if value is None:
            del bad[name]
        else:
            bad[name] = value
    response = ingest(client, event("good"), bad)
    assert response.status_code == status
    assert message in response.json()["message"]
    assert dodo.events == {}
    assert dodo.stats()["rejected_requests"] == 1


def test_metadata_at_the_limits_is_accepted(client: httpx.Client) -> None:
    at_limits = {f"k{i}": "v" * 500 for i in range(49)} | {"k" * 100: 1}
    assert ingest(client, event(metadata=at_limits)).status_code == 200


def test_a_duplicate_id_inside_one_request_gets_400(dodo: EmulatorServer, client: httpx.Client) -> None:
    response = ingest(client, event("a"), event("b"), event("a"))
    assert response.status_code == 400
    assert response.json()["code"] == "DUPLICATE_EVENT_ID"
    assert "events[2].event_id" in response.json()["message"]
    assert dodo.events == {}


def test_a_body_over_max_body_bytes_gets_413(fake_dodo_factory: Callable[..., EmulatorServer]) -> None:
    fake = fake_dodo_factory(max_body_bytes=2_000)
    big = {"events": [event(f"e{i}") for i in range(40)]}
    response = httpx.post(f"{fake.url}/events/ingest", headers=AUTH, json=big)
    assert response.status_code == 413
    assert response.json()["code"] == "PAYLOAD_TOO_LARGE"
    assert fake.events == {}


# -- the timestamp window, on an injected clock ----------------------------------------------------


@pytest.fixture
def clocked() -> Iterator[tuple[EmulatorServer, FakeTime]]:
    wall = FakeTime(datetime(2025, 6, 1, 12, 0, tzinfo=UTC).timestamp())
    with EmulatorServer(EmulatorConfig(rate_limit=False), clock=wall) as server:
        yield server, wall


@pytest.mark.parametrize(
    ("timestamp", "status"),
    [
        ("2025-06-01T11:00:00Z", 200),  # exactly 1 h old
        ("2025-06-01T10:59:59Z", 400),
        ("2025-06-01T12:05:00+00:00", 200),  # exactly 5 min ahead
        ("2025-06-01T12:05:01Z", 400),
        ("2025-06-01T14:04:00+02:00", 200),  # an offset: 12:04 UTC
        ("2025-06-01T16:00:00+02:00", 400),  # 14:00 UTC, 2 h ahead
        ("2025-06-01T11:30:00", 200),  # naive means UTC
        ("2025-06-01T13:30:00", 400),
        ("2025-06-01T11:59:59.123456Z", 200),
    ],
)
def test_the_timestamp_window(clocked: tuple[EmulatorServer, FakeTime], timestamp: str, status: int) -> None:
    server, _ = clocked
    response = httpx.post(
        f"{server.url}/events/ingest", headers=AUTH, json={"events": [event(timestamp=timestamp)]}
    )
    assert response.status_code == status, response.text
    if status == 400:
        assert response.json()["message"].startswith("events[0].timestamp")


def test_stored_timestamps_are_utc(clocked: tuple[EmulatorServer, FakeTime]) -> None:
    server, _ = clocked
    body = {"events": [event("a", timestamp="2025-06-01T14:04:00+02:00"), event("b")]}
    assert httpx.post(f"{server.url}/events/ingest", headers=AUTH, json=body).status_code == 200
    assert server.events["a"]["timestamp"] == "2025-06-01T12:04:00.000Z"
    assert server.events["b"]["timestamp"] == "2025-06-01T12:00:00.000Z"


def test_the_clock_offset_moves_the_window(clocked: tuple[EmulatorServer, FakeTime]) -> None:
    server, _ = clocked
    body = {"events": [event(timestamp="2025-06-01T12:00:00Z")]}
    clock = httpx.post(f"{server.url}/_emulator/clock", json={"offset_seconds": 7200})
    assert clock.json()["offset_seconds"] == 7200
    assert httpx.post(f"{server.url}/events/ingest", headers=AUTH, json=body).status_code == 400
    server.set_clock_offset(0)
    assert httpx.post(f"{server.url}/events/ingest", headers=AUTH, json=body).status_code == 200


def test_the_window_is_configurable(fake_dodo_factory: Callable[..., EmulatorServer]) -> None:
    fake = fake_dodo_factory(window_seconds=60, future_seconds=0)
    old = fake.state.now() - timedelta(seconds=600)
    ahead = fake.state.now() + timedelta(seconds=600)
    for moment in (old, ahead):
        body = {"events": [event(timestamp=iso(moment))]}
        assert httpx.post(f"{fake.url}/events/ingest", headers=AUTH, json=body).status_code == 400


# -- the rate limit, on an injected monotonic clock ------------------------------------------------


def test_the_rate_limit_burst_then_sustained() -> None:
    tick = FakeTime()
    config = EmulatorConfig(rate_per_second=5, rate_per_minute=8)
    with (
        EmulatorServer(config, monotonic=tick) as server,
        httpx.Client(base_url=server.url, headers=AUTH) as http,
    ):
        remaining = [ingest(http, event(f"a{i}")).headers["x-ratelimit-remaining"] for i in range(5)]
        assert remaining == ["4", "3", "2", "1", "0"]
        refused = ingest(http, event("a5"))
        assert refused.status_code == 429
        assert refused.json()["code"] == "RATE_LIMITED"
        assert refused.headers["retry-after"] == "1"
        assert refused.headers["x-ratelimit-limit"] == "5"
        assert "a5" not in server.events
        tick.now += 1  # the burst bucket is full again; the minute bucket has 3 + 8/60 left
        assert [ingest(http, event(f"b{i}")).status_code for i in range(4)] == [200, 200, 200, 429]
        last = ingest(http, event("c"))
        assert last.headers["x-ratelimit-limit"] == "8"
        assert last.headers["retry-after"] == "7"  # (1 - 8/60) tokens at 8/60 per second
        assert int(last.headers["x-ratelimit-reset"]) > 0
        assert server.stats()["requests_by_status"] == {"200": 8, "429": 3}


def test_the_rate_limit_can_be_disabled(fake_dodo_factory: Callable[..., EmulatorServer]) -> None:
    fake = fake_dodo_factory(rate_limit=False, rate_per_second=1, rate_per_minute=1)
    with httpx.Client(base_url=fake.url, headers=AUTH) as http:
        assert {ingest(http, event(f"e{i}")).status_code for i in range(5)} == {200}


def test_read_endpoints_carry_rate_limit_headers(client: httpx.Client) -> None:
    response = client.get("/meters")
    assert {"x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset"} <= set(response.headers)


# -- the read-back endpoints -----------------------------------------------------------------------


METERS = [
    {"event_name": f"ev.{i}", "aggregation": {"type": "sum", "key": "tokens"}, "archived": i == 4}
    for i in range(5)
]


def test_meters_are_paged_until_an_empty_page(fake_dodo_factory: Callable[..., EmulatorServer]) -> None:
    fake = fake_dodo_factory(meters=METERS)
    with httpx.Client(base_url=fake.url, headers=AUTH) as http:
        pages = [
            http.get("/meters", params={"page_size": 2, "page_number": n}).json()["items"] for n in range(3)
        ]
        assert [[m["event_name"] for m in page] for page in pages] == [["ev.0", "ev.1"], ["ev.2", "ev.3"], []]
        assert pages[0][0]["aggregation"] == {"type": "sum", "key": "tokens"}
        assert pages[0][0]["id"] and pages[0][0]["filter"] is None
        archived = http.get("/meters", params={"archived": "true"}).json()["items"]
        assert [m["event_name"] for m in archived] == ["ev.4"]
        assert http.get("/meters", params={"page_size": 101}).status_code == 422


def test_meters_from_a_file(fake_dodo_factory: Callable[..., EmulatorServer], tmp_path: Path) -> None:
    path = tmp_path / "meters.json"
    path.write_text(json.dumps([{"id": "mtr_1", "event_name": "llm", "aggregation": {"type": "count"}}]))
    fake = fake_dodo_factory(meters_file=path)
    items = httpx.get(f"{fake.url}/meters", headers=AUTH).json()["items"]
    assert [(m["id"], m["aggregation"]) for m in items] == [("mtr_1", {"type": "count", "key": None})]


def test_a_bad_meter_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match=r"meters\[0\]\.aggregation\.key"):
        EmulatorServer(EmulatorConfig(meters=[{"event_name": "x", "aggregation": {"type": "sum"}}]))


def test_get_events_filters_and_pages(dodo: EmulatorServer, client: httpx.Client) -> None:
    ingest(client, event("a"), event("b", customer_id="cus_2"), event("c", event_name="other"), event("d"))
    assert client.get("/events/nope").status_code == 404
    listed = client.get("/events", params={"customer_id": "cus_1", "event_name": "api.call"}).json()["items"]
    assert [e["event_id"] for e in listed] == ["a", "d"]
    second = client.get("/events", params={"page_size": 3, "page_number": 1}).json()["items"]
    assert [e["event_id"] for e in second] == ["d"]
    assert client.get("/events", params={"start": "not a date"}).status_code == 422


def test_unknown_routes_answer_json(client: httpx.Client) -> None:
    assert client.get("/nope").json()["code"] == "NOT_FOUND"
    assert client.delete("/events/ingest").status_code == 405


# -- faults ----------------------------------------------------------------------------------------


def test_a_script_forces_outcomes_in_order(dodo: EmulatorServer, client: httpx.Client) -> None:
    dodo.set_faults(script=[503, 500, 200, 429], retry_after_seconds=3)
    statuses = [ingest(client, event(f"e{i}")).status_code for i in range(5)]
    assert statuses == [503, 500, 200, 429, 200]
    assert set(dodo.events) == {"e2", "e4"}  # a fault answers before anything is stored
    assert dodo.stats()["faults_injected"] == 3
    assert dodo.faults()["script"] == []


def test_an_injected_429_carries_retry_after(dodo: EmulatorServer, client: httpx.Client) -> None:
    dodo.set_faults(error_rates={429: 1.0}, retry_after_seconds=3)
    response = ingest(client, event())
    assert (response.status_code, response.headers["retry-after"]) == (429, "3")


def test_error_rates_are_seeded(dodo: EmulatorServer, client: httpx.Client) -> None:
    def run() -> list[int]:
        dodo.reset()
        dodo.set_faults(error_rates={"500": 0.5}, seed=7)
        return [ingest(client, event(f"e{i}")).status_code for i in range(30)]

    first = run()
    assert set(first) == {200, 500}
    assert run() == first


@pytest.mark.parametrize("how", [{"script": ["drop"]}, {"drop_rate": 1.0}])
def test_drop_closes_the_connection_and_stores_nothing(
    dodo: EmulatorServer, client: httpx.Client, how: dict[str, Any]
) -> None:
    dodo.set_faults(**how)
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        ingest(client, event())
    assert dodo.events == {}
    assert dodo.stats()["requests_by_status"] == {"drop": 1}


def test_ack_lost_stores_then_drops_so_a_retry_is_not_counted(
    dodo: EmulatorServer, client: httpx.Client
) -> None:
    dodo.set_faults(ack_lost_rate=1.0)
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        ingest(client, event("a"))
    assert set(dodo.events) == {"a"}
    dodo.clear_faults()
    assert ingest(client, event("a")).json() == {"ingested_count": 0}


def test_timeout_hangs_until_the_client_gives_up(dodo: EmulatorServer, client: httpx.Client) -> None:
    dodo.set_faults(script=["timeout"], timeout_sleep_seconds=30)
    with pytest.raises(httpx.ReadTimeout):
        ingest(client, event(), timeout=0.3)
    assert dodo.events == {}
    assert dodo.stats()["requests_by_status"] == {"timeout": 1}


def test_timeout_answers_504_after_the_sleep(dodo: EmulatorServer, client: httpx.Client) -> None:
    dodo.set_faults(timeout_rate=1.0, timeout_sleep_seconds=0.05)
    assert ingest(client, event()).status_code == 504
    assert dodo.events == {}


def test_an_outage_answers_503_until_it_ends() -> None:
    tick = FakeTime()
    with EmulatorServer(monotonic=tick) as server, httpx.Client(base_url=server.url, headers=AUTH) as http:
        server.set_faults(outage_seconds=30)
        assert [ingest(http, event(f"e{i}")).status_code for i in range(3)] == [503, 503, 503]
        # The load balancer answers before the key is looked at.
        assert httpx.post(f"{server.url}/events/ingest", json={"events": [event()]}).status_code == 503
        tick.now += 31
        assert ingest(http, event("e9")).status_code == 200
        assert set(server.events) == {"e9"}


def test_latency_still_answers(dodo: EmulatorServer, client: httpx.Client) -> None:
    dodo.set_faults(latency_ms=20)
    assert ingest(client, event()).status_code == 200


def test_faults_over_the_admin_api(dodo: EmulatorServer, client: httpx.Client) -> None:
    admin = "/_emulator/faults"
    plan = {"script": [502, "drop"], "error_rates": {"500": 0.1}, "seed": 1}
    assert client.post(admin, json=plan).status_code == 200
    assert client.get(admin).json()["script"] == [502, "drop"]
    assert ingest(client, event()).status_code == 502
    assert client.delete(admin).json()["script"] == []
    bad = client.post(admin, json={"error_rates": {"500": 0.7, "503": 0.7}})
    assert bad.status_code == 400 and "sum to at most 1" in bad.json()["message"]
    assert client.post(admin, json={"script": ["explode"]}).status_code == 400
    assert client.post(admin, json={"nonsense": 1}).status_code == 400


# -- the admin API ---------------------------------------------------------------------------------


def test_stats_events_log_and_reset_over_http(dodo: EmulatorServer, client: httpx.Client) -> None:
    ingest(client, event("a"), event("b"))
    ingest(client, event("a"))
    ingest(client, event(""))
    base = "/_emulator"
    stats = client.get(f"{base}/stats").json()
    assert stats == {
        "requests": 3,
        "requests_by_status": {"200": 2, "400": 1},
        "events_received": 3,
        "events_stored": 2,
        "duplicates_ignored": 1,
        "rejected_requests": 1,
        "faults_injected": 0,
    }
    assert [e["event_id"] for e in client.get(f"{base}/events").json()["items"]] == ["a", "b"]
    log = client.get(f"{base}/log").json()["items"]
    assert [(entry["outcome"], entry["ingested_count"]) for entry in log] == [
        ("200", 2),
        ("200", 0),
        ("400", None),
    ]
    # How many events each request carried, and when it came (monotonic, in order): the fleet tests
    # check batch sizes and request windows against the budget from this log.
    assert [entry["events"] for entry in log] == [2, 1, 1]
    assert log[0]["at"] <= log[1]["at"] <= log[2]["at"]
    dodo.set_faults(script=[503])
    ingest(client, event("c"), event("d"), event("e"))
    faulty = client.get(f"{base}/log").json()["items"][-1]
    assert (faulty["outcome"], faulty["events"]) == ("503", 3)  # a faulty answer still counts its batch
    dodo.set_faults(script=[503])
    dodo.set_keys(["other"])
    assert client.post(f"{base}/reset").status_code == 200
    assert client.get(f"{base}/stats").json()["requests"] == 0
    assert dodo.events == {}
    assert ingest(client, event("a")).json() == {"ingested_count": 1}  # keys and faults are back to config


# -- the official SDK is a client of the emulator as it is of Dodo -----------------------------------------


def test_the_official_sdk_talks_to_the_emulator(fake_dodo_factory: Callable[..., EmulatorServer]) -> None:
    dodopayments = pytest.importorskip("dodopayments")
    fake = fake_dodo_factory(meters=[{"event_name": "api.call", "aggregation": {"type": "count"}}])
    sdk = dodopayments.DodoPayments(bearer_token=KEY, base_url=fake.url, max_retries=0)
    stamp = datetime.now(UTC)
    answer = sdk.usage_events.ingest(events=[event("a", timestamp=stamp, metadata={"tokens": 5})])
    assert answer.ingested_count == 1
    stored = sdk.usage_events.retrieve("a")
    assert (stored.event_id, stored.business_id, stored.metadata) == ("a", "bus_emulator", {"tokens": 5})
    assert [meter.event_name for meter in sdk.meters.list(page_size=10).items] == ["api.call"]
    with pytest.raises(dodopayments.BadRequestError):
        sdk.usage_events.ingest(events=[event("b"), event("b")])
