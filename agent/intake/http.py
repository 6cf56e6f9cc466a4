"""The local HTTP endpoint: Dodo's `POST /events/ingest`, answered from the durable outbox.

An app moves to the agent by changing only its SDK's `base_url`. Same request, same answers:
- `200 {"ingested_count": n}` once the events are COMMITTED to the outbox file (n counts new events;
  events already stored with the same content are not counted, as Dodo does; nor is the same event
  with only another timestamp, a producer's rebuilt retry: the stored one is kept and the log says so).
- `422 UNPROCESSABLE_ENTITY`: not JSON, or not Dodo's shape (an event that is not an object, an unknown
  field, a field of the wrong JSON type), as Dodo's deserialiser refuses it. `400 BAD_REQUEST`: a rule
  broken. `400 DUPLICATE_EVENT_ID`: an id twice in one request. `400 EVENT_CONFLICT`: an id already
  stored with different content (Dodo would answer 200 and never bill it; not 409, which the SDK
  retries). Error bodies are `{"code", "message", "problems": [{"path", "message"}]}` listing every
  problem; nothing of a refused request is stored.
- `401` token, `413` body size, `408` body too slow, `415` not JSON, `429` + `Retry-After` when the
  outbox is full (the SDK retries it), `503` + `Retry-After` when shutting down or the outbox fails.
Also `GET /healthz` (alive; 503 when the drain loop is wedged), `GET /readyz` (outbox open and not
shutting down), `GET /v1/status`, and, when given a `Readback`, `GET /events` and `GET /events/{event_id}`
forwarded to Dodo (`readback.py`).

The token: when `[intake.http] token` is set, `/events/ingest`, `/v1/status` and the forwarded reads
need `Authorization: Bearer <token>`. The official SDK sends its API key as that bearer, so apps set their
SDK key (`DODO_PAYMENTS_API_KEY`) to the agent's token; the real Dodo key stays with the agent.
`extra_routes` (e.g. metrics) are served without the token check.
Shutting down: set the `shutting_down` event given to `create_app` (or `app.state.shutting_down`).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.to_thread
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from agent.config import HttpIntakeSettings
from agent.errors import (
    DodoOutboxError,
    EventConflictError,
    InvalidEventError,
    OutboxError,
    OutboxFullError,
    Problem,
)
from agent.intake.auth import require_bearer
from agent.intake.body import Refusal, check_body, json_response, retry_headers, summary
from agent.intake.committer import Committer, CommitterBusy, CommitterClosed
from agent.intake.readback import Readback
from agent.logs import get_logger
from agent.ops import metrics
from agent.outbox import Outbox

log = get_logger(__name__)

INTAKE_THREADS = 128
"""Worker threads for the endpoint's blocking calls (large bodies' validation, status, readiness): its
own limiter, so it neither starves nor is starved by other thread users. Commits go to the committer."""
INLINE_BODY_BYTES = 64 << 10
"""Bodies up to this size are validated on the event loop (tens of microseconds); larger ones (up to
1000 events, milliseconds) in a worker thread so other connections are not held up meanwhile."""
DRAIN_BYTES = 8 << 20
"""An oversized body is read and thrown away up to this much past the limit, so a client that writes
its whole request before reading sees the 413 rather than a reset; beyond it the connection is cut."""
INGEST_PATH = "/events/ingest"
SHUTDOWN_RETRY_AFTER = 5.0
UNAVAILABLE_RETRY_AFTER = 2.0
Handler = Callable[[Request], Awaitable[Response]]


@dataclass
class HttpIntake:
    """The endpoint's handlers and state (one per app). See the module docstring for the contract."""

    outbox: Outbox
    settings: HttpIntakeSettings
    status: Callable[[], dict[str, Any]]
    readiness: Callable[[], dict[str, Any]]
    shutting_down: threading.Event
    clock: Callable[[], float] = time.time
    wedged: Callable[[], str | None] = lambda: None
    """Why the agent is alive but stuck (its drain loop stopped ticking), or None: `/healthz` answers 503."""
    full_retry_after: float | None = None
    committer: Committer = field(init=False)
    _limiters: dict[asyncio.AbstractEventLoop, anyio.CapacityLimiter] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.committer = Committer(self.outbox)

    @contextlib.asynccontextmanager
    async def lifespan(self, app: object) -> AsyncIterator[None]:
        """Served: the committer runs; stopped: it commits what is queued and answers every request."""
        self.committer.start()
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(self.committer.stop)

    def _limiter(self) -> anyio.CapacityLimiter:
        # A limiter belongs to one event loop; a server stopped and started again runs a new one.
        loop = asyncio.get_running_loop()
        limiter = self._limiters.get(loop)
        if limiter is None:
            self._limiters = {loop: (limiter := anyio.CapacityLimiter(INTAKE_THREADS))}
        return limiter

    async def _in_thread(self, func: Callable[[], Any]) -> Any:
        return await anyio.to_thread.run_sync(func, limiter=self._limiter())

    def _authorize(self, request: Request) -> None:
        require_bearer(
            request,
            self.settings.token,
            hint=" (with the official SDK, set its API key to the agent's token)",
        )

    async def _read_body(self, request: Request) -> bytes:
        """The whole body within max_body_bytes and the read timeout. Raises Refusal (413, 408, 400)."""
        limit = self.settings.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit + DRAIN_BYTES:
            raise self._too_big(limit, close=True)
        chunks: list[bytes] = []
        size = 0
        try:
            # asyncio.timeout, not anyio.fail_after: the same TimeoutError, at a fraction of the cost of
            # an anyio cancel scope, on the event loop thread that limits small-request throughput.
            async with asyncio.timeout(self.settings.read_timeout_seconds):
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limit + DRAIN_BYTES:
                        raise self._too_big(limit, close=True)
                    if size <= limit:
                        chunks.append(chunk)
        except TimeoutError:
            raise Refusal(
                408,
                "REQUEST_TIMEOUT",
                f"body: not received within {self.settings.read_timeout_seconds:g} s "
                "([intake.http] read_timeout_seconds)",
                headers={"Connection": "close"},
            ) from None
        if size > limit:
            raise self._too_big(limit, close=False)
        return b"".join(chunks)

    @staticmethod
    def _too_big(limit: int, close: bool) -> Refusal:
        # Built only when needed: an exception per request is a measurable cost at thousands a second.
        return Refusal(
            413,
            "PAYLOAD_TOO_LARGE",
            f"body: larger than {limit} bytes ([intake.http] max_body_bytes); send fewer events per request",
            headers={"Connection": "close"} if close else None,
        )

    async def _store(self, body: bytes) -> Response:
        """Validate, commit through the committer thread, answer once the commit returned."""
        if len(body) <= INLINE_BODY_BYTES:
            # Microseconds for a few events: cheaper on the event loop than a hop to a thread.
            events = check_body(body, self.clock(), self.outbox.max_event_age)
        else:
            events = await self._in_thread(lambda: check_body(body, self.clock(), self.outbox.max_event_age))
        try:
            result = await self.committer.submit(events, source="http")
        except OutboxFullError as exc:
            wait = self.full_retry_after if self.full_retry_after is not None else exc.retry_after
            log.warning("intake_refused_full", source="http", events=len(events), reason=str(exc))
            raise Refusal(429, "OUTBOX_FULL", str(exc), headers=retry_headers(wait)) from None
        except CommitterBusy as exc:
            log.warning("intake_refused_busy", source="http", events=len(events), reason=str(exc))
            raise Refusal(429, "INTAKE_BUSY", str(exc), headers=retry_headers(exc.retry_after)) from None
        except CommitterClosed:
            raise _shutting_down() from None
        except EventConflictError as exc:
            # Every refused event by its index (both events of a clash inside the request, although
            # check_body already refuses an id twice in one request, as Dodo does).
            problems = [
                Problem(
                    f"events[{c.index}].event_id",
                    c.reason(None if c.other is None else f"events[{c.other}]"),
                )
                for c in exc.located([e.event_id for e in events])
            ]
            raise Refusal(400, "EVENT_CONFLICT", summary(problems), problems) from None
        except InvalidEventError as exc:
            # strict_meters refused events no meter would bill: the client must fix them, not retry.
            raise Refusal(400, "NOT_BILLABLE", summary(exc.problems), list(exc.problems)) from None
        except OutboxError as exc:
            log.error("intake_unavailable", source="http", error=str(exc))
            raise Refusal(
                503,
                "OUTBOX_UNAVAILABLE",
                f"the outbox cannot store events now: {exc}",
                headers=retry_headers(UNAVAILABLE_RETRY_AFTER),
            ) from None
        if result.warnings:
            log.info(
                "intake_warnings", source="http", count=len(result.warnings), first=str(result.warnings[0])
            )
        if result.retimed:
            # Answered as Dodo answers a duplicate ({"ingested_count": 0} for it); the log says why.
            notes = result.notes()
            log.info("intake_retimed_duplicates", source="http", count=len(notes), first=str(notes[0]))
        return json_response(200, {"ingested_count": result.ingested_count})

    async def ingest(self, request: Request) -> Response:
        try:
            if self.shutting_down.is_set():
                raise _shutting_down()
            self._authorize(request)
            media = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
            if media and media != "application/json" and not media.endswith("+json"):
                raise Refusal(
                    415,
                    "UNSUPPORTED_MEDIA_TYPE",
                    f"Content-Type {media!r}: send Content-Type: application/json",
                )
            body = await self._read_body(request)
            return await self._store(body)
        except Refusal as refusal:
            metrics.record_http_refusal(refusal.code, refusal.message, refusal.problems)
            return refusal.response()
        except ClientDisconnect:
            return Response(status_code=400)  # nobody is listening; nothing was stored

    async def asgi_ingest(self, scope: Scope, receive: Receive, send: Send) -> None:
        """`POST /events/ingest` as a bare ASGI handler: the same `ingest`, without Starlette's router and
        its two exception middlewares (a fifth of the event loop's time per request in a profile)."""
        request = Request(scope, receive)
        try:
            response = await self.ingest(request)
        except Exception as exc:  # what ServerErrorMiddleware would answer
            response = await _crashed(request, exc)
        await response(scope, receive, send)

    async def healthz(self, request: Request) -> Response:
        stuck = self.wedged()
        if stuck is not None:
            return json_response(503, {"status": "wedged", "reason": stuck, "action": "restart the agent"})
        return json_response(200, {"status": "ok"})

    def _ready(self) -> tuple[bool, dict[str, Any]]:
        outbox_open = not self.outbox.store.closed
        shutting_down = self.shutting_down.is_set()
        try:
            details = dict(self.readiness())
        except DodoOutboxError as exc:
            details = {"readiness_error": str(exc)}
        ready = outbox_open and not shutting_down
        body = {"status": "ready" if ready else "not_ready", "outbox_open": outbox_open}
        return ready, {**body, "shutting_down": shutting_down, **details}

    async def readyz(self, request: Request) -> Response:
        ready, body = await self._in_thread(self._ready)
        return json_response(200 if ready else 503, body)

    async def status_document(self, request: Request) -> Response:
        try:
            self._authorize(request)
            document = await self._in_thread(self.status)
        except Refusal as refusal:
            return refusal.response()
        except DodoOutboxError as exc:
            return Refusal(503, "OUTBOX_UNAVAILABLE", f"cannot read the outbox: {exc}").response()
        return json_response(200, document)

    def guarded(self, handler: Handler) -> Handler:
        """`handler` behind the intake token (a read-back spends the agent's Dodo key)."""

        async def endpoint(request: Request) -> Response:
            try:
                self._authorize(request)
            except Refusal as refusal:
                return refusal.response()
            return await handler(request)

        return endpoint


def _shutting_down() -> Refusal:
    return Refusal(
        503,
        "SHUTTING_DOWN",
        "the agent is shutting down; retry shortly",
        headers=retry_headers(SHUTDOWN_RETRY_AFTER),
    )


async def _not_found(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 404
    code = "METHOD_NOT_ALLOWED" if status == 405 else "NOT_FOUND"
    return json_response(status, {"code": code, "message": f"{request.method} {request.url.path}"})


async def _crashed(request: Request, exc: Exception) -> Response:
    log.error("intake_crashed", path=request.url.path, error=repr(exc), exc_info=exc)
    return json_response(500, {"code": "INTERNAL_SERVER_ERROR", "message": "an agent bug; see its log"})


class IntakeApp(Starlette):
    """The endpoint's Starlette app, with `POST /events/ingest` served by `HttpIntake.asgi_ingest`
    directly (the hot path); every other request goes through the router as usual."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == INGEST_PATH and scope["method"] == "POST":
            await self.state.intake.asgi_ingest(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def create_app(
    outbox: Outbox,
    settings: HttpIntakeSettings,
    *,
    status: Callable[[], dict[str, Any]],
    readiness: Callable[[], dict[str, Any]],
    extra_routes: Sequence[BaseRoute] = (),
    shutting_down: threading.Event | None = None,
    clock: Callable[[], float] = time.time,
    full_retry_after: float | None = None,
    readback: Readback | None = None,
    wedged: Callable[[], str | None] | None = None,
) -> Starlette:
    """The ASGI app of the endpoint (serve it with `agent.intake.server.HttpServer`).

    `status()` returns the status document (`agent.ops.status.build(store)`); `readiness()` extra facts for
    `/readyz` (e.g. `{"delivery_paused": true, "paused_reason": "..."}`); both run in a worker thread.
    Set `shutting_down` (also at `app.state.shutting_down`) to refuse new events with 503.
    `full_retry_after` overrides the Retry-After of a 429 (default: what the outbox suggests).
    With `readback`, `GET /events` and `GET /events/{event_id}` are forwarded to Dodo (behind the token).
    `wedged()` says why the agent is stuck (`/healthz` then answers 503, so a liveness probe restarts it).
    """
    intake = HttpIntake(
        outbox,
        settings,
        status=status,
        readiness=readiness,
        shutting_down=shutting_down or threading.Event(),
        clock=clock,
        full_retry_after=full_retry_after,
        wedged=wedged or (lambda: None),
    )
    routes: list[BaseRoute] = [
        Route(INGEST_PATH, intake.ingest, methods=["POST"]),
        Route("/healthz", intake.healthz, methods=["GET"]),
        Route("/readyz", intake.readyz, methods=["GET"]),
        Route("/v1/status", intake.status_document, methods=["GET"]),
        *extra_routes,
    ]
    if readback is not None:
        routes += [
            Route("/events", intake.guarded(readback.list_events), methods=["GET"]),
            Route("/events/{event_id:path}", intake.guarded(readback.get_event), methods=["GET"]),
        ]
    app = IntakeApp(
        routes=routes,
        exception_handlers={404: _not_found, 405: _not_found, Exception: _crashed},
        lifespan=intake.lifespan,
    )
    app.state.intake = intake
    app.state.shutting_down = intake.shutting_down
    return app
