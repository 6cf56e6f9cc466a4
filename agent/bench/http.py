"""HTTP intake benchmarks: `POST /events/ingest` under load from a separate process (`loadgen`).

Three servers run side by side in this process, each the real stack (`create_app` + `HttpServer`:
uvicorn, Starlette, the intake's validation and its worker threads), differing only in the outbox:

- ours: the product `Outbox` (group commit: concurrent requests share one fsync);
- no-store: validates and answers 200 without storing (what the stack costs without the disk);
- commit-per-request: each request commits its own transaction, one after another.

Rounds alternate between the three. Then 1000-event requests against ours, reported in events/s.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from agent.bench.common import MIN_RATIO, MIN_VALUE, NO_DATA, Context, Row, median, paired_rounds
from agent.bench.loadgen import run_load
from agent.config import HttpIntakeSettings
from agent.errors import EventConflictError
from agent.events import Event
from agent.intake.http import create_app
from agent.intake.server import HttpServer
from agent.outbox import EnqueueResult, Outbox

CONNECTIONS = 64
BIG_CONNECTIONS = 8
BIG_EVENTS = 1000


class NoStoreOutbox(Outbox):
    """An outbox that stores nothing: `enqueue_validated` answers as if every event were new."""

    def enqueue_validated(
        self, events: Sequence[Event], *, conn: Any = None, source: str | None = None
    ) -> EnqueueResult:
        return EnqueueResult(new=[e.event_id for e in events], source=source or self.source)


class CommitPerRequestOutbox(Outbox):
    """An outbox without group commit: each call is its own transaction, one after another."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self._one_at_a_time = threading.Lock()

    def enqueue_validated(
        self, events: Sequence[Event], *, conn: Any = None, source: str | None = None
    ) -> EnqueueResult:
        source = source or self.source
        with self._one_at_a_time:
            [outcome] = self.store.insert_groups([(events, source)], 0)
        if isinstance(outcome, EventConflictError):
            raise outcome
        return EnqueueResult(new=outcome.new, duplicates=outcome.duplicates, source=source)


def _serve(stack: ExitStack, outbox: Outbox) -> str:
    settings = HttpIntakeSettings(listen="127.0.0.1:0", max_body_bytes=10_000_000)
    app = create_app(outbox, settings, status=dict, readiness=dict)
    server = stack.enter_context(HttpServer(app, settings.listen))
    stack.callback(outbox.close)  # closed after the server stops (callbacks run in reverse)
    return server.url


def run(ctx: Context) -> list[Row]:
    duration = ctx.seconds(3.0, 1.2)
    rounds = ctx.size(5, 2, minimum=1) if ctx.scale >= 0.5 else 1
    with ExitStack() as stack:
        urls = {
            "ours": _serve(stack, Outbox(ctx.path("http/ours.db"))),
            "no_store": _serve(stack, NoStoreOutbox(ctx.path("http/no-store.db"))),
            "per_request": _serve(stack, CommitPerRequestOutbox(ctx.path("http/per-request.db"))),
        }
        ctx.progress(
            f"http: single-event POSTs, {CONNECTIONS} connections, "
            f"{rounds} rounds of {duration:.1f} s per server"
        )
        reports: dict[str, list[dict[str, Any]]] = {name: [] for name in urls}

        def side(name: str) -> Callable[[int], float]:
            def one_round(number: int) -> float:
                report = run_load(
                    urls[name], connections=CONNECTIONS, events=1, duration=duration, prefix=f"{name}{number}"
                )
                reports[name].append(report)
                return float(report["ok"]) / float(report["seconds"])

            return one_round

        figures = paired_rounds({name: side(name) for name in urls}, rounds, warmup=0)
        ctx.progress(f"http: {BIG_EVENTS}-event POSTs, {BIG_CONNECTIONS} connections, {duration:.1f} s")
        big = run_load(
            urls["ours"],
            connections=BIG_CONNECTIONS,
            events=BIG_EVENTS,
            duration=duration * 1.5,
            prefix="big",
        )
    ours = _succeeded(figures["ours"], reports["ours"])
    no_store = _succeeded(figures["no_store"], reports["no_store"])
    per_request = _succeeded(figures["per_request"], reports["per_request"])
    big_events = float(big["events"]) / float(big["seconds"]) if big["ok"] else None
    latency = _latency([r for r in reports["ours"] if r["ok"]])
    return [
        Row(
            "http.single.no_store",
            f"HTTP 1-event POSTs, {CONNECTIONS} connections",
            ours,
            "requests/s",
            "same stack, not storing",
            no_store,
            MIN_RATIO,
            0.5,
            note=_note(
                {"ours": reports["ours"], "the baseline": reports["no_store"]},
                f"ours: p50 {latency[0]:.1f} ms, p99 {latency[1]:.1f} ms per request",
            ),
            rounds={"ours": figures["ours"], "baseline": figures["no_store"]},
            extra={"statuses": [r["statuses"] for r in reports["ours"]]},
            missing=_missing(ours, no_store),
        ),
        Row(
            "http.single.per_request",
            "  same, vs 1 commit per request",
            ours,
            "requests/s",
            "same stack, 1 commit/request",
            per_request,
            MIN_RATIO,
            3.0,
            note=_note({"ours": reports["ours"], "the baseline": reports["per_request"]}, ""),
            rounds={"ours": figures["ours"], "baseline": figures["per_request"]},
            missing=_missing(ours, per_request),
        ),
        Row(
            "http.batch",
            f"HTTP {BIG_EVENTS}-event POSTs, {BIG_CONNECTIONS} connections",
            big_events,
            "events/s",
            target_kind=MIN_VALUE,
            target=50_000.0,
            note=_note(
                {"ours": [big]},
                f"p50 {big['latency_ms']['p50']:.0f} ms, p99 {big['latency_ms']['p99']:.0f} ms per request",
            ),
            extra={"statuses": big["statuses"], "errors": big["errors"]},
            missing=_missing(big_events),
        ),
    ]


def _succeeded(figures: list[float], reports: list[dict[str, Any]]) -> float | None:
    """The median figure of a side, or None when no request of any of its rounds succeeded."""
    return median(figures) if any(r["ok"] for r in reports) else None


def _missing(*figures: float | None) -> str:
    return NO_DATA if any(figure is None for figure in figures) else ""


def _note(sides: dict[str, list[dict[str, Any]]], measured: str) -> str:
    """`measured`, or for a side without a successful request: how many rounds, what was answered."""
    failures = []
    for side, reports in sides.items():
        if any(r["ok"] for r in reports):
            continue
        answers = {status: n for r in reports for status, n in r["statuses"].items()}
        errors = [error for r in reports for error in r["errors"]][:2]
        failures.append(
            f"{side}: no request succeeded in {len(reports)} round(s) of "
            f"{reports[0]['seconds'] if reports else 0:.1f} s (answers {answers or 'none'}"
            + (f"; {'; '.join(errors)}" if errors else "")
            + "); the machine may be too busy: try a larger --scale"
        )
    return "; ".join(failures) if failures else measured


def _latency(reports: list[dict[str, Any]]) -> tuple[float, float]:
    if not reports:
        return 0.0, 0.0
    return (
        median([r["latency_ms"]["p50"] for r in reports]),
        median([r["latency_ms"]["p99"] for r in reports]),
    )
