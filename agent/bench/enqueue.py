"""Enqueue benchmarks: the library call `Outbox.enqueue` against raw sqlite3 and persist-queue.

- single: one thread, one event per call, `synchronous=FULL` (every call returns after its fsync).
- threads16: 16 threads calling `enqueue` at once; group commit shares one fsync among them.
- batch: 1000 already-validated events per `enqueue_validated` call (plus, reported, `enqueue_many`
  with validation included).
Every side writes its own file in the benchmark directory; events are built before the clock starts.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from agent.bench import baselines
from agent.bench.common import (
    MIN_RATIO,
    NOT_INSTALLED,
    Context,
    Row,
    Stopwatch,
    check_events,
    median,
    paired_rounds,
    rate,
    raw_events,
)
from agent.outbox import Outbox

THREADS = 16
BATCH = 1000


def run(ctx: Context) -> list[Row]:
    return [*_single(ctx), _threads(ctx), *_batch(ctx)]


def _single(ctx: Context) -> list[Row]:
    # Short rounds, many of them: the disk's mood changes within a second, and both sides must see it.
    per_round = 50
    rounds = ctx.size(160, 24, minimum=3)
    ctx.progress(f"enqueue: single events, one thread, {rounds} rounds of {per_round}")
    outbox = Outbox(ctx.path("enqueue/single.db"))
    raw = baselines.RawPerEvent(ctx.path("enqueue/raw.db"))
    minimal = baselines.RawPerEvent(ctx.path("enqueue/minimal.db"), minimal_table=True)
    queue = None
    if baselines.peer_installed():
        queue = baselines.open_persist_queue(ctx.path("enqueue/persist-queue"))
    synchronous = baselines.persist_queue_synchronous(queue) if queue is not None else None

    def side(prefix: str, call: Callable[[dict[str, Any]], object]) -> Callable[[int], float]:
        def one_round(number: int) -> float:
            events = raw_events(f"{prefix}{number}", per_round)
            with Stopwatch() as sw:
                for event in events:
                    call(event)
            return rate(per_round, sw.seconds)

        return one_round

    try:
        sides = {
            "ours": side("o", outbox.enqueue),
            "raw": side("r", raw.insert),
            "minimal": side("m", minimal.insert),
        }
        if queue is not None:
            sides["persist_queue"] = side("p", queue.put)
        figures = paired_rounds(sides, rounds)
    finally:
        outbox.close()
        raw.close()
        minimal.close()
        if queue is not None:
            queue.close()
    ours = median(figures["ours"])
    return _single_rows(ours, figures, synchronous)


def _single_rows(ours: float, figures: dict[str, list[float]], synchronous: int | None) -> list[Row]:
    peer = figures.get("persist_queue")
    if peer is None:
        peer_note = baselines.PEER_MISSING_NOTE
    else:
        ceiling = median(figures["raw"]) / max(1.0, median(peer))
        peer_note = (
            f"persist-queue: WAL, auto_commit=True, PRAGMA synchronous={synchronous} (2 = FULL), pickle; "
            f"its table has no index. The outbox's table written raw reaches {ceiling:.2f}x of it: "
            "the ceiling for one commit per event with this schema"
        )
    return [
        Row(
            "enqueue.single",
            "enqueue 1 event/call, 1 thread, FULL",
            ours,
            "events/s",
            "raw INSERT, 1 txn/event, same table",
            median(figures["raw"]),
            MIN_RATIO,
            0.85,
            note="Outbox.enqueue validates each event; the baseline writes the same row without it",
            rounds={"ours": figures["ours"], "baseline": figures["raw"]},
        ),
        Row(
            "enqueue.single.minimal",
            "  same, vs a minimal table",
            ours,
            "events/s",
            "raw INSERT, 1 txn/event, 3 columns",
            median(figures["minimal"]),
            note="baseline table (id, event_id, payload): what the outbox's columns and claim index cost",
            rounds={"ours": figures["ours"], "baseline": figures["minimal"]},
        ),
        Row(
            "enqueue.single.peer",
            "  same, vs the peer",
            ours,
            "events/s",
            "persist-queue SQLiteAckQueue.put",
            None if peer is None else median(peer),
            MIN_RATIO,
            1.2,
            note=peer_note,
            rounds={"ours": figures["ours"], "baseline": peer or []},
            missing="" if peer is not None else NOT_INSTALLED,
        ),
    ]


def _threaded(call: Callable[[dict[str, Any]], object], events: list[dict[str, Any]]) -> float:
    """Run `call` over `events` from THREADS threads started together; return the seconds taken."""
    chunks = [events[i::THREADS] for i in range(THREADS)]
    barrier = threading.Barrier(THREADS + 1)
    errors: list[BaseException] = []

    def work(chunk: list[dict[str, Any]]) -> None:
        barrier.wait()
        try:
            for event in chunk:
                call(event)
        except BaseException as exc:  # reported after the join, not lost in a thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(chunk,)) for chunk in chunks]
    for thread in threads:
        thread.start()
    with Stopwatch() as sw:
        barrier.wait()
        for thread in threads:
            thread.join()
    if errors:
        raise errors[0]
    return sw.seconds


def _threads(ctx: Context) -> Row:
    per_round = THREADS * 25
    rounds = ctx.size(60, 10, minimum=3)
    ctx.progress(f"enqueue: single events from {THREADS} threads, {rounds} rounds of {per_round}")
    outbox = Outbox(ctx.path("enqueue/threads.db"))
    raw = baselines.RawPerEvent(ctx.path("enqueue/threads-raw.db"))

    def side(prefix: str, call: Callable[[dict[str, Any]], object]) -> Callable[[int], float]:
        def one_round(number: int) -> float:
            return rate(per_round, _threaded(call, raw_events(f"{prefix}{number}", per_round)))

        return one_round

    try:
        sides = {"ours": side("t", outbox.enqueue), "raw": side("u", raw.insert)}
        figures = paired_rounds(sides, rounds)
    finally:
        outbox.close()
        raw.close()
    return Row(
        "enqueue.threads16",
        f"enqueue 1 event/call, {THREADS} threads",
        median(figures["ours"]),
        "events/s",
        f"raw INSERT, 1 txn/event, {THREADS} threads",
        median(figures["raw"]),
        MIN_RATIO,
        3.0,
        rounds={"ours": figures["ours"], "baseline": figures["raw"]},
    )


def _batch(ctx: Context) -> list[Row]:
    batches = 2
    rounds = ctx.size(30, 6, minimum=3)
    ctx.progress(f"enqueue: batches of {BATCH}, {rounds} rounds of {batches} batches")
    outbox = Outbox(ctx.path("enqueue/batch.db"))
    validating = Outbox(ctx.path("enqueue/batch-validating.db"))
    raw = baselines.open_raw(ctx.path("enqueue/batch-raw.db"))

    def validated(prefix: str, number: int) -> list[list[Any]]:
        return [check_events(f"{prefix}{number}-{b}", BATCH) for b in range(batches)]

    def ours(number: int) -> float:
        groups = validated("b", number)
        with Stopwatch() as sw:
            for group in groups:
                outbox.enqueue_validated(group)
        return rate(batches * BATCH, sw.seconds)

    def with_validation(number: int) -> float:
        groups = [raw_events(f"v{number}-{b}", BATCH) for b in range(batches)]
        with Stopwatch() as sw:
            for group in groups:
                validating.enqueue_many(group)
        return rate(batches * BATCH, sw.seconds)

    def baseline(number: int) -> float:
        groups = validated("c", number)
        with Stopwatch() as sw:
            for group in groups:
                baselines.raw_executemany(raw, group)
        return rate(batches * BATCH, sw.seconds)

    try:
        sides = {"ours": ours, "raw": baseline, "validating": with_validation}
        figures = paired_rounds(sides, rounds)
    finally:
        outbox.close()
        validating.close()
        raw.close()
    raw_rate = median(figures["raw"])
    return [
        Row(
            "enqueue.batch",
            f"enqueue {BATCH} validated events/call",
            median(figures["ours"]),
            "events/s",
            f"raw executemany, {BATCH}/txn",
            raw_rate,
            MIN_RATIO,
            0.6,
            note="Outbox.enqueue_validated: dedupe, idempotency check, result",
            rounds={"ours": figures["ours"], "baseline": figures["raw"]},
        ),
        Row(
            "enqueue.batch.validating",
            "  same, validating (enqueue_many)",
            median(figures["validating"]),
            "events/s",
            f"raw executemany, {BATCH}/txn",
            raw_rate,
            note="validation against Dodo's contract included; no target",
            rounds={"ours": figures["validating"], "baseline": figures["raw"]},
        ),
    ]
