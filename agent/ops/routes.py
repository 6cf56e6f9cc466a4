"""Operations over HTTP: `GET /metrics` and the dead-letter queue under `/v1/dlq`.

Mounted by the intake app as `extra_routes` (see `agent.intake.http.create_app`), which serves them
without its own token check, so the `/v1/dlq` routes check `[intake.http] token` themselves: when a
token is set they need `Authorization: Bearer <token>` (401 otherwise), like `/events/ingest`.
`/metrics` stays open, as Prometheus scrapes expect: it holds counts and ages, never an event, an
id or a key.

    GET  /metrics                    the Prometheus text format (agent.ops.metrics)
    GET  /v1/dlq?reason=&since=&limit=&after=
                                     {"events": [record, ...], "total": n, "next_after": id | null}
    GET  /v1/dlq/{event_id}          one dead-lettered event's record; 404 when it is not dead
    POST /v1/dlq/replay              {"event_ids": [...]} | {"reason": "..."} | {"all": true},
                                     optional "restamp": bool, "dry_run": bool
                                     → {"matched", "replayed", "restamped", "dry_run"[, "would_restamp"]}
    POST /v1/dlq/purge               {"older_than": "7d" | seconds, "reason"?: str, "dry_run"?: bool}
                                     → {"matched", "purged", "dry_run"}

Errors are `{"code", "message"}` with 400 (bad request), 401, 404 or 503 (outbox unreadable).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from agent import durations
from agent.config import Settings
from agent.errors import DodoOutboxError
from agent.intake.auth import require_bearer
from agent.intake.body import Refusal, json_response
from agent.ops import metrics
from agent.store import DeadFilter, OutboxStore
from agent.timestamps import to_us

MAX_PAGE = 1000
MAX_IDS = 10_000
"""Event ids one replay request may name."""

Handler = Callable[[Request], Awaitable[Response]]


class OpsRoutes:
    """The handlers, bound to one store and its settings."""

    def __init__(
        self, store: OutboxStore, settings: Settings, clock: Callable[[], float] = time.time
    ) -> None:
        self.store, self.settings, self.clock = store, settings, clock

    def _authorize(self, request: Request) -> None:
        require_bearer(request, self.settings.intake_http.token)

    def guarded(self, work: Callable[[Request, Any], dict[str, Any]], body: bool = False) -> Handler:
        """An endpoint: token check, JSON body (for POST), `work` in a thread, errors as JSON."""

        async def endpoint(request: Request) -> Response:
            try:
                self._authorize(request)
                payload: Any = None
                if body:
                    try:
                        payload = orjson.loads(await request.body() or b"{}")
                    except orjson.JSONDecodeError:
                        raise Refusal(400, "BAD_REQUEST", "the body is not JSON") from None
                    if not isinstance(payload, dict):
                        raise Refusal(400, "BAD_REQUEST", "the body must be a JSON object")
                result = await run_in_threadpool(work, request, payload)
            except Refusal as refused:
                return refused.response()
            except DodoOutboxError as exc:
                return json_response(
                    503, {"code": "OUTBOX_UNAVAILABLE", "message": f"the outbox failed: {exc}"}
                )
            return json_response(200, result)

        return endpoint

    async def metrics_endpoint(self, request: Request) -> Response:
        text = await run_in_threadpool(metrics.render)
        return Response(text, media_type=None, headers={"Content-Type": metrics.CONTENT_TYPE})

    def list_dead(self, request: Request, _payload: Any) -> dict[str, Any]:
        query = request.query_params
        reason = query.get("reason") or None
        since = _since(query.get("since"), self.clock())
        limit = min(MAX_PAGE, _int(query.get("limit"), 100, "limit"))
        after = _int(query.get("after"), 0, "after")
        where = DeadFilter(reason=reason, all=reason is None, since_us=since)
        rows = self.store.dead_rows(where, limit=limit, after_id=after)
        return {
            "events": [r.as_document() for r in rows],
            "total": self.store.count_dead(where),
            "next_after": rows[-1].id if len(rows) == limit else None,
        }

    def show_dead(self, request: Request, _payload: Any) -> dict[str, Any]:
        event_id = str(request.path_params["event_id"])
        record = self.store.get(event_id)
        if record is None or record.state != "dead":
            raise Refusal(404, "NOT_FOUND", f"no dead-lettered event with event_id {event_id!r}")
        return record.as_document()

    def replay(self, _request: Request, payload: dict[str, Any]) -> dict[str, Any]:
        where = _selection(payload)
        dry_run = payload.get("dry_run") is True
        now = self.clock()
        cutoff = None
        if payload.get("restamp") is True:
            d = self.settings.delivery
            cutoff = to_us(now - d.window_seconds + d.late_margin_seconds)
        matched = self.store.count_dead(where)
        result: dict[str, Any] = {"matched": matched, "replayed": 0, "restamped": 0, "dry_run": dry_run}
        if dry_run:
            result["would_restamp"] = self.store.count_late(where, cutoff) if cutoff is not None else 0
            return result
        for step in self.store.replay(where, now_us=to_us(now), restamp_before_us=cutoff):
            result["replayed"] += step.moved
            result["restamped"] += step.restamped
        return result

    def purge(self, _request: Request, payload: dict[str, Any]) -> dict[str, Any]:
        older = payload.get("older_than")
        try:
            seconds = float(older) if isinstance(older, int | float) else durations.parse_duration(str(older))
        except ValueError as exc:
            raise Refusal(400, "BAD_REQUEST", f"older_than: {exc}") from None
        if older is None or isinstance(older, bool) or seconds < 0:
            raise Refusal(400, "BAD_REQUEST", 'older_than: required, e.g. "7d" or a number of seconds')
        reason = payload.get("reason")
        if reason is not None and not isinstance(reason, str):
            raise Refusal(400, "BAD_REQUEST", "reason: must be a string")
        cutoff = to_us(self.clock() - seconds)
        matched = self.store.count_dead(DeadFilter(reason=reason, all=reason is None), older_than_us=cutoff)
        dry_run = payload.get("dry_run") is True
        purged = 0 if dry_run else self.store.purge_dead(cutoff, reason=reason)
        return {"matched": matched, "purged": purged, "dry_run": dry_run}


def _int(text: str | None, default: int, name: str) -> int:
    if text is None or text == "":
        return default
    if not text.isdigit():
        raise Refusal(400, "BAD_REQUEST", f"{name}: must be a whole number >= 0, not {text!r}")
    return max(1, int(text)) if name == "limit" else int(text)


def _since(text: str | None, now: float) -> int | None:
    if not text:
        return None
    try:
        return durations.parse_since(text, now)
    except ValueError as exc:
        raise Refusal(400, "BAD_REQUEST", f"since: {exc}") from None


def _selection(payload: dict[str, Any]) -> DeadFilter:
    """Exactly one of event_ids / reason / all; else 400."""
    ids, reason, every = payload.get("event_ids"), payload.get("reason"), payload.get("all") is True
    chosen = sum((ids is not None, reason is not None, every))
    if chosen != 1:
        raise Refusal(
            400, "BAD_REQUEST", 'choose the events: {"event_ids": [...]}, {"reason": ...} or {"all": true}'
        )
    if ids is not None:
        if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
            raise Refusal(400, "BAD_REQUEST", "event_ids: must be a non-empty list of strings")
        if len(ids) > MAX_IDS:
            raise Refusal(400, "BAD_REQUEST", f"event_ids: at most {MAX_IDS} per request")
        return DeadFilter(event_ids=tuple(dict.fromkeys(ids)))
    if reason is not None:
        if not isinstance(reason, str):
            raise Refusal(400, "BAD_REQUEST", "reason: must be a string")
        return DeadFilter(reason=reason)
    return DeadFilter(all=True)


def ops_routes(
    store: OutboxStore, settings: Settings, *, clock: Callable[[], float] = time.time, watch: bool = True
) -> list[BaseRoute]:
    """The routes to pass as `create_app(..., extra_routes=ops_routes(store, settings))`.

    `settings` gives the token (`[intake.http] token`) the `/v1/dlq` routes require and the window
    `restamp` uses. With `watch` (the default), `store`'s gauges (rows by state, backlog age, pause,
    success ratios) are served from the metrics registry from now on (`agent.ops.metrics.watch_store`).
    """
    if watch:
        metrics.watch_store(store, settings.outbox.max_events, clock)
    ops = OpsRoutes(store, settings, clock)
    return [
        Route("/metrics", ops.metrics_endpoint, methods=["GET"]),
        Route("/v1/dlq", ops.guarded(ops.list_dead), methods=["GET"]),
        Route("/v1/dlq/replay", ops.guarded(ops.replay, body=True), methods=["POST"]),
        Route("/v1/dlq/purge", ops.guarded(ops.purge, body=True), methods=["POST"]),
        Route("/v1/dlq/{event_id:str}", ops.guarded(ops.show_dead), methods=["GET"]),
    ]
