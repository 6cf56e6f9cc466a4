"""API gateway metering: ASGI and WSGI middleware recording one `api_call` event per request.

Metadata: `endpoint` (the path), `method`, `status_code`, `response_time_ms` (until the response was
fully sent). The event's timestamp is the request's start.

Event id: with a request-id header (default `X-Request-ID`):
`derive_event_id("api", event_name, customer_id, request_id)`, so a request recorded twice bills once.
Only trust a header your own proxy sets (overwriting the client's): a client choosing its own ids could
repeat one and be billed once. Without the header: derived from the request's start time (ns), the
process id and a per-process counter, fixed when the request starts (see `_common.occurrence_key`).

Recording never breaks a request: a resolver that raises, a refused enqueue, a full outbox are logged
(`usage_not_recorded`) and counted in `GatewayMeter.counts`. A request id seen again (a retried request,
with other timings) is counted as a duplicate and not billed again.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from typing import Any

import anyio.to_thread

from agent.delivery.pacing import TokenBucket
from agent.errors import EventConflictError
from agent.outbox import EnqueueResult
from agent.templates._common import (
    ClosingIterable,
    Enqueuer,
    Metadata,
    build_event,
    count_failure,
    derive_event_id,
    log,
    occurrence_key,
)

DEFAULT_EVENT_NAME = "api_call"
Resolver = Callable[[Any], str | None]


def api_call_event(
    customer_id: str,
    endpoint: str,
    method: str,
    status_code: int,
    response_time_ms: float,
    request_id: str | None = None,
    *,
    event_id: str | None = None,
    event_name: str = DEFAULT_EVENT_NAME,
    metadata: Metadata | None = None,
    timestamp: str | datetime | None = None,
) -> dict[str, Any]:
    """One request as an event. The id is `event_id`, else derived from `request_id`, else from this call."""
    if event_id is None:
        parts: tuple[object, ...] = (request_id,) if request_id else occurrence_key()
        event_id = derive_event_id("api", event_name, customer_id, *parts)
    elapsed = round(response_time_ms, 3)
    values = {"endpoint": endpoint, "method": method.upper(), "status_code": status_code}
    values["response_time_ms"] = elapsed
    return build_event(event_id, customer_id, event_name, values, metadata, timestamp)


def record_api_call(outbox: Enqueuer, customer_id: str, **kwargs: Any) -> EnqueueResult:
    """Build with `api_call_event(customer_id, **kwargs)` and enqueue it. Raises what either raises."""
    return outbox.enqueue(api_call_event(customer_id, **kwargs))


class GatewayMeter:
    """The policy both middlewares share: which paths, which customer, how many events, and recording.

    `include`/`exclude` are fnmatch patterns on the path (`*` also matches `/`); a path is recorded when
    it matches an include and no exclude. `customer_resolver(scope_or_environ)` runs AFTER the app (so an
    auth layer inside it may have set the customer); None means "do not record". `max_events_per_minute`
    caps each customer with a token bucket of `burst` (None: no cap); buckets of the `max_customers`
    least recently seen customers are kept, an evicted customer starts again with a full bucket.
    """

    def __init__(
        self,
        outbox: Enqueuer,
        customer_resolver: Resolver,
        *,
        event_name: str = DEFAULT_EVENT_NAME,
        include: Sequence[str] = ("*",),
        exclude: Sequence[str] = (),
        request_id_header: str | None = "X-Request-ID",
        max_events_per_minute: float | None = None,
        burst: int = 60,
        max_customers: int = 10_000,
        metadata: Metadata | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.outbox, self.customer_resolver, self.event_name = outbox, customer_resolver, event_name
        self.include, self.exclude = tuple(include), tuple(exclude)
        self.request_id_header = request_id_header.lower() if request_id_header else None
        self.max_events_per_minute, self.burst = max_events_per_minute, burst
        self.max_customers, self.metadata, self.clock = max_customers, metadata, clock
        self.counts: Counter[str] = Counter()
        """`recorded`, `duplicates`, `rate_limited`, `no_customer`, `failed`."""
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self._lock = threading.Lock()

    def wants(self, path: str) -> bool:
        """Whether requests to `path` are metered."""
        included = any(fnmatchcase(path, p) for p in self.include)
        return included and not any(fnmatchcase(path, p) for p in self.exclude)

    def _count(self, what: str) -> None:
        with self._lock:
            self.counts[what] += 1

    def admit(self, customer_id: str) -> bool:
        """Take one token from the customer's bucket; False when the customer is over the cap."""
        if self.max_events_per_minute is None:
            return True
        with self._lock:
            bucket = self._buckets.get(customer_id)
            if bucket is None:
                bucket = TokenBucket(self.max_events_per_minute, self.burst)
                self._buckets[customer_id] = bucket
                if len(self._buckets) > self.max_customers:
                    self._buckets.popitem(last=False)
            else:
                self._buckets.move_to_end(customer_id)
        return bucket.try_acquire(self.clock()) == 0.0

    def record(
        self,
        request: Any,
        path: str,
        method: str,
        status_code: int,
        started_wall: float,
        elapsed_seconds: float,
        request_id: str | None,
        /,
    ) -> EnqueueResult | None:
        """Resolve the customer, apply the cap, enqueue. Never raises; returns what was stored or None."""
        try:
            customer = self.customer_resolver(request)
            if customer is None:
                self._count("no_customer")
                return None
            if not self.admit(customer):
                self._count("rate_limited")
                return None
            started = datetime.fromtimestamp(started_wall, UTC)
            fields = (customer, path, method, status_code, elapsed_seconds * 1000.0, request_id)
            event = api_call_event(
                *fields, event_name=self.event_name, metadata=self.metadata, timestamp=started
            )
            result = self.outbox.enqueue(event)
        except EventConflictError:
            # The request id was recorded already, with other timings: a retried request, billed once.
            self._count("duplicates")
            return None
        except Exception as exc:
            self._count("failed")
            count_failure("gateway")
            log.error("usage_not_recorded", template="gateway", error=f"{type(exc).__name__}: {exc}")
            return None
        self._count("duplicates" if result.duplicates else "recorded")
        return result


class AsgiUsageMiddleware:
    """ASGI middleware: `app = AsgiUsageMiddleware(app, GatewayMeter(outbox, resolver, ...))`.

    Only `http` scopes are metered. The status is read from `http.response.start` (500 when the app
    raised before it); the enqueue runs in a worker thread after the response was sent.
    """

    def __init__(self, app: Callable[..., Any], meter: GatewayMeter) -> None:
        self.app = app
        self.meter = meter

    async def __call__(
        self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]
    ) -> None:
        path = scope.get("path", "")
        if scope.get("type") != "http" or not self.meter.wants(path):
            await self.app(scope, receive, send)
            return
        started_wall, started = time.time(), self.meter.clock()
        status = [500]

        async def capture(message: dict[str, Any]) -> None:
            if message.get("type") == "http.response.start":
                status[0] = int(message.get("status", 500))
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            elapsed = self.meter.clock() - started
            header = (self.meter.request_id_header or "").encode("latin-1")
            # ASGI header names are lower-case bytes.
            raw = dict(scope.get("headers") or ()).get(header) if header else None
            request_id = raw.decode("latin-1") if raw else None
            method = scope.get("method", "GET")
            args = (scope, path, method, status[0], started_wall, elapsed, request_id)
            await anyio.to_thread.run_sync(self.meter.record, *args)


class WsgiUsageMiddleware:
    """WSGI middleware: `app.wsgi_app = WsgiUsageMiddleware(app.wsgi_app, GatewayMeter(...))`.

    The event is recorded when the server closes the response iterable, so `response_time_ms` covers
    streaming the body too.
    """

    def __init__(self, app: Callable[..., Iterable[bytes]], meter: GatewayMeter) -> None:
        self.app = app
        self.meter = meter

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "") or "/"
        if not self.meter.wants(path):
            return self.app(environ, start_response)
        started_wall, started = time.time(), self.meter.clock()
        status = [500]

        def capture(status_line: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            status[0] = int(status_line.split(" ", 1)[0])
            return start_response(status_line, headers, exc_info)

        def finish() -> None:
            header = self.meter.request_id_header
            request_id = environ.get("HTTP_" + header.upper().replace("-", "_")) if header else None
            elapsed = self.meter.clock() - started
            method = environ.get("REQUEST_METHOD", "GET")
            self.meter.record(environ, path, method, status[0], started_wall, elapsed, request_id)

        try:
            body = self.app(environ, capture)
        except BaseException:
            finish()
            raise
        return ClosingIterable(body, finish)
