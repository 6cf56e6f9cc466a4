"""The local HTTP endpoint, through a real uvicorn on 127.0.0.1 (port 0) and real SQLite files."""

from __future__ import annotations

import json
import os
import random
import socket
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.config import HttpIntakeSettings
from agent.errors import ConfigError
from agent.intake.http import create_app
from agent.intake.server import HttpServer, parse_listen
from agent.ops import status as status_module
from agent.outbox import Outbox
from tests.builders import raw_event as event

TOKEN = "agent-token-1234"


@dataclass
class Agent:
    server: HttpServer
    outbox: Outbox
    shutting_down: threading.Event
    client: httpx.Client

    def post(self, body: Any, **kwargs: Any) -> httpx.Response:
        return self.client.post("/events/ingest", json=body, **kwargs)

    def stored(self) -> dict[str, tuple[str, str]]:
        """event_id -> (payload, source), read by a separate connection to the file."""
        with sqlite3.connect(self.outbox.path) as conn:
            rows = conn.execute("SELECT event_id, payload, source FROM dodo_outbox_events").fetchall()
        return {row[0]: (row[1], row[2]) for row in rows}


@pytest.fixture
def make_agent(tmp_path: Path) -> Iterator[Callable[..., Agent]]:
    agents: list[Agent] = []

    def make(
        *, token: str = "", max_events: int | None = None, listen: str = "127.0.0.1:0", **settings: Any
    ) -> Agent:
        outbox = Outbox(tmp_path / f"outbox{len(agents)}.db", max_events=max_events)
        config = HttpIntakeSettings(listen=listen, token=token, **settings)
        stopping = threading.Event()
        app = create_app(
            outbox,
            config,
            status=lambda: status_module.build(outbox.store),
            readiness=lambda: {"delivery_paused": True, "paused_reason": "no API key"},
            shutting_down=stopping,
            full_retry_after=0.25,
        )
        server = HttpServer(app, listen, token=token).start()
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if server.port is None:
            transport = httpx.HTTPTransport(uds=str(server.address))
            client = httpx.Client(base_url=server.url, headers=headers, transport=transport, timeout=10)
        else:
            client = httpx.Client(base_url=server.url, headers=headers, timeout=10)
        agents.append(Agent(server, outbox, stopping, client))
        return agents[-1]

    yield make
    for agent in agents:
        agent.client.close()
        agent.server.stop(1)
        agent.outbox.close()


@pytest.fixture
def agent(make_agent: Callable[..., Agent]) -> Agent:
    return make_agent()


def test_200_only_after_commit_and_counts_new_events(agent: Agent) -> None:
    response = agent.post({"events": [event("a"), event("b", metadata={"tokens": 5}), event("c")]})
    assert response.status_code == 200
    assert response.json() == {"ingested_count": 3}
    stored = agent.stored()  # another connection sees them: committed before the answer
    assert set(stored) == {"a", "b", "c"}
    assert stored["b"][1] == "http"
    assert json.loads(stored["b"][0])["metadata"] == {"tokens": 5}
    # A retry of stored events is not counted again; only the new one is.
    again = agent.post({"events": [event("a"), event("b", metadata={"tokens": 5}), event("d")]})
    assert again.json() == {"ingested_count": 1}
    assert len(agent.stored()) == 4


def test_every_problem_is_listed_and_nothing_stored(agent: Agent) -> None:
    future = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
    bad = {
        "events": [
            event("ok"),
            event("", timestamp=future),
            event("x", metadata={f"k{i}": i for i in range(51)}),
        ]
    }
    response = agent.post(bad)
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "BAD_REQUEST"
    paths = {p["path"] for p in body["problems"]}
    assert {"events[1].event_id", "events[1].timestamp", "events[2].metadata"} <= paths
    assert "3 problems" in body["message"]
    assert agent.stored() == {}


def test_duplicate_ids_in_one_request(agent: Agent) -> None:
    response = agent.post({"events": [event("a"), event("b"), event("a")]})
    assert response.status_code == 400
    assert response.json()["code"] == "DUPLICATE_EVENT_ID"
    assert response.json()["problems"][0]["path"] == "events[2].event_id"
    assert agent.stored() == {}


def test_two_clashing_events_in_one_request_are_both_named_and_counted(agent: Agent) -> None:
    from agent.ops import metrics

    def rejected() -> float:
        value = metrics.REGISTRY.get_sample_value(
            "dodo_outbox_events_rejected_total", {"source": "http", "reason": "duplicate_in_request"}
        )
        return value or 0.0

    before = rejected()
    response = agent.post(
        {"events": [event("a", metadata={"n": 1}), event("b"), event("a", metadata={"n": 2})]}
    )
    assert response.status_code == 400
    body = response.json()
    assert {p["path"] for p in body["problems"]} == {"events[0].event_id", "events[2].event_id"}
    assert "already" not in body["message"] and all("already" not in p["message"] for p in body["problems"])
    assert rejected() - before == 2
    assert agent.stored() == {}


def one(**fields: Any) -> bytes:
    """A body with one event of exactly these fields."""
    return json.dumps({"events": [fields]}).encode()


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 422, "UNPROCESSABLE_ENTITY"),
        (b"", 422, "UNPROCESSABLE_ENTITY"),
        (b"[]", 422, "UNPROCESSABLE_ENTITY"),
        (b'{"events": [], "extra": 1}', 422, "UNPROCESSABLE_ENTITY"),
        (b'{"events": {"event_id": "a"}}', 422, "UNPROCESSABLE_ENTITY"),
        (b'{"events": ["a"]}', 422, "UNPROCESSABLE_ENTITY"),
        (one(event_id="a", customer_id=1, event_name="n"), 422, "UNPROCESSABLE_ENTITY"),
        (one(event_id="a", customer_id="c", event_name="n", x=1), 422, None),
        (one(event_id="a", customer_id="c", event_name="n", metadata={"k": None}), 422, None),
        (one(event_id="a", customer_id="c"), 422, None),
        (b'{"events": []}', 400, "BAD_REQUEST"),
        (one(event_id="a", customer_id="c", event_name="n", timestamp="yesterday"), 400, None),
        (one(event_id=" a", customer_id="c", event_name="n"), 400, None),
    ],
)
def test_shape_and_rule_errors(agent: Agent, body: bytes, status: int, code: str | None) -> None:
    response = agent.client.post("/events/ingest", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == status, response.text
    payload = response.json()
    assert payload["code"] == (code or {422: "UNPROCESSABLE_ENTITY", 400: "BAD_REQUEST"}[status])
    assert payload["message"]
    assert agent.stored() == {}


def test_more_than_1000_events(agent: Agent) -> None:
    response = agent.post({"events": [event(f"e{i}") for i in range(1001)]})
    assert response.status_code == 400
    assert "1001" in response.json()["message"]
    assert agent.post({"events": [event(f"e{i}") for i in range(1000)]}).json() == {"ingested_count": 1000}


def test_conflict_is_400_not_409_and_stores_nothing_of_the_request(agent: Agent) -> None:
    assert agent.post({"events": [event("a", metadata={"n": 1})]}).status_code == 200
    response = agent.post({"events": [event("new"), event("a", metadata={"n": 2})]})
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "EVENT_CONFLICT"
    assert body["problems"][0]["path"] == "events[1].event_id"
    assert "new" not in agent.stored()


def test_a_retry_with_another_timestamp_is_answered_as_a_duplicate(agent: Agent) -> None:
    first = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 120))
    second = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 60))
    assert agent.post({"events": [event("a", timestamp=first)]}).json() == {"ingested_count": 1}
    response = agent.post({"events": [event("b"), event("a", timestamp=second)]})
    assert response.status_code == 200 and response.json() == {"ingested_count": 1}
    assert json.loads(agent.stored()["a"][0])["timestamp"] == first


def test_conflicts_name_every_index(agent: Agent) -> None:
    assert agent.post({"events": [event("a", metadata={"n": 1}), event("b")]}).status_code == 200
    response = agent.post(
        {"events": [event("a", metadata={"n": 2}), event("c"), event("b", metadata={"n": 1})]}
    )
    assert response.status_code == 400
    assert [p["path"] for p in response.json()["problems"]] == ["events[0].event_id", "events[2].event_id"]


def test_token(make_agent: Callable[..., Agent]) -> None:
    agent = make_agent(token=TOKEN)
    assert agent.post({"events": [event("a")]}).status_code == 200
    for headers in ({"Authorization": ""}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        refused = agent.post({"events": [event("b")]}, headers=headers)
        assert refused.status_code == 401
        assert refused.json()["code"] == "UNAUTHORIZED"
    assert agent.client.get("/v1/status", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert agent.client.get("/v1/status").json()["pending"] == 1
    assert agent.client.get("/healthz", headers={"Authorization": ""}).status_code == 200
    assert agent.client.get("/readyz", headers={"Authorization": ""}).status_code == 200
    assert set(agent.stored()) == {"a"}


def test_413_by_content_length_and_by_chunked_body(make_agent: Callable[..., Agent]) -> None:
    agent = make_agent(max_body_bytes=4096)
    big = {"events": [event(f"e{i}", metadata={"pad": "x" * 400}) for i in range(20)]}
    response = agent.post(big)
    assert response.status_code == 413
    assert response.json()["code"] == "PAYLOAD_TOO_LARGE"

    def chunks() -> Iterator[bytes]:  # no Content-Length: the size is counted while reading
        data = json.dumps(big).encode()
        for start in range(0, len(data), 1000):
            yield data[start : start + 1000]

    response = agent.client.post("/events/ingest", content=chunks())
    assert response.status_code == 413
    # A body far past the limit is cut off, still with an answer.
    response = agent.client.post("/events/ingest", content=(b"x" * 65536 for _ in range(200)))
    assert response.status_code == 413
    assert agent.stored() == {}
    assert agent.post({"events": [event("small")]}).status_code == 200


def test_slow_body_gets_408(make_agent: Callable[..., Agent]) -> None:
    agent = make_agent(read_timeout_seconds=0.3)
    with socket.create_connection(("127.0.0.1", agent.server.port), timeout=10) as sock:
        sock.sendall(
            b"POST /events/ingest HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 200\r\n\r\n{"events": ['
        )
        answer = b""
        while chunk := sock.recv(4096):  # the server closes the connection after its answer
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408")
    assert b"read_timeout_seconds" in answer


def test_wrong_content_type_is_415(agent: Agent) -> None:
    response = agent.client.post(
        "/events/ingest", content=b"events=1", headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert response.status_code == 415
    assert "application/json" in response.json()["message"]


def test_429_when_full_and_nothing_partial(make_agent: Callable[..., Agent]) -> None:
    agent = make_agent(max_events=3)
    assert agent.post({"events": [event("a"), event("b")]}).status_code == 200
    refused = agent.post({"events": [event("c"), event("d")]})
    assert refused.status_code == 429
    assert refused.json()["code"] == "OUTBOX_FULL"
    assert refused.headers["Retry-After"] == "1"
    assert refused.headers["retry-after-ms"] == "250"
    assert set(agent.stored()) == {"a", "b"}
    assert agent.post({"events": [event("c")]}).status_code == 200


def test_503_while_shutting_down(agent: Agent) -> None:
    agent.shutting_down.set()
    response = agent.post({"events": [event("a")]})
    assert response.status_code == 503
    assert response.json()["code"] == "SHUTTING_DOWN"
    assert int(response.headers["Retry-After"]) >= 1
    ready = agent.client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["shutting_down"] is True
    assert agent.client.get("/healthz").json() == {"status": "ok"}
    assert agent.stored() == {}


def test_readyz_reports_pause_and_closed_outbox(agent: Agent) -> None:
    ready = agent.client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["paused_reason"] == "no API key"
    agent.outbox.close()
    assert agent.client.get("/readyz").status_code == 503
    response = agent.post({"events": [event("a")]})
    assert response.status_code == 503
    assert response.json()["code"] == "OUTBOX_UNAVAILABLE"
    assert agent.client.get("/v1/status").status_code == 503


def test_unknown_route_and_method_are_json(agent: Agent) -> None:
    assert agent.client.get("/nope").json()["code"] == "NOT_FOUND"
    assert agent.client.get("/events/ingest").json()["code"] == "METHOD_NOT_ALLOWED"


def test_concurrent_requests_all_committed(agent: Agent) -> None:
    results: list[int] = []

    def send(n: int) -> None:
        with httpx.Client(base_url=agent.server.url, timeout=30) as client:
            for k in range(5):
                body = {"events": [event(f"t{n}-{k}-{j}") for j in range(3)]}
                results.append(client.post("/events/ingest", json=body).json()["ingested_count"])

    threads = [threading.Thread(target=send, args=(n,)) for n in range(64)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [3] * 320
    assert len(agent.stored()) == 960


def test_unix_socket(make_agent: Callable[..., Agent], tmp_path: Path) -> None:
    path = tmp_path / "agent.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # the file stays: a stale socket from a process that died
    agent = make_agent(listen=f"unix:{path}")
    assert stat.S_IMODE(path.stat().st_mode) == 0o660
    assert agent.post({"events": [event("u")]}).json() == {"ingested_count": 1}
    with pytest.raises(ConfigError, match="another process"):
        HttpServer(agent.server.app, f"unix:{path}").start()
    agent.server.stop(1)
    assert not path.exists()


def test_non_loopback_without_token_is_refused() -> None:
    app = object()
    for listen in ("0.0.0.0:8790", "[::]:8790", "192.168.1.10:8790", "example.com:8790"):
        with pytest.raises(ConfigError, match=r"\[intake.http\] listen.*\[intake.http\] token"):
            HttpServer(app, listen)  # type: ignore[arg-type]
        HttpServer(app, listen, token=TOKEN)  # type: ignore[arg-type]
    for listen in ("127.0.0.1:0", "127.8.9.1:1", "[::1]:8790", "localhost:8790", "unix:/run/x.sock"):
        HttpServer(app, listen)  # type: ignore[arg-type]
    for bad in ("8790", "::1:8790", "host:port", "unix:relative.sock", "127.0.0.1:70000"):
        with pytest.raises(ConfigError, match=r"\[intake.http\] listen"):
            parse_listen(bad)


def test_address_in_use_names_the_key(agent: Agent) -> None:
    with pytest.raises(ConfigError, match=r"\[intake.http\] listen"):
        HttpServer(agent.server.app, f"127.0.0.1:{agent.server.port}").start()


def _malformed(rng: random.Random) -> bytes:
    """A body that is wrong in one of many ways, often with valid events around the bad part."""
    good = [event(f"g{rng.randrange(10**9)}") for _ in range(rng.randrange(0, 3))]
    bad_values: list[Any] = [
        None, 1, 1.5, True, "s", [], {}, [1], {"a": {"b": []}}, "\u0000", "x" * 600, 10**30, -(10**30),
        "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "2026-13-45T99:99:99Z", float("nan"),
    ]  # fmt: skip
    broken = event(f"b{rng.randrange(10**9)}")
    key = rng.choice(["event_id", "customer_id", "event_name", "timestamp", "metadata", "extra"])
    broken[key] = rng.choice(bad_values)
    if rng.random() < 0.5:
        broken["metadata"] = {rng.choice(["k", "", "x" * 120]): rng.choice(bad_values)}
    events = [*good, broken]
    rng.shuffle(events)
    text = json.dumps({"events": events}, allow_nan=True).encode()
    mutation = rng.randrange(8)
    if mutation == 0:
        return text[: rng.randrange(len(text))]  # truncated
    if mutation == 1:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))  # binary noise
    if mutation == 2:
        return b'{"events": ' + b"[" * 5000 + b"]" * 5000 + b"}"  # deep nesting
    if mutation == 3:
        return text.replace(b'"cus_1"', b'"\xff\xfe"', 1)  # invalid UTF-8
    if mutation == 4:
        return text.replace(b'"cus_1"', b'"\\ud800"', 1)  # a lone surrogate
    if mutation == 5:
        return b'{"events": [' + b"1" * 5000 + b"]}"  # a huge number
    return text


def test_malformed_bodies_never_5xx_and_never_partial(agent: Agent) -> None:
    rng = random.Random(4)
    for _ in range(300):
        body = _malformed(rng)
        before = len(agent.stored())
        content_type = rng.choice(["application/json", "application/json; charset=utf-8", None])
        headers = {"Content-Type": content_type} if content_type else {}
        response = agent.client.post("/events/ingest", content=body, headers=headers)
        assert response.status_code < 500, (body[:200], response.text)
        if response.status_code == 200:
            continue
        assert response.json()["message"], body[:200]
        assert len(agent.stored()) == before, body[:200]
    assert agent.client.get("/healthz").status_code == 200


def test_unix_socket_leaves_no_staging_file(tmp_path: Path, make_agent: Callable[..., Agent]) -> None:
    make_agent(listen=f"unix:{tmp_path / 's.sock'}")
    assert sorted(os.listdir(tmp_path)) == ["outbox0.db", "outbox0.db-shm", "outbox0.db-wal", "s.sock"]
