"""HTTP intake benchmarks: `POST /events/ingest` under load from a separate process (wrk, or `loadgen`).

Servers run side by side in this process, each behind the same `HttpServer` (uvicorn, same settings):

- ours: the product (`create_app` + `Outbox`: validation on the loop, the committer thread's group
  commit, `synchronous = full`);
- bare: a bare ASGI app that parses the body and stores nothing (`wrk.bare_app`): the HTTP stack alone;
- no-store: our app, validating and answering 200 without storing (what the disk costs us);
- commit-per-request: our app, each request its own transaction, one after another.

Rounds alternate between them. Then 1000-event requests, ours against the bare app, in events/s.
CPU per event: this process's user + system CPU seconds (every thread: uvicorn, the committer) over
ours' rounds, per million acknowledged events; the load generator is another process and not counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
from typing import Any, cast

from starlette.types import ASGIApp

from agent.bench.common import (
    CPU_UNIT,
    MIN_RATIO,
    NO_DATA,
    REPORT,
    Context,
    Row,
    cpu_per_million,
    median,
    paired_rounds,
    process_cpu,
)
from agent.bench.wrk import bare_app, run_http_load
from agent.config import HttpIntakeSettings
from agent.errors import EventConflictError, InvalidEventError, OutboxError
from agent.events import Event
from agent.intake.http import create_app
from agent.intake.server import HttpServer
from agent.outbox import EnqueueResult, Outbox

CONNECTIONS = 64
BIG_CONNECTIONS = 8
BIG_EVENTS = 1000
Outcomes = list[EnqueueResult | EventConflictError | InvalidEventError | OutboxError]


class NoStoreOutbox(Outbox):
    """An outbox that stores nothing: every call answers as if every event were new."""

    def enqueue_calls(self, calls: Sequence[tuple[Sequence[Event], str]]) -> Outcomes:
        return [EnqueueResult(new=[e.event_id for e in events], source=source) for events, source in calls]


class CommitPerRequestOutbox(Outbox):
    """An outbox without group commit: each call is its own transaction, one after another."""

    def enqueue_calls(self, calls: Sequence[tuple[Sequence[Event], str]]) -> Outcomes:
        outcomes: Outcomes = []
        for events, source in calls:
            [outcome] = self.store.insert_groups([(events, source)], 0)
            if isinstance(outcome, EventConflictError):
                outcomes.append(outcome)
            else:
                outcomes.append(EnqueueResult(new=outcome.new, duplicates=outcome.duplicates, source=source))
        return outcomes


def _settings() -> HttpIntakeSettings:
    return HttpIntakeSettings(listen="127.0.0.1:0", max_body_bytes=10_000_000)


def _serve(stack: ExitStack, outbox: Outbox) -> str:
    settings = _settings()
    app = create_app(outbox, settings, status=dict, readiness=dict)
    server = stack.enter_context(HttpServer(app, settings.listen))
    stack.callback(outbox.close)  # closed after the server stops (callbacks run in reverse)
    return server.url


def _serve_bare(stack: ExitStack) -> str:
    return stack.enter_context(HttpServer(cast(ASGIApp, bare_app), _settings().listen)).url


class _Side:
    """One server's rounds: the reports, and this process's CPU seconds spent during them."""

    def __init__(self, url: str, connections: int, events: int, duration: float, name: str) -> None:
        self.url, self.connections, self.events, self.duration, self.name = (
            url,
            connections,
            events,
            duration,
            name,
        )
        self.reports: list[dict[str, Any]] = []
        self.cpu = 0.0

    def __call__(self, number: int) -> float:
        before = process_cpu()
        report = run_http_load(
            self.url,
            connections=self.connections,
            events=self.events,
            duration=self.duration,
            prefix=f"{self.name}{number}",
        )
        self.cpu += process_cpu() - before
        self.reports.append(report)
        unit = "events" if self.events > 1 else "ok"
        return float(report[unit]) / float(report["seconds"])

    @property
    def events_ok(self) -> int:
        return sum(int(r["events"]) for r in self.reports)

    @property
    def generator(self) -> str:
        return self.reports[0].get("generator", "built-in") if self.reports else "built-in"


def run(ctx: Context) -> list[Row]:
    duration = ctx.seconds(3.0, 1.2)
    rounds = ctx.size(3, 2, minimum=1) if ctx.scale >= 0.5 else 1
    with ExitStack() as stack:
        urls = {
            "ours": _serve(stack, Outbox(ctx.path("http/ours.db"))),
            "bare": _serve_bare(stack),
            "no_store": _serve(stack, NoStoreOutbox(ctx.path("http/no-store.db"))),
            "per_request": _serve(stack, CommitPerRequestOutbox(ctx.path("http/per-request.db"))),
        }
        ctx.progress(
            f"http: single-event POSTs, {CONNECTIONS} connections, "
            f"{rounds} rounds of {duration:.1f} s per server"
        )
        single = {name: _Side(url, CONNECTIONS, 1, duration, name) for name, url in urls.items()}
        figures = paired_rounds(dict(single), rounds, warmup=0)
        ctx.progress(f"http: {BIG_EVENTS}-event POSTs, {BIG_CONNECTIONS} connections, {duration:.1f} s")
        big = {
            name: _Side(urls[name], BIG_CONNECTIONS, BIG_EVENTS, duration, f"big{name}")
            for name in ("ours", "bare")
        }
        big_figures = paired_rounds(dict(big), rounds, warmup=0)
    generator = single["ours"].generator
    sides = {name: _succeeded(figures[name], side.reports) for name, side in single.items()}
    ours, bare = sides["ours"], sides["bare"]
    big_ours = _succeeded(big_figures["ours"], big["ours"].reports)
    big_bare = _succeeded(big_figures["bare"], big["bare"].reports)
    latency, bare_latency = _latency(single["ours"].reports), _latency(single["bare"].reports)
    big_latency = _latency(big["ours"].reports)
    return [
        Row(
            "http.single.bare",
            f"HTTP 1-event POSTs, {CONNECTIONS} connections ({generator})",
            ours,
            "requests/s",
            "bare ASGI app, same server, not storing",
            bare,
            MIN_RATIO,
            0.5,
            note=_note(
                {"ours": single["ours"].reports, "the baseline": single["bare"].reports},
                f"ours: p50 {latency[0]:.1f} ms, p99 {latency[1]:.1f} ms per request; "
                f"bare: p50 {bare_latency[0]:.1f} ms, p99 {bare_latency[1]:.1f} ms",
            ),
            rounds={"ours": figures["ours"], "baseline": figures["bare"]},
            extra={"statuses": [r["statuses"] for r in single["ours"].reports], "generator": generator},
            missing=_missing(ours, bare),
        ),
        Row(
            "http.single.p99",
            "  p99 latency of a 200",
            latency[1] if ours else None,
            "ms",
            "bare ASGI app's p99",
            bare_latency[1] if bare else None,
            REPORT,
            note=_note(
                {"ours": single["ours"].reports, "the baseline": single["bare"].reports},
                "from each request's send to its answer; no coordinated-omission correction",
            ),
            missing=_missing(ours, bare),
        ),
        Row(
            "http.single.no_store",
            "  same, vs our app not storing",
            ours,
            "requests/s",
            "same stack, not storing",
            sides["no_store"],
            REPORT,
            note=_note({"the baseline": single["no_store"].reports}, "what storing costs on our stack"),
            rounds={"ours": figures["ours"], "baseline": figures["no_store"]},
            missing=_missing(ours, sides["no_store"]),
        ),
        Row(
            "http.single.per_request",
            "  same, vs 1 commit per request",
            ours,
            "requests/s",
            "same stack, 1 commit/request",
            sides["per_request"],
            MIN_RATIO,
            3.0,
            note=_note({"ours": single["ours"].reports, "the baseline": single["per_request"].reports}, ""),
            rounds={"ours": figures["ours"], "baseline": figures["per_request"]},
            missing=_missing(ours, sides["per_request"]),
        ),
        Row(
            "http.batch",
            f"HTTP {BIG_EVENTS}-event POSTs, {BIG_CONNECTIONS} connections ({generator})",
            big_ours,
            "events/s",
            "bare ASGI app, same server, not storing",
            big_bare,
            MIN_RATIO,
            0.5,
            note=_note(
                {"ours": big["ours"].reports, "the baseline": big["bare"].reports},
                f"ours: p50 {big_latency[0]:.0f} ms, p99 {big_latency[1]:.0f} ms per request",
            ),
            rounds={"ours": big_figures["ours"], "baseline": big_figures["bare"]},
            extra={"statuses": [r["statuses"] for r in big["ours"].reports], "generator": generator},
            missing=_missing(big_ours, big_bare),
        ),
        _cpu_row("cpu.http.single", "CPU, HTTP 1-event POSTs", single["ours"], single["bare"]),
        _cpu_row("cpu.http.batch", f"CPU, HTTP {BIG_EVENTS}-event POSTs", big["ours"], big["bare"]),
    ]


def _cpu_row(name: str, path: str, side: _Side, bare: _Side) -> Row:
    """CPU seconds per million acknowledged events, ours beside the bare app's (lower is better)."""
    figure = cpu_per_million(side.cpu, side.events_ok)
    baseline = cpu_per_million(bare.cpu, bare.events_ok)
    return Row(
        name,
        path,
        figure,
        CPU_UNIT,
        "bare ASGI app (parses, stores nothing)",
        baseline,
        note=_note(
            {"ours": side.reports, "the baseline": bare.reports},
            f"{side.cpu:.2f} CPU s (user + system, every thread of the agent's process) for "
            f"{side.events_ok} events; lower is better",
        ),
        missing=_missing(figure, baseline),
    )


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
