"""Scale benchmarks: enqueue and drain with a large outbox beside an empty one, and peak memory.

A "big" outbox is filled with a backlog of pending events (1M in the full run, 100k with `--quick`;
`--scale` shrinks both) plus what the drain rounds will take. Alternating rounds then measure, on the
big and on an empty outbox:

- enqueue: batches of 1000 validated events (`enqueue_validated`);
- drain: a fixed number of events delivered by the worker's own tick (`Worker.drain_once` until that
  many are delivered), oldest first: on the big outbox, from the head of its backlog.

Finally a child process (`python -m agent.bench.scale --memory-child ...`) drains what is left of the
big backlog, exactly the backlog size, and reports its peak RSS (`VmHWM` from /proc/self/status,
falling back to `resource.getrusage`) and its RSS before the drain began.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from agent.bench.common import (
    API_KEY,
    MAX_VALUE,
    MIN_RATIO,
    Context,
    Row,
    Stopwatch,
    check_events,
    median,
    paired_rounds,
    rate,
)
from agent.bench.drain import bench_settings, drain_with_worker, fill
from agent.bench.emulator_proc import running_emulator
from agent.delivery.client import DodoClient
from agent.delivery.worker import Worker
from agent.outbox import Outbox
from agent.store import OutboxStore, open_store

BATCH = 1000
MEMORY_LIMIT_MB = 150.0


def run(ctx: Context) -> list[Row]:
    backlog = ctx.size(1_000_000, 100_000, minimum=2000)
    rounds = ctx.size(5, 3, minimum=2)
    # A multiple of one tick's claim (2 batches of 1000), so each round takes exactly this many.
    drain_per_round = max(2000, min(20_000, backlog // 20) // 2000 * 2000)
    enqueue_batches = 2
    size_note = f"{backlog:,} rows" + (" (--quick)" if ctx.quick else "")
    big_path, empty_path = ctx.path("scale/big.db"), ctx.path("scale/empty.db")
    # The rounds take drain_total events from the backlog and add enqueue_total: what is left for the
    # memory drain at the end is then exactly `backlog`.
    drain_total = drain_per_round * (rounds + 1)  # + 1: the warm-up round
    enqueue_total = enqueue_batches * BATCH * (rounds + 1)
    filled = backlog + drain_total - enqueue_total
    ctx.progress(f"scale: filling an outbox with {filled:,} pending events")
    with Stopwatch() as filling, open_store(big_path) as store:
        fill(store, filled, "big")
    with running_emulator() as url:
        ctx.progress(f"scale: enqueue and drain, big vs empty outbox, {rounds} rounds")
        big, empty = Outbox(big_path), Outbox(empty_path)
        try:
            enqueue = paired_rounds(
                {
                    "big": _enqueue(big, "eb", enqueue_batches),
                    "empty": _enqueue(empty, "ee", enqueue_batches),
                },
                rounds,
            )
            drain = paired_rounds(
                {
                    "big": _drain(big.store, url, drain_per_round, None),
                    "empty": _drain(empty.store, url, drain_per_round, "de"),
                },
                rounds,
            )
        finally:
            big.close()
            empty.close()
        with open_store(big_path) as store:
            left = store.backlog()
        ctx.progress(f"scale: peak memory of a child process draining {left:,} events")
        memory = _memory_child(big_path, url)
    if memory["delivered"] != left:
        raise RuntimeError(f"the memory drain delivered {memory['delivered']} events of {left}")
    return [
        Row(
            "scale.enqueue",
            f"enqueue {BATCH}/call, {size_note} in outbox",
            median(enqueue["big"]),
            "events/s",
            "same, empty outbox",
            median(enqueue["empty"]),
            MIN_RATIO,
            0.5,
            note=f"batches of {BATCH}; filling took {filling.seconds:.0f} s",
            rounds={"ours": enqueue["big"], "baseline": enqueue["empty"]},
        ),
        Row(
            "scale.drain",
            f"drain, {size_note} in outbox",
            median(drain["big"]),
            "events/s",
            "same, empty outbox",
            median(drain["empty"]),
            MIN_RATIO,
            0.5,
            note=f"{drain_per_round:,} events per round, oldest first",
            rounds={"ours": drain["big"], "baseline": drain["empty"]},
        ),
        Row(
            "memory.drain",
            f"peak RSS draining {left:,} events" + (" (--quick)" if ctx.quick else ""),
            memory["peak_rss_mb"],
            "MB",
            target_kind=MAX_VALUE,
            target=MEMORY_LIMIT_MB,
            note=(
                f"RSS before draining {memory['start_rss_mb']:.0f} MB; drained at "
                f"{memory['delivered'] / memory['seconds']:,.0f} events/s"
            ),
            extra=memory,
        ),
    ]


def _enqueue(outbox: Outbox, prefix: str, batches: int) -> Any:
    def one_round(number: int) -> float:
        groups = [check_events(f"{prefix}{number}-{b}", BATCH) for b in range(batches)]
        with Stopwatch() as sw:
            for group in groups:
                outbox.enqueue_validated(group)
        return rate(batches * BATCH, sw.seconds)

    return one_round


def _drain(store: OutboxStore, url: str, count: int, fill_prefix: str | None) -> Any:
    """Deliver `count` events with the worker's tick; with `fill_prefix`, add them first (not timed)."""

    def one_round(number: int) -> float:
        if fill_prefix is not None:
            fill(store, count, f"{fill_prefix}{number}")
        settings = bench_settings(url, store.location)
        worker = Worker(
            store, settings, DodoClient.from_settings(settings), environ={"DODO_PAYMENTS_API_KEY": API_KEY}
        )
        delivered = 0
        try:
            with Stopwatch() as sw:
                while delivered < count:
                    report = worker.drain_once()
                    if not report.delivered:
                        raise RuntimeError(f"a scale drain tick delivered nothing: {report.as_dict()}")
                    delivered += report.delivered
        finally:
            worker.close()
        return rate(delivered, sw.seconds)

    return one_round


def _memory_child(outbox: Path, url: str) -> dict[str, Any]:
    command = [sys.executable, "-m", "agent.bench.scale", "--memory-child", str(outbox), url]
    done = subprocess.run(command, capture_output=True, text=True, timeout=3600, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the memory child failed ({done.returncode}): {done.stderr[-2000:]}")
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


def _status_mb(field: str) -> float | None:
    """A `VmHWM` / `VmRSS` line of /proc/self/status in MB, or None where there is no /proc."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def memory_child(outbox: Path, url: str) -> dict[str, Any]:
    """Drain `outbox` to `url` in this process; return delivered, seconds and RSS figures (MB)."""
    from agent import logs

    logs.configure("json", "warning")
    start = _status_mb("VmRSS") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    with open_store(outbox) as store:
        delivered, _ = drain_with_worker(store, url)
    peak = _status_mb("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "delivered": delivered,
        "seconds": time.perf_counter() - started,
        "peak_rss_mb": peak,
        "start_rss_mb": start,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m agent.bench.scale")
    parser.add_argument("--memory-child", nargs=2, metavar=("OUTBOX", "URL"), required=True)
    args = parser.parse_args(argv)
    outbox, url = args.memory_child
    print(json.dumps(memory_child(Path(outbox), url)), flush=True)


if __name__ == "__main__":
    main()
