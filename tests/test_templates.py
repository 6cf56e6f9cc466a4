"""Templates: recorded provider shapes, deterministic ids under retries, middleware in real servers."""

from __future__ import annotations

import asyncio
import json
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import httpx
import pydantic
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from agent.errors import OutboxFullError
from agent.outbox import EnqueueResult, Outbox
from agent.templates import (
    FAILURES,
    AsgiUsageMiddleware,
    GatewayMeter,
    StreamMeter,
    TemplateError,
    UsageNotFoundError,
    WsgiUsageMiddleware,
    derive_event_id,
    duration_event,
    llm_usage_event,
    measure,
    record_llm_usage,
    record_storage,
    storage_event,
    timed,
    track_llm,
)
from tests.waiting import wait_until

# Response bodies as the providers return them (trimmed to what matters).
OPENAI = {
    "id": "chatcmpl-9xYz",
    "object": "chat.completion",
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17},
}
GROQ = {
    "id": "chatcmpl-groq-1",
    "model": "llama-3.1-8b-instant",
    "usage": {"prompt_tokens": 30, "completion_tokens": 10, "total_tokens": 40, "queue_time": 0.01},
    "x_groq": {"id": "req_01"},
}
OPENROUTER = {
    "id": "gen-1712345",
    "provider": "OpenAI",
    "model": "openai/gpt-4o",
    "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
}
ANTHROPIC = {
    "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
    "type": "message",
    "model": "claude-3-5-sonnet-20241022",
    "usage": {
        "input_tokens": 25,
        "output_tokens": 11,
        "cache_read_input_tokens": 100,
        "cache_creation_input_tokens": 0,
    },
}
GEMINI = {
    "responseId": "gem-abc",
    "modelVersion": "gemini-2.5-flash",
    "usageMetadata": {
        "promptTokenCount": 8,
        "candidatesTokenCount": 20,
        "thoughtsTokenCount": 30,
        "totalTokenCount": 58,
    },
}
EXPECTED = {
    "openai": (OPENAI, 12, 5, 17, "gpt-4o-mini-2024-07-18"),
    "groq": (GROQ, 30, 10, 40, "llama-3.1-8b-instant"),
    "openrouter": (OPENROUTER, 7, 3, 10, "openai/gpt-4o"),
    "anthropic": (ANTHROPIC, 25, 11, 36, "claude-3-5-sonnet-20241022"),
    "gemini": (GEMINI, 8, 50, 58, "gemini-2.5-flash"),
}


def as_object(value: Any) -> Any:
    """A dict as SDK-like objects (attribute access only)."""
    if isinstance(value, dict):
        return SimpleNamespace(**{k: as_object(v) for k, v in value.items()})
    if isinstance(value, list):
        return [as_object(v) for v in value]
    return value


def rows(outbox: Outbox) -> list[dict[str, Any]]:
    with sqlite3.connect(outbox.path) as conn:
        return [json.loads(p) for (p,) in conn.execute("SELECT payload FROM dodo_outbox_events ORDER BY id")]


# -- LLM ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", sorted(EXPECTED))
@pytest.mark.parametrize("shape", ["dict", "object"])
def test_llm_usage_from_each_provider(provider: str, shape: str) -> None:
    body, given, output, total, model = EXPECTED[provider]
    response = body if shape == "dict" else as_object(body)
    event = llm_usage_event(response, customer_id="cus_1")
    metadata = event["metadata"]
    assert (metadata["inputTokens"], metadata["outputTokens"], metadata["totalTokens"]) == (
        given,
        output,
        total,
    )
    assert metadata["model"] == model
    assert event["event_name"] == "llm.chat_completion" and event["customer_id"] == "cus_1"
    assert event["event_id"].startswith("llm_")
    # The same response as a dict or as an object is the same usage: the same id.
    assert event["event_id"] == llm_usage_event(body, customer_id="cus_1")["event_id"]


def test_anthropic_cache_tokens_and_gemini_snake_case() -> None:
    metadata = llm_usage_event(ANTHROPIC, customer_id="c")["metadata"]
    assert metadata["cacheReadInputTokens"] == 100 and "cacheCreationInputTokens" not in metadata
    genai = SimpleNamespace(
        response_id="r1",
        model_version="gemini-2.0-flash",
        usage_metadata=SimpleNamespace(prompt_token_count=4, candidates_token_count=6, total_token_count=10),
    )
    metadata = llm_usage_event(genai, customer_id="c")["metadata"]
    assert (metadata["inputTokens"], metadata["outputTokens"], metadata["totalTokens"]) == (4, 6, 10)


def test_pydantic_models_and_model_dump_only_objects() -> None:
    class Usage(pydantic.BaseModel):
        prompt_tokens: int
        completion_tokens: int
        total_tokens: int

    class Completion(pydantic.BaseModel):
        id: str
        model: str
        usage: Usage

    model = Completion(
        id="chatcmpl-p", model="gpt-4o", usage=Usage(prompt_tokens=1, completion_tokens=2, total_tokens=3)
    )
    assert llm_usage_event(model, customer_id="c")["metadata"]["totalTokens"] == 3

    class DumpOnly:
        def model_dump(self) -> dict[str, Any]:
            return OPENAI

    assert llm_usage_event(DumpOnly(), customer_id="c")["metadata"]["totalTokens"] == 17


def test_llm_errors_are_clear() -> None:
    with pytest.raises(UsageNotFoundError, match=r"usage\.prompt_tokens"):
        llm_usage_event({"id": "x", "choices": []}, customer_id="c")
    with pytest.raises(TemplateError, match="pass event_id="):
        llm_usage_event({"usage": {"prompt_tokens": 1, "completion_tokens": 1}}, customer_id="c")
    event = llm_usage_event({"usage": {"input_tokens": 1}}, customer_id="c", event_id="req_1", model="m")
    assert event["event_id"] == "req_1" and event["metadata"]["model"] == "m"
    with pytest.raises(UsageNotFoundError, match="not a token count"):
        llm_usage_event({"id": "x", "usage": {"prompt_tokens": "12"}}, customer_id="c")


def test_recording_the_same_response_twice_stores_it_once(outbox: Outbox) -> None:
    first = record_llm_usage(outbox, OPENAI, customer_id="cus_1")
    again = record_llm_usage(outbox, as_object(OPENAI), customer_id="cus_1")
    assert len(first.new) == 1 and again.new == [] and again.duplicates == first.new
    assert outbox.store.counts()["pending"] == 1
    # Another event name for the same response is another event, not a conflict.
    record_llm_usage(outbox, OPENAI, customer_id="cus_1", event_name="openai.usage")
    assert outbox.store.counts()["pending"] == 2


def test_track_llm_wraps_a_client_and_a_method(outbox: Outbox) -> None:
    calls: list[dict[str, Any]] = []

    def create(**kwargs: Any) -> Any:
        calls.append(kwargs)
        return as_object({**OPENAI, "id": f"chatcmpl-{len(calls)}"})

    client = SimpleNamespace(chat=SimpleNamespace(completions=SimpleNamespace(create=create)), api_key="k")
    tracked = track_llm(client, outbox, customer_id="cus_1")
    response = tracked.chat.completions.create(model="gpt-4o-mini", messages=[])
    assert response.id == "chatcmpl-1" and tracked.api_key == "k"
    method = track_llm(create, outbox, customer_id=lambda: "cus_2")
    method(model="x")
    stored = rows(outbox)
    assert [e["customer_id"] for e in stored] == ["cus_1", "cus_2"]
    assert stored[0]["metadata"]["totalTokens"] == 17


def test_track_llm_async_client_and_failures_never_raise(outbox: Outbox) -> None:
    async def create(**kwargs: Any) -> Any:
        return ANTHROPIC

    client = SimpleNamespace(messages=SimpleNamespace(create=create))
    tracked = track_llm(client, outbox, customer_id="cus_1")
    assert asyncio.run(tracked.messages.create(model="claude")) is ANTHROPIC
    assert rows(outbox)[0]["metadata"]["inputTokens"] == 25

    before = FAILURES["llm"]

    def stream() -> Iterator[str]:
        return iter(["chunk"])

    streamed = track_llm(stream, outbox, customer_id="cus_1")
    assert list(streamed()) == ["chunk"]  # no usage in a stream object: logged and counted, returned as is
    outbox.close()
    assert track_llm(lambda: GROQ, outbox, customer_id="c")() is GROQ  # a closed outbox does not raise
    assert FAILURES["llm"] == before + 2


# -- storage, stream, timing ----------------------------------------------------------------------


def test_storage_event_and_its_identity(outbox: Outbox) -> None:
    event = storage_event("cus_1", 1024, bucket="b", key="k/1.png", version="v1")
    assert event["metadata"] == {"bytes": 1024, "bucket": "b", "key": "k/1.png"}
    assert event["event_name"] == "object_storage_upload"
    assert event["event_id"] == derive_event_id(
        "storage", "object_storage_upload", "cus_1", "b", "k/1.png", "v1", 1024
    )
    assert storage_event("cus_1", 1024, "b", "k/1.png", version="v2")["event_id"] != event["event_id"]
    with pytest.raises(TemplateError, match="key="):
        storage_event("cus_1", 10)
    with pytest.raises(TemplateError, match="whole number"):
        storage_event("cus_1", -1, key="k")
    assert storage_event("cus_1", 5, event_id="up_1")["event_id"] == "up_1"
    assert record_storage(outbox, "cus_1", 1024, "b", "k/1.png", version="v1").new == [event["event_id"]]
    assert record_storage(outbox, "cus_1", 1024, "b", "k/1.png", version="v1").duplicates == [
        event["event_id"]
    ]


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_stream_meter_aggregates_per_interval_and_at_close(outbox: Outbox) -> None:
    clock = FakeClock()
    meter = StreamMeter(outbox, "cus_1", "sess-1", stream_type="sse", interval_seconds=10, clock=clock)
    for _ in range(5):
        assert meter.add(b"abcd") is None
    clock.now += 10
    flushed = meter.add(100)
    assert flushed is not None and flushed.new == ["sess-1:0"]
    meter.add(b"xy")
    with meter:
        pass
    meter.close()  # twice is fine
    stored = rows(outbox)
    assert [e["event_id"] for e in stored] == ["sess-1:0", "sess-1:1"]
    assert [e["metadata"]["bytes"] for e in stored] == [120, 2]
    assert stored[0]["metadata"]["stream_type"] == "sse" and stored[0]["event_name"] == "stream_consumption"
    with pytest.raises(TemplateError, match="closed"):
        meter.add(1)


def test_stream_meter_is_thread_safe_and_keeps_bytes_a_refused_flush(outbox: Outbox) -> None:
    meter = StreamMeter(outbox, "cus_1", "s2", interval_seconds=None)
    threads = [threading.Thread(target=lambda: [meter.add(1) for _ in range(2000)]) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    meter.close()
    assert [e["metadata"]["bytes"] for e in rows(outbox)] == [16000]

    class Refusing:
        def __init__(self) -> None:
            self.events: list[dict[str, Any]] = []

        def enqueue(self, event: Any) -> EnqueueResult:
            if not self.events:
                self.events.append({})
                raise OutboxFullError("full")
            self.events.append(dict(event))
            return EnqueueResult(new=[event["event_id"]])

    target = Refusing()
    refused = StreamMeter(target, "cus_1", "s3", interval_seconds=None)
    refused.add(10)
    with pytest.raises(OutboxFullError):
        refused.flush()
    refused.add(5)
    refused.close()
    assert target.events[1]["event_id"] == "s3:0" and target.events[1]["metadata"]["bytes"] == 15


def test_measure_with_an_injected_clock(outbox: Outbox) -> None:
    clock = FakeClock()
    with measure(
        outbox, "cus_1", invocation_id="job-7:1", clock=clock, metadata={"function_name": "resize"}
    ) as m:
        clock.now += 1.5
        m.metadata["memory_mb"] = 512
    assert m.seconds == 1.5 and m.recorded
    assert m.event is not None and m.event["metadata"] == {
        "durationMs": 1500.0,
        "function_name": "resize",
        "memory_mb": 512,
    }
    # The same execution recorded again (a retried enqueue) is one event.
    with measure(
        outbox, "cus_1", invocation_id="job-7:1", clock=clock, metadata={"function_name": "resize"}
    ) as m2:
        clock.now += 1.5
        m2.metadata["memory_mb"] = 512
    assert m2.event == m.event and outbox.store.counts()["pending"] == 1
    with pytest.raises(ValueError, match="boom"), measure(outbox, "cus_1", unit="minutes", clock=clock) as m3:
        clock.now += 90
        raise ValueError("boom")
    assert m3.event is not None and m3.event["metadata"] == {"durationMinutes": 1.5} and m3.recorded
    assert duration_event("c", 2.0, unit="seconds")["metadata"] == {"durationSeconds": 2.0}
    with pytest.raises(TemplateError, match="unit"):
        duration_event("c", 1.0, unit="hours")


def test_timed_decorator_sync_and_async(outbox: Outbox) -> None:
    clock = FakeClock()

    @timed(outbox, lambda user, **_: f"cus_{user}", clock=clock)
    def work(user: int, cost: float = 0.25) -> str:
        clock.now += cost
        return "done"

    @timed(outbox, "cus_async", unit="seconds", event_name="container_runtime", clock=clock)
    async def job() -> int:
        clock.now += 3
        return 42

    assert work(7) == "done" and work(7) == "done"
    assert asyncio.run(job()) == 42
    stored = rows(outbox)
    assert [e["customer_id"] for e in stored] == ["cus_7", "cus_7", "cus_async"]  # two calls, two events
    assert stored[0]["metadata"] == {"durationMs": 250.0, "function_name": work.__qualname__}
    assert stored[2]["metadata"]["durationSeconds"] == 3.0 and stored[2]["event_name"] == "container_runtime"


# -- API gateway ----------------------------------------------------------------------------------


def header_resolver(scope: dict[str, Any]) -> str | None:
    value = dict(scope.get("headers") or ()).get(b"x-customer")
    return value.decode() if value else None


@contextmanager
def serve_asgi(app: Any) -> Iterator[str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="critical", lifespan="off", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.started, "the ASGI server did not start in 60 s"
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(5)
        sock.close()


def starlette_app() -> Starlette:
    async def items(request: Request) -> PlainTextResponse:
        return PlainTextResponse("items", status_code=201 if request.method == "POST" else 200)

    async def boom(request: Request) -> PlainTextResponse:
        raise RuntimeError("boom")

    routes = [
        Route("/api/items", items, methods=["GET", "POST"]),
        Route("/api/boom", boom),
        Route("/health", items),
    ]
    return Starlette(routes=routes)


def test_asgi_middleware_in_a_real_server(outbox: Outbox) -> None:
    meter = GatewayMeter(outbox, header_resolver, include=["/api/*"], exclude=["/api/internal*"])
    app = AsgiUsageMiddleware(starlette_app(), meter)
    with serve_asgi(app) as url, httpx.Client(base_url=url) as client:
        retried = {"x-customer": "cus_1", "X-Request-ID": "req-42"}
        assert client.post("/api/items", headers=retried).status_code == 201
        assert client.post("/api/items", headers=retried).status_code == 201  # a retry: same id
        assert client.get("/api/items", headers={"x-customer": "cus_2"}).status_code == 200
        assert client.get("/api/items").status_code == 200  # no customer: not recorded
        assert client.get("/health", headers={"x-customer": "cus_1"}).status_code == 200  # not included
        assert client.get("/api/boom", headers={"x-customer": "cus_1"}).status_code == 500
        # The middleware records after the response is sent: wait for all five outcomes.
        wait_until(lambda: sum(meter.counts.values()) == 5, what="the five requests to be recorded")
    stored = rows(outbox)
    assert len(stored) == 3
    first = stored[0]
    assert first["event_id"] == derive_event_id("api", "api_call", "cus_1", "req-42")
    assert first["event_name"] == "api_call"
    assert {k: first["metadata"][k] for k in ("endpoint", "method", "status_code")} == {
        "endpoint": "/api/items",
        "method": "POST",
        "status_code": 201,
    }
    assert isinstance(first["metadata"]["response_time_ms"], float)
    assert stored[2]["metadata"]["status_code"] == 500
    assert meter.counts == {"recorded": 3, "duplicates": 1, "no_customer": 1}


def test_asgi_rate_cap_and_a_failing_outbox_never_break_requests(outbox: Outbox) -> None:
    clock = FakeClock()  # time stands still: no refill
    meter = GatewayMeter(
        outbox, header_resolver, max_events_per_minute=60, burst=2, max_customers=1, clock=clock
    )
    with serve_asgi(AsgiUsageMiddleware(starlette_app(), meter)) as url, httpx.Client(base_url=url) as client:
        for _ in range(4):
            assert client.get("/api/items", headers={"x-customer": "cus_1"}).status_code == 200
        # The middleware records after the response is sent: wait for each outcome before checking it.
        wait_until(lambda: sum(meter.counts.values()) == 4, what="the four requests to be recorded")
        assert meter.counts["recorded"] == 2 and meter.counts["rate_limited"] == 2
        client.get("/api/items", headers={"x-customer": "cus_2"})  # evicts cus_1's bucket (bounded)
        wait_until(lambda: sum(meter.counts.values()) == 5, what="cus_2's request to be recorded")
        assert len(meter._buckets) == 1
        outbox.close()
        assert client.get("/api/items", headers={"x-customer": "cus_3"}).status_code == 200
        wait_until(lambda: meter.counts.get("failed", 0) >= 1, what="the failed record to be counted")
    assert meter.counts["failed"] == 1


def test_wsgi_middleware_in_a_real_server(outbox: Outbox) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        status = "404 Not Found" if environ["PATH_INFO"] == "/missing" else "200 OK"
        start_response(status, [("Content-Type", "text/plain")])
        return [b"hello ", b"world"]

    def resolver(environ: dict[str, Any]) -> str | None:
        return environ.get("HTTP_X_CUSTOMER")

    meter = GatewayMeter(outbox, resolver, exclude=["/static/*"], event_name="api.request")

    class Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = make_server("127.0.0.1", 0, WsgiUsageMiddleware(app, meter), handler_class=Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{server.server_port}") as client:
            headers = {"X-Customer": "cus_9", "X-Request-ID": "abc"}
            assert client.get("/v1/things", headers=headers).text == "hello world"
            client.get("/v1/things", headers=headers)
            client.delete("/missing", headers={"X-Customer": "cus_9"})
            client.get("/static/app.js", headers={"X-Customer": "cus_9"})
            client.get("/v1/things")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    stored = rows(outbox)
    assert [(e["metadata"]["method"], e["metadata"]["status_code"]) for e in stored] == [
        ("GET", 200),
        ("DELETE", 404),
    ]
    assert stored[0]["event_id"] == derive_event_id("api", "api.request", "cus_9", "abc")
    assert meter.counts == {"recorded": 2, "duplicates": 1, "no_customer": 1}
