"""Drain benchmarks: the worker delivering a backlog to the emulator, 1000 events per request, pacing off.

Ours is `Worker.drain_until_idle` with the default delivery settings except `requests_per_minute = 0`
(the token bucket off). The emulator runs in its own process (rate limit off) so the two sides of a
request do not share one interpreter. Baselines, on the same emulator, in alternating rounds:

- the bare loop (`baselines.bare_drain`): claim + splice + POST + mark in raw SQL, one request at a
  time, no retries, no leases, no request log: the floor of what delivery can cost;
- persist-queue get + POST + ack, one event per request (the queue's natural use); reported too with
  1000 gets per request (each get and each ack is still its own commit).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from agent.bench import baselines
from agent.bench.common import (
    API_KEY,
    CPU_UNIT,
    MIN_RATIO,
    NOT_INSTALLED,
    Context,
    Row,
    Stopwatch,
    cpu_per_million,
    fast_events,
    median,
    now_timestamp,
    paired_rounds,
    process_cpu,
    rate,
    raw_event,
)
from agent.bench.emulator_proc import running_emulator
from agent.config import DeliverySettings, DodoSettings, OutboxSettings, Settings
from agent.delivery.client import DodoClient
from agent.delivery.worker import Worker
from agent.store import OutboxStore, open_store

FILL_CHUNK = 1000


def bench_settings(url: str, outbox: str | Path) -> Settings:
    """Default settings pointed at `url`, pacing off (`requests_per_minute = 0`)."""
    return dataclasses.replace(
        Settings(),
        dodo=DodoSettings(base_url=url),
        outbox=dataclasses.replace(OutboxSettings(), path=str(outbox)),
        delivery=dataclasses.replace(DeliverySettings(), requests_per_minute=0.0),
    )


def fill(store: OutboxStore, n: int, prefix: str, chunk: int = FILL_CHUNK) -> None:
    """Add `n` pending events to the outbox, `chunk` per transaction (not timed)."""
    for start in range(0, n, chunk):
        store.insert_groups([(fast_events(prefix, min(chunk, n - start), start), "bench")], 0)


def drain_with_worker(store: OutboxStore, url: str) -> tuple[int, float]:
    """Drain everything due with a fresh Worker; return (events delivered, seconds)."""
    settings = bench_settings(url, store.location)
    worker = Worker(
        store, settings, DodoClient.from_settings(settings), environ={"DODO_PAYMENTS_API_KEY": API_KEY}
    )
    try:
        with Stopwatch() as sw:
            report = worker.drain_until_idle()
    finally:
        worker.close()
    if report.paused or report.dead or report.retried:
        raise RuntimeError(f"the benchmark drain did not go cleanly: {report.as_dict()}")
    return report.delivered, sw.seconds


def run(ctx: Context) -> list[Row]:
    per_round = ctx.size(30_000, 8_000, minimum=1000)
    rounds = ctx.size(4, 2, minimum=1) if ctx.scale >= 0.5 else 1
    peer_events = ctx.size(1500, 300, minimum=20)
    ctx.progress(f"drain: starting the emulator; {rounds} rounds of {per_round} events per side")
    with running_emulator() as url:
        ctx.progress("drain: ours vs the bare raw-SQL loop")
        ours_side = _Ours(ctx, url, per_round)
        figures = paired_rounds({"ours": ours_side, "bare": _bare(ctx, url, per_round)}, rounds)
        peer_one: float | None = None
        peer_batch: float | None = None
        if baselines.peer_installed():
            ctx.progress(f"drain: persist-queue get+ack, {peer_events} events, 1 and 1000 per request")
            peer_one = _persist_queue(ctx, url, peer_events, 1)
            peer_batch = _persist_queue(ctx, url, peer_events * 5, 1000)
        else:
            ctx.progress("drain: persist-queue is not installed; its rows are marked so")
    ours = median(figures["ours"])
    missing = "" if peer_one is not None else NOT_INSTALLED
    return [
        Row(
            "drain.bare",
            "drain, 1000/batch, pacing off",
            ours,
            "events/s",
            "bare claim+POST+mark loop, raw SQL",
            median(figures["bare"]),
            MIN_RATIO,
            0.7,
            note="ours also keeps leases, the request log, retries and 2 requests in flight",
            rounds={"ours": figures["ours"], "baseline": figures["bare"]},
        ),
        Row(
            "drain.peer",
            "  same, vs the peer",
            ours,
            "events/s",
            "persist-queue get+POST+ack, 1/request",
            peer_one,
            MIN_RATIO,
            50.0,
            note=baselines.PEER_MISSING_NOTE if missing else "",
            missing=missing,
        ),
        Row(
            "drain.peer.batched",
            "  same, vs the peer batching",
            ours,
            "events/s",
            "persist-queue 1000 gets/POST",
            peer_batch,
            note=baselines.PEER_MISSING_NOTE if missing else "each get and ack is still its own commit",
            missing=missing,
        ),
        Row(
            "cpu.drain",
            "CPU, drain 1000/batch",
            cpu_per_million(ours_side.cpu, ours_side.delivered),
            CPU_UNIT,
            note=(
                f"{ours_side.cpu:.2f} CPU s (user + system, every thread of the agent; the emulator is "
                f"another process) for {ours_side.delivered} events, the warm-up round included"
            ),
        ),
    ]


class _Ours:
    """Our drain rounds; `cpu` and `delivered` add up this process's CPU seconds and events over them."""

    def __init__(self, ctx: Context, url: str, n: int) -> None:
        self.ctx, self.url, self.n = ctx, url, n
        self.cpu = 0.0
        self.delivered = 0

    def __call__(self, number: int) -> float:
        with open_store(self.ctx.path(f"drain/ours-{number}.db")) as store:
            fill(store, self.n, f"d{number}")
            before = process_cpu()
            delivered, seconds = drain_with_worker(store, self.url)
            self.cpu += process_cpu() - before
        if delivered != self.n:
            raise RuntimeError(f"the worker delivered {delivered} of {self.n} events")
        self.delivered += delivered
        return rate(delivered, seconds)


def _bare(ctx: Context, url: str, n: int) -> Callable[[int], float]:
    def one_round(number: int) -> float:
        path = ctx.path(f"drain/bare-{number}.db")
        with open_store(path) as store:
            fill(store, n, f"b{number}")
        conn = baselines.open_raw(path)
        try:
            with Stopwatch() as sw:
                delivered = baselines.bare_drain(conn, url)
        finally:
            conn.close()
        return rate(delivered, sw.seconds)

    return one_round


def _persist_queue(ctx: Context, url: str, n: int, per_request: int) -> float:
    queue = baselines.open_persist_queue(ctx.path(f"drain/persist-queue-{per_request}"))
    try:
        stamp = now_timestamp()
        for i in range(n):
            queue.put(raw_event(f"p{per_request}", i, stamp))
        with Stopwatch() as sw:
            delivered = baselines.persist_queue_drain(queue, url, per_request)
    finally:
        queue.close()
    return rate(delivered, sw.seconds)
