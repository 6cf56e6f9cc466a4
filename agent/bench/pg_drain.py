"""Drain on PostgreSQL: one agent (the real Worker) against a pgmq read(1000) + POST + delete loop.

Both sides deliver the same number of events per round to the same emulator (its own process, rate
limit off), from the same server, in alternating rounds. Ours fills a fresh outbox schema per round
(`drain.fill`, not timed) and drains it with `drain.drain_with_worker` (defaults, pacing off: 1000
events per request, 2 requests in flight, leases, the request log); pgmq's queue is filled with
`send_batch` (not timed) and drained by `pg_baselines.Pgmq.drain`, one request at a time.
"""

from __future__ import annotations

from collections.abc import Callable

from agent.bench import pg_baselines
from agent.bench.common import (
    MIN_RATIO,
    MIN_VALUE,
    NOT_INSTALLED,
    Context,
    Row,
    Stopwatch,
    median,
    now_timestamp,
    paired_rounds,
    rate,
    raw_event,
)
from agent.bench.drain import drain_with_worker, fill
from agent.store import open_store
from agent.store.records import StoreOptions

FLOOR = 8000.0
"""events/s one agent must drain: twice Dodo's ceiling of about 4,000 events/s ("well above")."""
PEER_RATIO = 0.7


def run(ctx: Context, url: str, emulator_url: str, missing: list[str]) -> list[Row]:
    per_round = ctx.size(30_000, 4_000, minimum=1000)
    rounds = ctx.size(3, 1, minimum=1)
    warmup = 0 if ctx.quick else 1  # --quick: a few seconds; its first round includes the warm-up
    ctx.progress(f"postgres: drain, {rounds} rounds of {per_round} events per side")
    sides: dict[str, Callable[[int], float]] = {"ours": _ours(url, emulator_url, per_round)}
    pgmq: pg_baselines.Pgmq | None = None
    try:
        if "pgmq" not in missing:
            pgmq = pg_baselines.Pgmq(url)
            sides["pgmq"] = _pgmq(pgmq, emulator_url, per_round)
        figures = paired_rounds(sides, rounds, warmup)
    finally:
        if pgmq is not None:
            pgmq.close()
    return rows(figures, "pgmq" in missing)


def _ours(url: str, emulator_url: str, n: int) -> Callable[[int], float]:
    def one_round(number: int) -> float:
        schema = pg_baselines.new_name("dodo_bench_drain")
        try:
            with open_store(url, StoreOptions(schema=schema)) as store:
                fill(store, n, f"pd{number}")
                delivered, seconds = drain_with_worker(store, emulator_url)
        finally:
            pg_baselines.drop_schemas(url, [schema])
        if delivered != n:
            raise RuntimeError(f"the worker delivered {delivered} of {n} events from PostgreSQL")
        return rate(delivered, seconds)

    return one_round


def _pgmq(pgmq: pg_baselines.Pgmq, emulator_url: str, n: int) -> Callable[[int], float]:
    def one_round(number: int) -> float:
        queue = pgmq.new_queue()
        stamp = now_timestamp()
        pgmq.fill(queue, [raw_event(f"pq{number}", i, stamp) for i in range(n)])
        with Stopwatch() as sw:
            delivered = pgmq.drain(queue, emulator_url)
        if delivered != n:
            raise RuntimeError(f"the pgmq loop delivered {delivered} of {n} events")
        return rate(delivered, sw.seconds)

    return one_round


def rows(figures: dict[str, list[float]], pgmq_missing: bool) -> list[Row]:
    ours = median(figures["ours"])
    return [
        Row(
            "pg.drain",
            "PostgreSQL drain, 1 agent, 1000/batch",
            ours,
            "events/s",
            target_kind=MIN_VALUE,
            target=FLOOR,
            note="the real Worker into the emulator, pacing off; the floor is twice Dodo's ~4k events/s",
            rounds={"ours": figures["ours"]},
        ),
        Row(
            "pg.drain.pgmq",
            "  same, vs pgmq",
            ours,
            "events/s",
            "pgmq read(1000)+POST+delete loop",
            None if pgmq_missing else median(figures["pgmq"]),
            MIN_RATIO,
            PEER_RATIO,
            note=(
                f"pgmq is not installed, so it was not measured: {pg_baselines.BENCH_EXTRA}"
                if pgmq_missing
                else "same server, same emulator; pgmq holds one request in flight, ours two"
            ),
            rounds={"ours": figures["ours"], "baseline": figures.get("pgmq", [])},
            missing=NOT_INSTALLED if pgmq_missing else "",
        ),
    ]
