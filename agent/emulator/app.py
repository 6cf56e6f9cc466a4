"""The fake Dodo as a Starlette ASGI app. It reads requests and carries out the state's answers.

Dodo's API (bearer key required; see ``state.py`` for the rules and their order):

- ``POST /events/ingest``: ``{"events": [...]}`` -> ``200 {"ingested_count": N}`` (new events only)
- ``GET /events/{event_id}``: the stored event, or 404
- ``GET /events?customer_id=&event_name=&meter_id=&start=&end=&page_size=&page_number=``: ``{"items": [...]}``
- ``GET /meters?page_size=&page_number=&archived=``: ``{"items": [...]}``, an empty page after the last

The admin API under ``/_emulator/`` (no key, never rate limited, JSON in and out, 400 on a bad body;
``GET /_emulator/`` answers its index with example bodies, from ``admin.py``):

- ``GET /_emulator/stats``: counters (see ``EmulatorState.stats``)
- ``GET /_emulator/events``: ``{"items": [every stored event], "count": N}``
- ``GET /_emulator/log``: ``{"items": [one entry per ingest request]}``
- ``GET|POST|DELETE /_emulator/faults``: read, replace (see ``faults.py``), clear the fault plan
- ``POST /_emulator/reset``: back to the configured start
- ``POST /_emulator/keys``: ``{"keys": [...], "read_only_keys": [...]}`` (``read_only_keys`` optional)
- ``GET|POST /_emulator/clock``: ``{"offset_seconds": 3600}`` shifts the clock of the timestamp window
- ``POST /_emulator/meters``: ``{"meters": [...]}`` replaces the meters

Every answer of Dodo's API carries ``X-RateLimit-Limit``, ``X-RateLimit-Remaining``, ``X-RateLimit-Reset``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from agent.emulator import admin
from agent.emulator.state import Answer, EmulatorState

# Where the raw wrapper leaves a function that drops the client's connection.
ABORT_SCOPE_KEY = "dodo_emulator.abort"


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, headers=headers, media_type="application/json")


class DropResponse(Response):
    """Not a response: closes the TCP connection so the client sees it cut without an answer."""

    def __init__(self) -> None:
        super().__init__(status_code=500)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        abort = scope.get(ABORT_SCOPE_KEY)
        if abort is None:
            raise RuntimeError("this server gives no access to the connection; cannot drop it")
        abort()
        # Let the server see connection_lost before the app returns, so it neither logs
        # "returned without starting response" nor tries to send a 500 down a dead socket.
        await asyncio.sleep(0)


class ConnectionAccess:
    """Raw ASGI wrapper: finds the connection's transport and puts its ``abort`` into the scope.

    Under uvicorn, ``receive`` is the bound method of its RequestResponseCycle, whose ``transport`` is the
    asyncio transport of the connection (h11 and httptools alike). ``abort()`` closes it at once, without
    flushing, which the client sees as a reset or "server disconnected without sending a response".
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            transport = getattr(getattr(receive, "__self__", None), "transport", None)
            abort = getattr(transport, "abort", None)
            if callable(abort):
                scope[ABORT_SCOPE_KEY] = abort
        await self.app(scope, receive, send)


async def read_body(request: Request, limit: int) -> bytes | None:
    """The whole body, or None when it is over ``limit`` bytes.

    An oversized body is still read to its end (and thrown away) so the client, which writes the whole
    request before it reads, gets the 413 instead of a broken pipe.
    """
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
    return None if size > limit else b"".join(chunks)


async def carry_out(answer: Answer, request: Request, closing: threading.Event) -> Response:
    """Wait out any injected latency, then respond, drop, or hang and respond."""
    if answer.delay_seconds > 0:
        await asyncio.sleep(answer.delay_seconds)
    if answer.action == "drop":
        return DropResponse()
    if answer.action == "timeout" and not await hang(request, answer.sleep_seconds, closing):
        return DropResponse()
    return json_response(answer.status, answer.body, answer.headers)


async def hang(request: Request, seconds: float, closing: threading.Event) -> bool:
    """Sleep ``seconds``; True if it ran its course, False if the client left or the server is closing.

    Cutting the hang short keeps a stopped server (and the test that stops it) from waiting out a
    30 s sleep whose client gave up long ago. The body is already read, so the next ``receive`` only
    returns when the client disconnects.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    gone = asyncio.ensure_future(request.receive())
    try:
        while not gone.done() and not closing.is_set():
            remaining = deadline - loop.time()
            if remaining <= 0:
                return True
            # Poll: `closing` is set from another thread.
            await asyncio.wait({gone}, timeout=min(remaining, 0.05))
        return False
    finally:
        gone.cancel()


def _admin(handler: Callable[[Any], Any]) -> Callable[[Request], Awaitable[Response]]:
    """Wrap an admin handler taking the decoded JSON object body ({} when empty): errors become 400."""

    async def endpoint(request: Request) -> Response:
        try:
            raw = await request.body()
            payload = orjson.loads(raw) if raw.strip() else {}
            if not isinstance(payload, dict):
                raise ValueError("body: expected a JSON object")
            return json_response(200, handler(payload))
        except (ValueError, TypeError, KeyError) as exc:
            return json_response(400, {"code": "BAD_REQUEST", "message": str(exc)})

    return endpoint


def create_app(state: EmulatorState, closing: threading.Event | None = None) -> ASGIApp:
    """The ASGI app serving ``state``. Wrap nothing around it that replaces ``receive``: drops need it.

    Set ``closing`` before stopping the server: requests hung by a timeout fault then drop at once.
    """
    closing = closing or threading.Event()

    async def ingest(request: Request) -> Response:
        body = await read_body(request, state.config.max_body_bytes)
        answer = state.ingest(request.headers.get("authorization"), body)
        return await carry_out(answer, request, closing)

    async def get_event(request: Request) -> Response:
        params = {"event_id": request.path_params["event_id"]}
        return await carry_out(
            state.read(request.headers.get("authorization"), "event", params), request, closing
        )

    async def list_events(request: Request) -> Response:
        params = dict(request.query_params)
        return await carry_out(
            state.read(request.headers.get("authorization"), "events", params), request, closing
        )

    async def list_meters(request: Request) -> Response:
        params = dict(request.query_params)
        return await carry_out(
            state.read(request.headers.get("authorization"), "meters", params), request, closing
        )

    def set_faults(payload: dict[str, Any]) -> dict[str, Any]:
        state.set_faults(**payload)
        return state.faults()

    def clear_faults(_: dict[str, Any]) -> dict[str, Any]:
        state.clear_faults()
        return state.faults()

    def reset(_: dict[str, Any]) -> dict[str, Any]:
        state.reset()
        return {"ok": True}

    def set_keys(payload: dict[str, Any]) -> dict[str, Any]:
        keys, read_only = payload["keys"], payload.get("read_only_keys")
        if not isinstance(keys, list) or not (read_only is None or isinstance(read_only, list)):
            raise ValueError("keys and read_only_keys: must be lists of strings")
        state.set_keys(keys, read_only)
        return {"ok": True}

    def clock(payload: dict[str, Any]) -> dict[str, Any]:
        if "offset_seconds" in payload:
            offset = payload["offset_seconds"]
            if isinstance(offset, bool) or not isinstance(offset, int | float):
                raise ValueError("offset_seconds: must be a number")
            state.set_clock_offset(offset)
        return {"offset_seconds": state.clock_offset, "now": state.now().isoformat()}

    def set_meters(payload: dict[str, Any]) -> dict[str, Any]:
        meters = payload["meters"]
        if not isinstance(meters, list):
            raise ValueError("meters: must be a list")
        state.set_meters(meters)
        return {"ok": True}

    def all_events(_: dict[str, Any]) -> dict[str, Any]:
        events = list(state.events.values())
        return {"items": events, "count": len(events)}

    async def not_found(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 404
        code = "METHOD_NOT_ALLOWED" if status == 405 else "NOT_FOUND"
        return json_response(status, {"code": code, "message": f"{request.method} {request.url.path}"})

    routes = [
        Route("/events/ingest", ingest, methods=["POST"]),
        Route("/events/{event_id:str}", get_event, methods=["GET"]),
        Route("/events", list_events, methods=["GET"]),
        Route("/meters", list_meters, methods=["GET"]),
        Route("/_emulator/", _admin(lambda _: admin.index()), methods=["GET"]),
        Route("/_emulator", _admin(lambda _: admin.index()), methods=["GET"]),
        Route("/_emulator/stats", _admin(lambda _: state.stats()), methods=["GET"]),
        Route("/_emulator/events", _admin(all_events), methods=["GET"]),
        Route("/_emulator/log", _admin(lambda _: {"items": state.ingest_log()}), methods=["GET"]),
        Route("/_emulator/faults", _admin(lambda _: state.faults()), methods=["GET"]),
        Route("/_emulator/faults", _admin(set_faults), methods=["POST"]),
        Route("/_emulator/faults", _admin(clear_faults), methods=["DELETE"]),
        Route("/_emulator/reset", _admin(reset), methods=["POST"]),
        Route("/_emulator/keys", _admin(set_keys), methods=["POST"]),
        Route("/_emulator/clock", _admin(clock), methods=["GET", "POST"]),
        Route("/_emulator/meters", _admin(set_meters), methods=["POST"]),
    ]
    app = Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found})
    return ConnectionAccess(app)
