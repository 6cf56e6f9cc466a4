"""What every benchmark shares: the result row, the run context, event factories, paired rounds.

A benchmark is a function `run(ctx) -> list[Row]`. Every figure it reports is measured beside its
baseline in the same run, and A/B rounds alternate (ours, baseline, ours, baseline, ...) so a noisy
neighbour hurts both sides alike; the figure of each side is the median of its rounds.
"""

from __future__ import annotations

import resource
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from agent.events import Event, validate_many
from agent.timestamps import format_timestamp

API_KEY = "bench_key_0123456789"
"""The key the benchmark's emulators accept (never a real key)."""
MIN_RATIO = "ratio_min"
MAX_RATIO = "ratio_max"
MIN_VALUE = "value_min"
MAX_VALUE = "value_max"
REPORT = "report"
NO_DATA = "no data"
"""`Row.missing` when a round measured nothing (e.g. no request of the load generator succeeded)."""
NOT_INSTALLED = "not installed"
"""`Row.missing` when the peer baseline's package is absent (`pip install 'dodo-outbox[bench]'`)."""
NO_POSTGRES = "no PostgreSQL"
"""`Row.missing` of the PostgreSQL group when no server was given and none could be started."""


@dataclass
class Row:
    """One line of the table: our figure beside its baseline and the target it is held to.

    `target_kind`: `ratio_min` (ours / baseline >= target), `ratio_max` (ours / baseline <= target),
    `value_min` (ours >= target), `value_max` (ours < target) or `report` (no target). `rounds`
    keeps the raw per-round figures of both sides.
    `missing` says why a figure could not be measured ("no data", "not installed"; `ours` or
    `baseline` is then None and the note says more): it stands in the verdict column, and `passed`
    is None (neither pass nor miss).
    """

    name: str
    path: str
    ours: float | None
    unit: str
    baseline_name: str | None = None
    baseline: float | None = None
    target_kind: str = REPORT
    target: float | None = None
    note: str = ""
    rounds: dict[str, list[float]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    missing: str = ""

    @property
    def ratio(self) -> float | None:
        if self.ours is None or self.baseline is None or self.baseline <= 0:
            return None
        return self.ours / self.baseline

    @property
    def passed(self) -> bool | None:
        """Whether the target is met; None when there is no target or a figure is missing."""
        if self.target is None or self.target_kind == REPORT or self.missing or self.ours is None:
            return None
        if self.target_kind == MIN_RATIO:
            ratio = self.ratio
            return ratio is not None and ratio >= self.target
        if self.target_kind == MAX_RATIO:
            ratio = self.ratio
            return ratio is not None and ratio <= self.target
        if self.target_kind == MIN_VALUE:
            return self.ours >= self.target
        return self.ours < self.target

    def target_text(self) -> str:
        if self.target is None or self.target_kind == REPORT:
            return "report"
        if self.target_kind == MIN_RATIO:
            return f">= {self.target:g}x"
        if self.target_kind == MAX_RATIO:
            return f"<= {self.target:g}x"
        if self.target_kind == MIN_VALUE:
            return f">= {self.target:,.0f} {self.unit}"
        return f"< {self.target:g} {self.unit}"

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ratio"] = self.ratio
        data["passed"] = self.passed
        data["target_text"] = self.target_text()
        return data


@dataclass
class Context:
    """One benchmark run: where to put files, how big to go, and where progress goes.

    `scale` multiplies every size (the full run is 1.0; `--quick` sets smaller base sizes and says so
    in the notes; tests pass e.g. 0.05 on top). `size(full, quick)` picks and scales a count.
    `postgres_url` is the server of the PostgreSQL group (`--postgres`); None: a throwaway cluster.
    """

    workdir: Path
    quick: bool = False
    scale: float = 1.0
    progress: Callable[[str], None] = field(default=lambda text: print(text, file=sys.stderr, flush=True))
    postgres_url: str | None = None

    def size(self, full: int, quick: int, minimum: int = 1) -> int:
        return max(minimum, int((quick if self.quick else full) * self.scale))

    def seconds(self, full: float, quick: float) -> float:
        """A duration for timed rounds; scaled down too, never below 0.3 s."""
        return max(0.3, (quick if self.quick else full) * min(1.0, self.scale * 2))

    def path(self, name: str) -> Path:
        target = self.workdir / name
        target.parent.mkdir(parents=True, exist_ok=True)
        return target


def raw_event(prefix: str, i: int, timestamp: str) -> dict[str, Any]:
    """A realistic event as a producer hands it over (an LLM call: model and token counts)."""
    return {
        "event_id": f"{prefix}-{i:010d}",
        "customer_id": f"cus_{i % 977:05d}",
        "event_name": "llm.tokens",
        "timestamp": timestamp,
        "metadata": {"model": "gpt-4o-mini", "input_tokens": 1200 + i % 300, "output_tokens": 250 + i % 50},
    }


def now_timestamp() -> str:
    return format_timestamp(datetime.now(UTC))


def raw_events(prefix: str, n: int, start: int = 0) -> list[dict[str, Any]]:
    stamp = now_timestamp()
    return [raw_event(prefix, i, stamp) for i in range(start, start + n)]


def fast_events(prefix: str, n: int, start: int = 0) -> list[Event]:
    """Valid Events built directly (no validation): for filling large backlogs quickly.

    The payload is the canonical form `check_event` produces (sorted keys, timestamp last).
    """
    moment = datetime.now(UTC)
    stamp = format_timestamp(moment)
    ts_us = round(moment.timestamp() * 1_000_000)
    events: list[Event] = []
    for i in range(start, start + n):
        raw = raw_event(prefix, i, stamp)
        payload = orjson.dumps(raw, option=orjson.OPT_SORT_KEYS).decode()
        events.append(
            Event(
                raw["event_id"],
                raw["customer_id"],
                raw["event_name"],
                stamp,
                ts_us,
                raw["metadata"],
                payload,
                False,
                False,
            )
        )
    return events


def check_events(prefix: str, n: int, start: int = 0) -> list[Event]:
    """`raw_events` validated by the product (what an intake path hands the outbox)."""
    return validate_many(raw_events(prefix, n, start), time.time())


def median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) by nearest rank; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def paired_rounds(
    sides: Mapping[str, Callable[[int], float]], rounds: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Run each side once per round, alternating, the order rotated each round; return the figures.

    Each callable gets a round number (unique across warm-up and measured rounds, so a side can name
    its events after it) and returns its figure for that round (a rate). The first `warmup` rounds
    (file growth, page cache, JIT-less first calls) are run and dropped.
    """
    names = list(sides)
    figures: dict[str, list[float]] = {name: [] for name in names}
    for number in range(warmup + rounds):
        shift = number % len(names)
        for name in names[shift:] + names[:shift]:
            figure = sides[name](number)
            if number >= warmup:
                figures[name].append(figure)
    return figures


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else 0.0


class Stopwatch:
    """`with Stopwatch() as sw: ...` then `sw.seconds` (perf_counter)."""

    def __init__(self) -> None:
        self.started = 0.0
        self.seconds = 0.0

    def __enter__(self) -> Stopwatch:
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.started


CPU_UNIT = "CPU s/M events"
"""The unit of the CPU-per-event rows: this process's user + system CPU seconds per million events."""


def process_cpu() -> float:
    """User + system CPU seconds of this process so far, every thread (children not counted)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cpu_per_million(cpu_seconds: float, events: int) -> float | None:
    """CPU seconds per million events; None when no event was counted."""
    return cpu_seconds / events * 1_000_000 if events > 0 else None
