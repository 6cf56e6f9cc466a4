"""Read-back through the agent: `GET /events` and `GET /events/{event_id}` forwarded to Dodo.

An app whose SDK points at the agent (`base_url`) can still list and retrieve its usage events: the
request goes to `[dodo]`'s URL with the agent's own API key (read fresh each request, as the worker
does), the query string passes through as sent, and Dodo's status, body and rate-limit headers come
back unchanged. Only these two reads are forwarded; other Dodo resources (payments, customers, ...)
need a client with Dodo's own base URL.

What the agent answers itself, in Dodo's error shape `{"code", "message"}`:
- `503 DODO_API_KEY_MISSING` when the agent has no usable key (the message says where it looked);
- `502 BAD_GATEWAY` when Dodo cannot be reached (refused, reset, DNS), `504 GATEWAY_TIMEOUT` when it
  does not answer within `[delivery] timeout_seconds`.
The intake token, when set, guards these routes like `/events/ingest` (checked by the caller).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import quote

import anyio.to_thread
import httpx
from starlette.requests import Request
from starlette.responses import Response

from agent import __version__
from agent.config import Settings, read_api_key
from agent.delivery.client import KEPT_HEADERS
from agent.intake.body import json_response
from agent.logs import get_logger

log = get_logger(__name__)

# Response headers of Dodo's that a client needs: the content type, and what the worker keeps too
# (retry hints, rate-limit state), so the SDK's own retries and pacing see Dodo's.
PASSED_HEADERS = ("content-type", *KEPT_HEADERS)


@dataclass
class Readback:
    """Forwards the read endpoints to Dodo. `transport` is for tests (an `httpx.AsyncBaseTransport`)."""

    settings: Settings
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ)
    transport: httpx.AsyncBaseTransport | None = None

    async def list_events(self, request: Request) -> Response:
        return await self.forward(request, "/events")

    async def get_event(self, request: Request) -> Response:
        return await self.forward(request, "/events/" + quote(request.path_params["event_id"], safe=""))

    async def forward(self, request: Request, path: str) -> Response:
        """GET `path` (plus the request's query string) from Dodo; Dodo's answer, or 502/503/504."""
        # The key file is read on a worker thread: a slow disk must not stall the event loop.
        key, where = await anyio.to_thread.run_sync(read_api_key, self.settings, self.environ)
        if key is None:
            return json_response(
                503,
                {
                    "code": "DODO_API_KEY_MISSING",
                    "message": f"the agent cannot read events from Dodo: {where}",
                },
            )
        url = self.settings.dodo.url + path
        query = request.url.query
        headers = {
            "Authorization": f"Bearer {key}",
            "Accept": "application/json",
            "User-Agent": f"dodo-outbox/{__version__}",
        }
        timeout = self.settings.delivery.timeout_seconds
        try:
            async with httpx.AsyncClient(timeout=timeout, transport=self.transport) as client:
                answer = await client.get(f"{url}?{query}" if query else url, headers=headers)
        except httpx.TimeoutException:
            log.warning("readback_failed", path=path, target=self.settings.dodo.url, error="timeout")
            return json_response(
                504,
                {
                    "code": "GATEWAY_TIMEOUT",
                    "message": f"Dodo ({self.settings.dodo.url}) did not answer GET {path} within "
                    f"{timeout:g} s ([delivery] timeout_seconds); retry later",
                },
            )
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}".replace(key, "***")
            log.warning("readback_failed", path=path, target=self.settings.dodo.url, error=error)
            return json_response(
                502,
                {
                    "code": "BAD_GATEWAY",
                    "message": f"the agent cannot reach Dodo ({self.settings.dodo.url}) for GET {path}: "
                    f"{error}; check [dodo] base_url / environment and the network",
                },
            )
        kept = {name: answer.headers[name] for name in PASSED_HEADERS if name in answer.headers}
        return Response(answer.content, status_code=answer.status_code, headers=kept)
