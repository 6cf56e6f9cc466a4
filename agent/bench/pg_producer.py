"""Producer cost on PostgreSQL: what the outbox adds to the application's own transactions.

pgbench-style: `CLIENTS` threads, each on its own connection, run short business transactions (insert
an order row, update the customer's counter; `pg_baselines.BusinessTransaction`) for a fixed time.
Four sides, in alternating rounds (`paired_rounds`):

- alone: the business transaction only;
- ours: + `Outbox.enqueue(event, conn=app_conn)` in the same transaction (validation included);
- pgmq: + pgmq's `send(queue, event, conn=app_conn)`;
- procrastinate: + procrastinate's `defer` with `connection=app_conn` (its job INSERT, triggers and all).

Every side builds the same event dict per transaction. A side's cost per transaction is what each
client waits for one: `CLIENTS / transactions per second`; the added cost of a producer is its cost
minus that of the business transaction alone, and ours is held against pgmq's.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from agent.bench import pg_baselines
from agent.bench.common import (
    MAX_RATIO,
    NO_DATA,
    NOT_INSTALLED,
    Context,
    Row,
    median,
    now_timestamp,
    paired_rounds,
    raw_event,
)
from agent.outbox import Outbox

if TYPE_CHECKING:  # psycopg is the `postgres` extra: imported when the group runs, not before
    import psycopg

CLIENTS = 8
TARGET = 1.2
"""Our added cost may be at most this many times pgmq's."""

Extra = Callable[[Any, dict[str, Any]], None]
"""A producer call on the app's connection (a psycopg Connection) inside its open transaction."""


def run(ctx: Context, url: str, missing: list[str]) -> list[Row]:
    """The producer rows on the server at `url`; `missing` names the peers not installed."""
    seconds = ctx.seconds(2.0, 0.4)
    rounds = ctx.size(5, 1, minimum=1)
    app_schema = pg_baselines.new_name("dodo_bench_app")
    outbox_schema = pg_baselines.new_name("dodo_bench_outbox")
    proc_schema = pg_baselines.new_name("dodo_bench_procrastinate")
    ctx.progress(f"postgres: producer cost, {CLIENTS} clients, {rounds} rounds of {seconds:.1f} s per side")
    pgmq: pg_baselines.Pgmq | None = None
    outbox: Outbox | None = None
    connections: list[psycopg.Connection[Any]] = []
    try:
        with pg_baselines.connect(url) as conn:
            pg_baselines.create_app_tables(conn, app_schema)
        outbox = Outbox(url, schema=outbox_schema)
        extras: dict[str, Extra] = {"ours": outbox_extra(outbox)}
        search_path: list[str] = []
        if "pgmq" not in missing:
            pgmq = pg_baselines.Pgmq(url)
            extras["pgmq"] = pgmq_extra(pgmq, pgmq.new_queue())
        if "procrastinate" not in missing:
            procrastinate = pg_baselines.Procrastinate(url, proc_schema)
            extras["procrastinate"] = procrastinate.defer
            search_path.append(proc_schema)
        connections = [pg_baselines.connect(url, search_path) for _ in range(CLIENTS)]
        business = pg_baselines.BusinessTransaction(app_schema)
        sides: dict[str, Callable[[int], float]] = {"alone": _side(connections, business, None, seconds)}
        for name, extra in extras.items():
            sides[name] = _side(connections, business, extra, seconds)
        figures = paired_rounds(sides, rounds, warmup=0 if ctx.quick else 1)
    finally:
        for conn in connections:
            conn.close()
        if outbox is not None:
            outbox.close()
        if pgmq is not None:
            pgmq.close()
        pg_baselines.drop_schemas(url, [app_schema, outbox_schema, proc_schema])
    found = rows(figures, missing)
    if ctx.quick:
        found[0].note += "; --quick: one short round per side, noisy (run without --quick to judge)"
    return found


def outbox_extra(outbox: Outbox) -> Extra:
    def enqueue(conn: psycopg.Connection[Any], event: dict[str, Any]) -> None:
        outbox.enqueue(event, conn=conn)

    return enqueue


def pgmq_extra(pgmq: pg_baselines.Pgmq, queue: str) -> Extra:
    def send(conn: psycopg.Connection[Any], event: dict[str, Any]) -> None:
        pgmq.send(conn, queue, event)

    return send


def _side(
    connections: list[psycopg.Connection[Any]],
    business: pg_baselines.BusinessTransaction,
    extra: Extra | None,
    seconds: float,
) -> Callable[[int], float]:
    """One round of a side: every client runs transactions for `seconds`; returns transactions/s."""

    def one_round(number: int) -> float:
        stamp = now_timestamp()
        counts = [0] * len(connections)
        errors: list[BaseException] = []
        start = threading.Barrier(len(connections) + 1)
        deadline = [0.0]

        def client(index: int, conn: psycopg.Connection[Any]) -> None:
            start.wait()
            prefix = f"r{number}c{index}"  # event_ids unique in the run
            done = 0
            try:
                while time.perf_counter() < deadline[0]:
                    event = raw_event(prefix, done, stamp)
                    with conn.transaction():
                        business.run(conn, event["customer_id"], 100 + done % 900)
                        if extra is not None:
                            extra(conn, event)
                    done += 1
            except BaseException as exc:  # reported after the round, never lost in a thread
                errors.append(exc)
            counts[index] = done

        threads = [
            threading.Thread(target=client, args=(i, conn), daemon=True) for i, conn in enumerate(connections)
        ]
        for thread in threads:
            thread.start()
        began = time.perf_counter()
        deadline[0] = began + seconds
        start.wait()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - began
        if errors:
            raise RuntimeError(f"a producer client failed: {type(errors[0]).__name__}: {errors[0]}")
        return sum(counts) / elapsed if elapsed > 0 else 0.0

    return one_round


def added_us(tps: float | None, alone: float) -> float | None:
    """What one producer call adds to each client's transaction, in µs; None without figures."""
    if tps is None or tps <= 0 or alone <= 0:
        return None
    return (CLIENTS / tps - CLIENTS / alone) * 1_000_000


def rows(figures: dict[str, list[float]], missing: list[str]) -> list[Row]:
    alone = median(figures["alone"])
    tps = {name: (median(values) if values else None) for name, values in figures.items()}
    ours_added = added_us(tps.get("ours"), alone)

    def tps_row(name: str, path: str) -> Row:
        absent = name in missing
        return Row(
            f"pg.producer.{name}",
            path,
            None if absent else tps.get(name),
            "tx/s",
            "business transaction alone",
            alone,
            note=f"{name} is not installed: {pg_baselines.BENCH_EXTRA}" if absent else "",
            rounds={"ours": figures.get(name, []), "baseline": figures["alone"]},
            missing=NOT_INSTALLED if absent else "",
        )

    def cost_row(name: str, path: str, kind: str, target: float | None) -> Row:
        absent = name in missing
        theirs = None if absent else added_us(tps.get(name), alone)
        unmeasurable = not absent and (theirs is None or theirs <= 0 or ours_added is None)
        if absent:
            note = f"{name} is not installed, so it was not measured: {pg_baselines.BENCH_EXTRA}"
        elif unmeasurable:
            note = f"{name}'s added cost did not rise above the round-to-round noise; run without --quick"
        else:
            note = "added cost = what each of the 8 clients waits more per transaction than alone"
        return Row(
            f"pg.producer.cost.{name}",
            path,
            ours_added,
            "µs/tx",
            f"{name}'s added cost",
            theirs,
            kind,
            target,
            note=note,
            missing=NOT_INSTALLED if absent else NO_DATA if unmeasurable else "",
        )

    return [
        Row(
            "pg.producer.alone",
            f"PostgreSQL: business tx, {CLIENTS} clients",
            alone,
            "tx/s",
            note="insert an order + update its customer's counter, each client on its own connection",
            rounds={"ours": figures["alone"]},
        ),
        tps_row("ours", "  + our enqueue(conn=) in the tx"),
        tps_row("pgmq", "  + pgmq send in the tx"),
        tps_row("procrastinate", "  + procrastinate defer in the tx"),
        cost_row("pgmq", "  our added cost, vs pgmq's", MAX_RATIO, TARGET),
        cost_row("procrastinate", "  our added cost, vs procrastinate's", MAX_RATIO, None),
    ]
