"""Fuzz the local HTTP endpoint, served by a real uvicorn on 127.0.0.1: random and malformed bodies,
wrong content types, huge bodies, invalid UTF-8, deep nesting, slow and vanishing clients (raw sockets).

Whatever comes in: never a 5xx, never a crash (the server answers a well-formed request afterwards
and logged no `intake_crashed`), and never a partial batch (the row count is unchanged by every
refused request; a 200 stores exactly the request's new events).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from agent.config import HttpIntakeSettings
from agent.intake.http import create_app
from agent.intake.server import HttpServer
from agent.ops import status as status_module
from agent.outbox import Outbox

MAX_BODY = 64 * 1024
READ_TIMEOUT = 0.5
SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
REFUSALS = {400, 408, 413, 415, 422}


@dataclass
class Endpoint:
    server: HttpServer
    outbox: Outbox
    client: httpx.Client
    logs: list[MutableMapping[str, Any]]

    @property
    def address(self) -> tuple[str, int]:
        address = self.server.address
        assert isinstance(address, tuple)
        return address

    def rows(self) -> int:
        return sum(self.outbox.store.counts().values())

    def post(self, body: bytes, content_type: str | None = "application/json") -> httpx.Response:
        # Bytes, so a header with non-ASCII characters is sent as is (latin-1), not refused by httpx.
        headers: dict[bytes, bytes] = {}
        if content_type is not None:
            headers[b"Content-Type"] = content_type.encode("latin-1")
        return self.client.post("/events/ingest", content=body, headers=headers)

    def check(self, response: httpx.Response, before: int, events: int | None = None) -> None:
        """The invariants of one answer: no 5xx; refused → nothing stored; 200 → its new events stored."""
        assert response.status_code < 500, (response.status_code, response.text[:500])
        after = self.rows()
        if response.status_code == 200:
            ingested = response.json()["ingested_count"]
            assert after == before + ingested
            if events is not None:
                assert ingested <= events
        else:
            assert response.status_code in REFUSALS, (response.status_code, response.text[:300])
            assert after == before, f"a refused request ({response.status_code}) stored {after - before} rows"
            body = response.json()
            assert body["code"] and body["message"]

    def alive(self) -> None:
        """A well-formed request still succeeds (the server survived whatever came before)."""
        before = self.rows()
        event = {"event_id": f"alive-{time.monotonic_ns()}", "customer_id": "c", "event_name": "n"}
        response = httpx.post(f"{self.server.url}/events/ingest", json={"events": [event]}, timeout=10)
        assert response.status_code == 200 and self.rows() == before + 1


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoint]:
    outbox = Outbox(Path(tmp_path_factory.mktemp("http")) / "outbox.db")
    settings_ = HttpIntakeSettings(
        listen="127.0.0.1:0", max_body_bytes=MAX_BODY, read_timeout_seconds=READ_TIMEOUT
    )
    app = create_app(
        outbox,
        settings_,
        status=lambda: status_module.build(outbox.store),
        readiness=lambda: {},
    )
    with capture_logs() as logs:
        server = HttpServer(app, settings_.listen).start()
        client = httpx.Client(base_url=server.url, timeout=10)
        yield Endpoint(server, outbox, client, logs)
        client.close()
        server.stop(2)
    outbox.close()
    crashed = [entry for entry in logs if entry.get("event") == "intake_crashed"]
    assert crashed == [], crashed[:3]


# -- strategies ---------------------------------------------------------------------------------------


def dumps(value: Any) -> bytes:
    """JSON bytes of any value: big integers and infinities included (stdlib json writes them)."""
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False), st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
valid_event = st.fixed_dictionaries(
    {
        "event_id": st.text(st.characters(exclude_categories=("Cs", "Zs", "Cc")), min_size=1, max_size=40),
        "customer_id": st.sampled_from(["cus_1", "cus_2"]),
        "event_name": st.sampled_from(["api.call", "llm.chat_completion"]),
    },
    optional={
        "metadata": st.dictionaries(st.text(min_size=1, max_size=10), st.integers(0, 10**6), max_size=3)
    },
)
field_names = st.sampled_from(["event_id", "customer_id", "event_name", "timestamp", "metadata", "extra"])


@st.composite
def mangled_event(draw: st.DrawFn) -> object:
    """A valid event with one field replaced by any JSON value (or not an object at all)."""
    if draw(st.integers(0, 9)) == 0:
        return draw(json_values)
    event: dict[str, Any] = dict(draw(valid_event))
    event[draw(field_names)] = draw(json_values)
    return event


@st.composite
def bodies(draw: st.DrawFn) -> tuple[bytes, int | None]:
    """(body bytes, how many events it carries when it is a Dodo body)."""
    kind = draw(st.sampled_from(["valid", "mixed", "json", "bytes", "truncated", "bad_utf8", "wrapped"]))
    events: list[Any] = draw(st.lists(valid_event, min_size=1, max_size=6))
    if kind == "valid":
        return dumps({"events": events}), len(events)
    if kind == "mixed":
        events.insert(draw(st.integers(0, len(events))), draw(mangled_event()))
        return dumps({"events": events}), len(events)
    if kind == "json":
        return dumps(draw(json_values)), None
    if kind == "bytes":
        return draw(st.binary(max_size=300)), None
    raw = dumps({"events": events})
    if kind == "truncated":
        return raw[: draw(st.integers(0, len(raw) - 1))], None
    if kind == "bad_utf8":
        at = draw(st.integers(0, len(raw)))
        return raw[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80\x80"])) + raw[
            at:
        ], None
    other = draw(
        st.dictionaries(
            st.text(max_size=6).filter(lambda k: k != "events"), json_values, min_size=1, max_size=2
        )
    )
    return dumps({"events": events, **other}), None


content_types = st.sampled_from(
    [
        "application/json",
        "application/json; charset=utf-8",
        "application/vnd.api+json",
        None,
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/xml",
        "",
        "application/json;;;",
        "\u00e9/\u00e9".encode().decode("latin-1"),
    ]
)


# -- properties -----------------------------------------------------------------------------------------


@SETTINGS
@given(body=bodies(), content_type=content_types)
def test_any_body_any_content_type_never_5xx_never_partial(
    endpoint: Endpoint, body: tuple[bytes, int | None], content_type: str | None
) -> None:
    raw, events = body
    before = endpoint.rows()
    response = endpoint.post(raw, content_type)
    endpoint.check(response, before, events)
    json_like = content_type is None or content_type.split(";")[0].strip().lower() in (
        "application/json",
        "application/vnd.api+json",
        "",
    )
    if not json_like:
        assert response.status_code == 415


@SETTINGS
@given(st.lists(st.one_of(valid_event, mangled_event()), min_size=1, max_size=8))
def test_a_batch_is_stored_whole_or_not_at_all(endpoint: Endpoint, events: list[Any]) -> None:
    before = endpoint.rows()
    response = endpoint.post(dumps({"events": events}))
    endpoint.check(response, before, len(events))
    if response.status_code != 200:
        problems = response.json().get("problems", [])
        assert all(p["path"].startswith("events[") for p in problems), problems


# -- sizes, encodings, nesting ------------------------------------------------------------------------


def test_huge_bodies_are_refused_with_413(endpoint: Endpoint) -> None:
    before = endpoint.rows()
    event = {"event_id": "big", "customer_id": "c", "event_name": "n", "metadata": {"k": "x" * 400}}
    for size in (MAX_BODY + 1, 4 * MAX_BODY, 20 * (1 << 20)):
        count = size // len(orjson.dumps(event)) + 1
        body = orjson.dumps({"events": [dict(event, event_id=f"big-{i}") for i in range(count)]})
        response = endpoint.post(body)
        assert response.status_code == 413, response.text[:200]
        endpoint.check(response, before)
    endpoint.alive()


def test_a_huge_declared_length_is_refused_before_reading(endpoint: Endpoint) -> None:
    with socket.create_connection(endpoint.address, timeout=10) as sock:
        sock.sendall(
            b"POST /events/ingest HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 1000000000000\r\n\r\n{"events": ['
        )
        answer = _read_answer(sock)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    endpoint.alive()


def test_a_chunked_body_without_end_is_cut_at_the_limit(endpoint: Endpoint) -> None:
    before = endpoint.rows()
    with socket.create_connection(endpoint.address, timeout=10) as sock:
        sock.sendall(
            b"POST /events/ingest HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        chunk = b"x" * 65536
        try:
            for _ in range(400):  # 25 MiB, past the limit and the drain allowance
                sock.sendall(b"%x\r\n%b\r\n" % (len(chunk), chunk))
        except OSError:
            pass  # the server cut us off: that is the point
        answer = _read_answer(sock)
    assert answer == b"" or answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert endpoint.rows() == before
    endpoint.alive()


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000,
        b'{"events":' + b"[" * 5000 + b"]" * 5000 + b"}",
        b'{"events":[{"event_id":"d","customer_id":"c","event_name":"n","metadata":{"k":'
        + b'{"a":' * 3000
        + b"1"
        + b"}" * 3000
        + b"}}]}",
        b'{"events":[{"event_id":"\xff\xfe","customer_id":"c","event_name":"n"}]}',
        b'{"events":[{"event_id":"\\ud800","customer_id":"c","event_name":"n"}]}',
        '{"events":[{"event_id":"caf\u00e9","customer_id":"c","event_name":"n"}]}'.encode("latin-1"),
        '{"events":[{"event_id":"a","customer_id":"c","event_name":"n"}]}'.encode("utf-16"),
        b'{"events":[{"event_id":"a\x00","customer_id":"c","event_name":"n"}]}',
        b"\x00" * 1000,
        b'{"events":[' + b"1e999999," * 10 + b"1]}",
        b'{"events":[{"event_id":"a","customer_id":"c","event_name":"n","metadata":{"k":1e999}}]}',
        b'{"events":[{"event_id":"a","customer_id":"c","event_name":"n","metadata":{"k":'
        + b"9" * 5000
        + b"}}]}",
        b'{"events":[{"event_id":"a","customer_id":"c","event_name":"n","timestamp":"9999-12-31T23:59:59-23:59"}]}',
        b'{"events":[{"event_id":"a","customer_id":"c","event_name":"n","timestamp":"0001-01-01T00:00:00+23:59"}]}',
        b'{"events":[' + b'{"event_id":"dup","customer_id":"c","event_name":"n"},' * 2 + b"1]}",
        b'{"events":[]}',
        b'{"events":'
        + orjson.dumps([{"event_id": f"m{i}", "customer_id": "c", "event_name": "n"} for i in range(1001)])
        + b"}",
    ],
    ids=[
        "array-nesting",
        "events-nesting",
        "metadata-nesting",
        "invalid-utf8",
        "lone-surrogate-escape",
        "latin-1",
        "utf-16",
        "nul-in-string",
        "nul-bytes",
        "huge-exponent",
        "metadata-inf",
        "huge-integer",
        "far-future-offset",
        "ancient-offset",
        "duplicate-then-junk",
        "no-events",
        "too-many-events",
    ],
)
def test_malformed_bodies_are_refused_cleanly(endpoint: Endpoint, body: bytes) -> None:
    before = endpoint.rows()
    response = endpoint.post(body)
    endpoint.check(response, before)


# -- clients that misbehave ---------------------------------------------------------------------------


def _read_answer(sock: socket.socket, timeout: float = 10.0) -> bytes:
    sock.settimeout(timeout)
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            part = sock.recv(65536)
            if not part:
                break
            data += part
    except (TimeoutError, ConnectionResetError):
        pass
    return data


def test_a_slow_body_gets_408_and_stores_nothing(endpoint: Endpoint) -> None:
    before = endpoint.rows()
    body = orjson.dumps({"events": [{"event_id": "slow", "customer_id": "c", "event_name": "n"}]})
    with socket.create_connection(endpoint.address, timeout=10) as sock:
        sock.sendall(
            b"POST /events/ingest HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%b" % (len(body), body[:10])
        )
        started = time.monotonic()
        for byte in body[10:20]:  # a trickle, slower than the whole read timeout
            time.sleep(READ_TIMEOUT / 5)
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
        answer = _read_answer(sock)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert time.monotonic() - started < 30
    assert endpoint.rows() == before
    endpoint.alive()


def test_clients_that_vanish_mid_request_leave_nothing_behind(endpoint: Endpoint) -> None:
    before = endpoint.rows()
    body = orjson.dumps(
        {"events": [{"event_id": f"gone-{i}", "customer_id": "c", "event_name": "n"} for i in range(50)]}
    )
    for cut in (0, 1, len(body) // 2, len(body) - 1):
        with socket.create_connection(endpoint.address, timeout=10) as sock:
            sock.sendall(
                b"POST /events/ingest HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%b" % (len(body), body[:cut])
            )
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    time.sleep(0.2)  # a negative check: on a slow machine it can only pass vacuously, never fail
    assert endpoint.rows() == before
    endpoint.alive()


def test_many_slow_and_junk_connections_do_not_stop_service(endpoint: Endpoint) -> None:
    junk = [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40,  # a TLS ClientHello
        b"GARBAGE / HTTP/9.9\r\n\r\n",
        b"POST /events/ingest HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
        b"POST /events/ingest HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\n12345",
        b"POST /events/ingest HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"POST /events/ingest HTTP/1.1\r\n" + b"X-Long: " + b"a" * 100_000 + b"\r\n\r\n",
        b"POST /events/ingest HTTP/1.1\r\nHost: x\r\n",  # headers never finish
        b"\r\n" * 1000,
    ]
    sockets: list[socket.socket] = []
    try:
        for _ in range(20):  # idle connections holding a slot each
            sockets.append(socket.create_connection(endpoint.address, timeout=10))
        for payload in junk:
            sock = socket.create_connection(endpoint.address, timeout=10)
            sockets.append(sock)
            try:
                sock.sendall(payload)
            except OSError:
                continue
        for sock in sockets[20:]:
            answer = _read_answer(sock, timeout=0.5)
            assert not answer.startswith(b"HTTP/1.1 5"), answer[:200]
        endpoint.alive()
    finally:
        for sock in sockets:
            sock.close()


def test_wrong_methods_and_paths_are_refused_not_crashed(endpoint: Endpoint) -> None:
    before = endpoint.rows()
    for method, path in (
        ("GET", "/events/ingest"),
        ("PUT", "/events/ingest"),
        ("DELETE", "/events/ingest"),
        ("POST", "/events/ingest?x=\xff"),
        ("POST", "/%ff"),
        ("PATCH", "/v1/status"),
    ):
        response = endpoint.client.request(method, path, content=b"{}")
        assert 400 <= response.status_code < 500, (method, path, response.status_code)
    # A trailing slash is redirected to the endpoint (Starlette's redirect_slashes), not served or crashed.
    assert endpoint.client.post("/events/ingest/", content=b"{}").status_code == 307
    assert endpoint.rows() == before


def test_concurrent_fuzzing_keeps_batches_atomic(endpoint: Endpoint) -> None:
    """Threads post good and bad batches at once; the stored rows are exactly the good batches' events."""
    before = endpoint.rows()
    accepted: list[int] = []
    errors: list[str] = []

    def post(thread: int) -> None:
        with httpx.Client(base_url=endpoint.server.url, timeout=10) as client:
            for i in range(25):
                events: list[dict[str, Any]] = [
                    {"event_id": f"c{thread}-{i}-{j}", "customer_id": "c", "event_name": "n"}
                    for j in range(5)
                ]
                if i % 3 == 0:
                    events[2]["metadata"] = {"k": None}  # one bad event: the whole batch must be refused
                response = client.post("/events/ingest", json={"events": events})
                if response.status_code == 200:
                    accepted.append(response.json()["ingested_count"])
                elif response.status_code != 422:
                    errors.append(f"{response.status_code} {response.text[:200]}")

    threads = [threading.Thread(target=post, args=(t,)) for t in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert sum(accepted) == 6 * 16 * 5
    assert endpoint.rows() == before + sum(accepted)
