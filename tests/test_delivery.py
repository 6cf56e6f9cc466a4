"""The Dodo client: body splicing, headers, results, and the key kept out of every text."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import httpx
import orjson
import pytest

from agent import __version__
from agent.config import DeliverySettings, DodoSettings, Settings
from agent.delivery.client import BODY_OVERHEAD, DodoClient, SendResult, build_body
from agent.emulator import EmulatorServer
from agent.events import validate

KEY = "sk_test_0123456789abcdef"


def payloads(now: float = 1_790_000_000.0) -> list[str]:
    raws = [
        {"event_id": "a", "customer_id": "cus_1", "event_name": "api.call"},
        {
            "event_id": "b\u00e9\u4e2d",
            "customer_id": "cus_2",
            "event_name": "llm.chat_completion",
            "timestamp": datetime.fromtimestamp(now - 60.5, UTC),
            "metadata": {
                "model": "gpt-\u00e9",
                "inputTokens": 150,
                "ratio": 0.5,
                "cached": False,
                "q": 'a"b\\c',
            },
        },
    ]
    return [validate(raw, now).payload for raw in raws]


def test_body_is_spliced_and_equals_the_canonical_json() -> None:
    texts = payloads()
    body = build_body(texts)
    assert body == orjson.dumps({"events": [orjson.loads(p) for p in texts]})
    assert len(body) == len(",".join(texts).encode()) + BODY_OVERHEAD
    assert build_body(texts[:1]) == b'{"events":[' + texts[0].encode() + b"]}"


class Recorder:
    """A MockTransport handler that keeps the requests and answers with a fixed response."""

    def __init__(self, response: httpx.Response | Exception) -> None:
        self.response = response
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if isinstance(self.response, Exception):
            raise self.response
        return self.response


def client_for(handler: Recorder, base: str = "https://dodo.test/") -> DodoClient:
    return DodoClient(base, timeout_seconds=2.0, transport=httpx.MockTransport(handler))


def test_request_line_headers_and_ingested_count() -> None:
    handler = Recorder(
        httpx.Response(200, json={"ingested_count": 1}, headers={"X-RateLimit-Remaining": "7"})
    )
    body = build_body(payloads())
    with client_for(handler) as client:
        result = client.send(body, KEY)
    (request,) = handler.requests
    assert request.method == "POST"
    assert str(request.url) == "https://dodo.test/events/ingest"
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.headers["user-agent"] == f"dodo-outbox/{__version__}"
    assert request.headers["content-type"] == "application/json"
    assert request.content == body
    assert result.status == 200 and result.ok
    assert result.ingested_count == 1
    assert result.headers == {"x-ratelimit-remaining": "7"}
    assert result.duration >= 0


@pytest.mark.parametrize(
    ("body", "expected"),
    [(b'{"ingested_count": 0}', 0), (b"ok", None), (b'{"ingested_count": "2"}', None), (b"[]", None)],
)
def test_ingested_count_only_from_a_whole_number(body: bytes, expected: int | None) -> None:
    with client_for(Recorder(httpx.Response(200, content=body))) as client:
        assert client.send(b"{}", KEY).ingested_count == expected


def test_error_answer_keeps_status_excerpt_and_retry_headers() -> None:
    answer = httpx.Response(
        429,
        content=b'{"code":"RATE_LIMITED","message":"' + b"x" * 5000 + b'"}',
        headers={"Retry-After": "3", "X-RateLimit-Reset": "10", "X-Other": "no"},
    )
    with client_for(Recorder(answer)) as client:
        result = client.send(b"{}", KEY)
    assert result.status == 429 and not result.ok
    assert result.ingested_count is None
    assert result.text.startswith('{"code":"RATE_LIMITED"') and len(result.text) == 2000
    assert result.headers == {"retry-after": "3", "x-ratelimit-reset": "10"}


def test_timeout_and_connection_errors_are_results_not_exceptions() -> None:
    with client_for(Recorder(httpx.ReadTimeout("slow"))) as client:
        result = client.send(b"{}", KEY)
    assert result.status is None and result.error is not None and "timeout" in result.error
    with client_for(Recorder(httpx.ConnectError("refused"))) as client:
        result = client.send(b"{}", KEY)
    assert result.status is None and result.error is not None and "ConnectError" in result.error


def test_the_key_appears_in_no_repr_and_no_error() -> None:
    # An error whose message quotes the key (as a header-encoding error would) is scrubbed.
    leaky = Recorder(httpx.ConnectError(f"cannot send Authorization: Bearer {KEY}"))
    with client_for(leaky) as client:
        result = client.send(b"{}", KEY)
        assert KEY not in repr(client) and KEY not in str(vars(client))
    assert KEY not in repr(result) and KEY not in (result.error or "")
    # A server echoing the key back does not get it into the excerpt either.
    echo = Recorder(httpx.Response(401, text=f"bad key {KEY}"))
    with client_for(echo) as client:
        assert KEY not in repr(client.send(b"{}", KEY))
    # A key a header cannot carry fails as a result, without quoting the key.
    with client_for(Recorder(httpx.Response(200))) as client:
        bad = KEY + "\n\u00e9"
        result = client.send(b"{}", bad)
    assert result.status is None and KEY not in repr(result)


def test_from_settings_uses_base_url_or_environment() -> None:
    settings = Settings(delivery=DeliverySettings(timeout_seconds=7))
    client = DodoClient.from_settings(settings)
    assert client.url == "https://test.dodopayments.com/events/ingest"
    assert client.timeout_seconds == 7
    client.close()
    custom = Settings(dodo=DodoSettings(base_url="http://127.0.0.1:9/"))
    with DodoClient.from_settings(custom) as client:
        assert client.url == "http://127.0.0.1:9/events/ingest"


def test_against_the_emulator_over_keep_alive(fake_dodo: EmulatorServer) -> None:
    texts = payloads(time.time())
    with DodoClient(fake_dodo.url, timeout_seconds=5) as client:
        first = client.send(build_body(texts), "test_key")
        again = client.send(build_body(texts), "test_key")
        refused = client.send(build_body(texts), "wrong_key")
    assert (first.status, first.ingested_count) == (200, 2)
    assert (again.status, again.ingested_count) == (200, 0)  # Dodo ignores repeated event_ids
    assert refused.status == 401 and "invalid API key" in refused.text
    assert set(fake_dodo.events) == {"a", "b\u00e9\u4e2d"}
    assert fake_dodo.events["b\u00e9\u4e2d"]["metadata"]["q"] == 'a"b\\c'


def test_unreachable_destination_is_a_connection_error() -> None:
    with DodoClient("http://127.0.0.1:9", timeout_seconds=2) as client:
        result = client.send(b"{}", KEY)
    assert isinstance(result, SendResult) and result.status is None and result.error
