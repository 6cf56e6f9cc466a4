"""An AI image generator, billed per image and per token through the dodo-outbox agent.

    uvicorn app:app --port 8000

POST /generate with a JSON body {"prompt": "...", "resolution": "256x256"} and the headers
X-API-Key (a customer's key) and X-Request-ID (the client's id for this request: a retry with the same
id gets the first answer back and is billed once). Answers the PNG, with X-Request-ID, X-Tokens (the
tokens the prompt rewriting used) and X-Replayed (true for a retry). GET /healthz answers "ok".

Settings: see settings.py (environment variables IMAGEGEN_*).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager, closing

import appdb
import dodopayments
import imaging
import usage
from settings import Settings
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from agent import Outbox


class Refused(Exception):
    """The request cannot be served: answer `status` with `message`."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, dict(headers or {})


class Generator:
    """What a request does, run off the event loop (SQLite and the SDK block)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        with closing(appdb.connect(settings.db)) as conn:
            appdb.init(conn, settings.customers)
        library = settings.usage == "library"
        self.outbox = Outbox(settings.db) if library else None
        self.client = None if library else usage.sdk_client(settings.agent_url, settings.agent_token)

    def close(self) -> None:
        if self.outbox is not None:
            self.outbox.close()
        if self.client is not None:
            self.client.close()

    def customer(self, api_key: str) -> str | None:
        with closing(appdb.connect(self.settings.db)) as conn:
            return appdb.customer_for(conn, api_key)

    def generate(
        self, customer_id: str, request_id: str, prompt: str, resolution: str
    ) -> tuple[appdb.Generation, bool]:
        """The generation for this request, and whether it was stored already (a retry)."""
        with closing(appdb.connect(self.settings.db)) as conn:
            stored = appdb.find(conn, customer_id, request_id)
            if stored is not None:
                return self._replay(stored, prompt, resolution), True
            rewritten, response = imaging.rewrite_prompt(prompt)
            png = imaging.draw_png(rewritten, imaging.RESOLUTIONS[resolution])
            tokens = int(response["usage"]["total_tokens"])
            generation = appdb.Generation(customer_id, request_id, prompt, resolution, tokens, png)
            events = usage.usage_events(customer_id, request_id, resolution, response)
            if self.client is not None:
                self._send(events)  # before the transaction: the agent may write to this same file
            with appdb.transaction(conn):
                if not appdb.insert(conn, generation):
                    stored = appdb.find(conn, customer_id, request_id)  # a concurrent retry won
                elif self.outbox is not None:
                    usage.enqueue_in_transaction(self.outbox, conn, events)
        if stored is not None:
            return self._replay(stored, prompt, resolution), True
        return generation, False

    def _replay(self, stored: appdb.Generation, prompt: str, resolution: str) -> appdb.Generation:
        if (stored.prompt, stored.resolution) != (prompt, resolution):
            raise Refused(
                409,
                f"X-Request-ID {stored.request_id!r} was used before for another prompt or resolution; "
                "send a new request id for a new image",
            )
        return stored

    def _send(self, events: list[usage.Event]) -> None:
        assert self.client is not None
        try:
            usage.send_with_sdk(self.client, events)
        except dodopayments.APIConnectionError as exc:
            raise Refused(
                503,
                f"usage could not be recorded: the dodo-outbox agent at {self.settings.agent_url} did not "
                f"answer ({exc}). Nothing was stored or billed; retry with the same X-Request-ID",
                {"Retry-After": "5"},
            ) from exc
        except dodopayments.APIStatusError as exc:
            raise Refused(
                502, f"the dodo-outbox agent refused the usage events ({exc.status_code}: {exc.message})"
            ) from exc


async def generate(request: Request) -> Response:
    generator: Generator = request.app.state.generator
    api_key = request.headers.get("x-api-key", "")
    customer = await run_in_threadpool(generator.customer, api_key) if api_key else None
    if customer is None:
        return _error(401, "missing or unknown X-API-Key header")
    request_id = request.headers.get("x-request-id") or f"req_{uuid.uuid4().hex}"
    if len(request_id) > 200:
        return _error(400, "X-Request-ID: at most 200 characters")
    try:
        body = await request.json()
    except ValueError:
        return _error(400, 'the body must be JSON: {"prompt": "...", "resolution": "256x256"}')
    prompt = body.get("prompt") if isinstance(body, dict) else None
    if not isinstance(prompt, str) or not prompt.strip() or len(prompt) > 1000:
        return _error(400, "prompt: required, a non-empty string of at most 1000 characters")
    resolution = body.get("resolution", "256x256")
    if not isinstance(resolution, str) or resolution not in imaging.RESOLUTIONS:
        return _error(400, f"resolution: one of {', '.join(imaging.RESOLUTIONS)}")
    try:
        generation, replayed = await run_in_threadpool(
            generator.generate, customer, request_id, prompt, resolution
        )
    except Refused as exc:
        return _error(exc.status, exc.message, exc.headers)
    headers = {"X-Request-ID": request_id, "X-Tokens": str(generation.tokens)}
    headers["X-Replayed"] = "true" if replayed else "false"
    return Response(generation.png, media_type="image/png", headers=headers)


async def healthz(request: Request) -> Response:
    return PlainTextResponse("ok")


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    return JSONResponse({"error": message}, status_code=status, headers=dict(headers or {}))


def create_app(settings: Settings | None = None) -> Starlette:
    chosen = settings or Settings.from_env()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.generator = Generator(chosen)
        try:
            yield
        finally:
            app.state.generator.close()

    routes = [Route("/generate", generate, methods=["POST"]), Route("/healthz", healthz, methods=["GET"])]
    return Starlette(routes=routes, lifespan=lifespan)


app = create_app()
