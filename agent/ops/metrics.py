"""Every Prometheus metric of the agent, defined once, in one registry (`REGISTRY`), served by `render()`.

Naming: prefix `dodo_outbox_`, base units (seconds, bytes), `_total` on counters, labels of low
cardinality only: a label value is one of a fixed set (sources, reasons, status classes, outcomes),
never an event id or a customer id. Free-form values are folded into `other`.

Two kinds of metric:
- event counters and histograms, bumped by the code that does the work through the small functions
  below (`record_enqueued`, `record_request`, `record_settled`, ...). They count what THIS process did
  since it started; PromQL's rate()/increase() handle restarts.
- state gauges read from the outbox file on scrape by `OutboxCollector` (rows by state, the oldest
  pending event's age, the pause, success ratios over 5 min / 1 h, file size). They hold across
  restarts and include work done by other processes (e.g. `dodo-outbox dlq replay`). Reads are cheap
  (index-served counts) and cached for `CACHE_SECONDS`, so a scrape storm costs one query set.

The registry is not prometheus_client's global default: importing the agent into an application
that has its own metrics registers nothing in the application's registry.
"""

from __future__ import annotations

import math
import platform
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, Info, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agent import __version__
from agent.errors import Problem
from agent.logs import get_logger
from agent.ops.status import WINDOWS
from agent.timestamps import from_us, to_us

if TYPE_CHECKING:
    from agent.outbox import EnqueueResult
    from agent.store import OutboxStore

log = get_logger(__name__)

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
"""The Content-Type of `render()`'s output (the classic text format every Prometheus reads)."""
CACHE_SECONDS = 1.0
SOURCES = ("http", "dropdir", "library", "cli")
REJECT_REASONS = ("schema", "invalid", "duplicate_in_request", "conflict", "too_large", "malformed")
"""Why an intake refused events (the events are not stored; the producer is told)."""
REFUSAL_REASONS = ("max_events", "max_bytes", "disk_full")
"""Back-pressure: the outbox is full; nothing is stored and the producer retries later."""
STATUS_CLASSES = ("2xx", "4xx", "5xx", "none")
PAUSE_KINDS = ("auth", "no_key", "not_found")
OTHER = "other"

REGISTRY = CollectorRegistry()


def _counter(name: str, doc: str, *labels: str) -> Counter:
    return Counter(name, doc, list(labels), registry=REGISTRY)


# Counter names are given without `_total`: prometheus_client appends it.
EVENTS_RECEIVED = _counter(
    "dodo_outbox_events_received", "Valid events an intake acknowledged (new + duplicates).", "source"
)
EVENTS_DUPLICATE = _counter(
    "dodo_outbox_events_duplicate",
    "Received events whose event_id was already stored with the same content (not stored twice).",
    "source",
)
EVENTS_REJECTED = _counter(
    "dodo_outbox_events_rejected", "Events an intake refused as invalid (none stored).", "source", "reason"
)
CAPACITY_REFUSALS = _counter(
    "dodo_outbox_capacity_refusals",
    "Intake calls refused because the outbox is full (max_events, max_bytes) or the disk is.",
    "source",
    "reason",
)
REQUESTS = _counter(
    "dodo_outbox_delivery_requests",
    "Requests sent to Dodo's /events/ingest, by outcome and HTTP status class (none: no answer).",
    "outcome",
    "status_class",
)
EVENTS_DELIVERED = _counter("dodo_outbox_events_delivered", "Events Dodo accepted and the outbox settled.")
EVENTS_RETRIED = _counter("dodo_outbox_events_retried", "Events put back to pending for a later attempt.")
EVENTS_DEAD = _counter("dodo_outbox_events_dead_lettered", "Events moved to the dead-letter queue.", "reason")
EVENTS_RESTAMPED = _counter(
    "dodo_outbox_events_restamped", "Delivered events sent without their timestamp (past Dodo's window)."
)
DODO_DUPLICATES = _counter(
    "dodo_outbox_dodo_duplicates_ignored",
    "Delivered events Dodo did not count (ingested_count below the batch size): already ingested.",
)
PRUNED = _counter(
    "dodo_outbox_retention_pruned_rows", "Rows deleted by the retention job (events, requests).", "table"
)
REQUEST_DURATION = Histogram(
    "dodo_outbox_request_duration_seconds",
    "Time for one request to Dodo, until the answer (or the timeout).",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    registry=REGISTRY,
)
DELIVERY_LATENCY = Histogram(
    "dodo_outbox_delivery_latency_seconds",
    "Time from enqueue to delivered, per event.",
    buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400),
    registry=REGISTRY,
)
BATCH_SIZE = Histogram(
    "dodo_outbox_batch_size_events",
    "Events per request to Dodo.",
    buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000),
    registry=REGISTRY,
)
BUILD_INFO = Info("dodo_outbox_build", "The running dodo-outbox version.", registry=REGISTRY)
BUILD_INFO.info({"version": __version__, "python": platform.python_version()})

# Series that exist from the start read 0 instead of being absent, so increase() and rate() see the
# first event too, and dashboards show 0 rather than "no data".
for _source in SOURCES:
    EVENTS_RECEIVED.labels(_source)
    EVENTS_DUPLICATE.labels(_source)
for _reason in ("rejected", "too_large", "expired"):
    EVENTS_DEAD.labels(_reason)
REQUESTS.labels("delivered", "2xx")


def _one_of(value: str | None, allowed: Iterable[str]) -> str:
    return value if value is not None and value in allowed else OTHER


def status_class(status: int | None) -> str:
    """`2xx`, `4xx`, `5xx` for those statuses, `none` for no answer, `other` for anything else."""
    if status is None:
        return "none"
    label = f"{status // 100}xx"
    return label if label in STATUS_CLASSES else OTHER


def reason_label(reason: str | None) -> str:
    """A dead-letter reason as a label: `rejected`, `too_large`, `expired`, `http_<status>`, ... or `other`
    (anything long or oddly shaped, so a free-text reason can never explode the series count)."""
    if not reason:
        return "unknown"
    ok = len(reason) <= 32 and reason.replace("_", "").isalnum() and reason.islower()
    return reason if ok else OTHER


# -- intake ----------------------------------------------------------------------------------------


def record_enqueued(result: EnqueueResult) -> None:
    """One committed enqueue call (an `Outbox` listener: `outbox.add_listener(record_enqueued)`)."""
    source = _one_of(result.source, SOURCES)
    EVENTS_RECEIVED.labels(source).inc(len(result.new) + len(result.duplicates))
    if result.duplicates:
        EVENTS_DUPLICATE.labels(source).inc(len(result.duplicates))


def record_rejected(source: str, reason: str, n: int = 1) -> None:
    """`n` events refused as invalid by an intake; `reason` one of REJECT_REASONS (else `other`)."""
    if n > 0:
        EVENTS_REJECTED.labels(_one_of(source, SOURCES), _one_of(reason, REJECT_REASONS)).inc(n)


def record_refused(source: str, reason: str) -> None:
    """One intake call refused for capacity; `reason` one of REFUSAL_REASONS (else `other`)."""
    CAPACITY_REFUSALS.labels(_one_of(source, SOURCES), _one_of(reason, REFUSAL_REASONS)).inc()


def refusal_reason(exc: BaseException | str) -> str:
    """The REFUSAL_REASONS value for an OutboxFullError (or its message): which limit was hit."""
    text = str(exc)
    if "max_bytes" in text:
        return "max_bytes"
    if "max_events" in text:
        return "max_events"
    return "disk_full"


_HTTP_CODES = {
    "UNPROCESSABLE_ENTITY": "schema",
    "BAD_REQUEST": "invalid",
    "DUPLICATE_EVENT_ID": "duplicate_in_request",
    "EVENT_CONFLICT": "conflict",
    "PAYLOAD_TOO_LARGE": "too_large",
}


def record_http_refusal(code: str, message: str, problems: Sequence[Problem] = ()) -> None:
    """An error answer of the HTTP intake, by its code: a refusal of events (counted as rejected, one
    per event named in `problems`, at least 1), a full outbox (a capacity refusal), or neither (a bad
    token, a slow body: not about events, not counted)."""
    if code == "OUTBOX_FULL":
        record_refused("http", refusal_reason(message))
    elif code in _HTTP_CODES:
        events = {p.path.split(".", 1)[0] for p in problems if p.path.startswith("events[")}
        record_rejected("http", _HTTP_CODES[code], max(1, len(events)))


# -- delivery --------------------------------------------------------------------------------------


def record_request(outcome: str, status: int | None, duration_s: float, batch_size: int) -> None:
    """One request to Dodo: `outcome` is `backoff.Outcome`'s value (`delivered`, `retry`, ...)."""
    REQUESTS.labels(outcome, status_class(status)).inc()
    REQUEST_DURATION.observe(max(0.0, duration_s))
    BATCH_SIZE.observe(batch_size)


def record_settled(
    *,
    delivered: int = 0,
    retried: int = 0,
    dead: int = 0,
    reason: str | None = None,
    restamped: int = 0,
    ignored_duplicates: int = 0,
) -> None:
    """Rows settled by one (sub-)batch. `reason` labels `dead` (a dead-letter reason, see reason_label)."""
    if delivered:
        EVENTS_DELIVERED.inc(delivered)
    if retried:
        EVENTS_RETRIED.inc(retried)
    if dead:
        EVENTS_DEAD.labels(reason_label(reason)).inc(dead)
    if restamped:
        EVENTS_RESTAMPED.inc(restamped)
    if ignored_duplicates:
        DODO_DUPLICATES.inc(ignored_duplicates)


def observe_latencies(enqueued_at_us: Iterable[int], now: float) -> None:
    """Enqueue-to-delivered times of events delivered at `now` (epoch seconds)."""
    for enqueued in enqueued_at_us:
        DELIVERY_LATENCY.observe(max(0.0, now - from_us(enqueued)))


def record_pruned(table: str, rows: int) -> None:
    """Rows the retention job deleted from `table` (`events` or `requests`)."""
    if rows:
        PRUNED.labels(table).inc(rows)


# -- state read from the outbox on scrape ----------------------------------------------------------


def _gauge(name: str, doc: str, labels: Iterable[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=list(labels))


class OutboxCollector(Collector):
    """Gauges read from one outbox on scrape, cached for CACHE_SECONDS. Never raises: an unreadable
    outbox yields `dodo_outbox_outbox_up 0` and nothing else, so /metrics keeps answering."""

    def __init__(
        self, store: OutboxStore, max_events: int | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.max_events = max_events
        self.clock = clock
        self._lock = threading.Lock()
        self._cached: tuple[float, list[Metric]] | None = None

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            now = time.monotonic()
            if self._cached is None or now - self._cached[0] >= CACHE_SECONDS:
                self._cached = (now, self._read())
            return iter(self._cached[1])

    def _read(self) -> list[Metric]:
        up = _gauge("dodo_outbox_outbox_up", "1 when the outbox file could be read on this scrape.")
        try:
            found = self._families()
        except Exception as exc:  # closed, locked, corrupt (OutboxError): never fail a scrape
            _log_failure(exc)
            up.add_metric([], 0)
            return [up]
        up.add_metric([], 1)
        return [up, *found]

    def _families(self) -> list[Metric]:
        from agent.ops import dbmetrics, status  # they import the store: late, to keep this module light
        from agent.ops.fleet import agents_by_state

        store, now = self.store, self.clock()
        rows = _gauge("dodo_outbox_events", "Rows in the outbox by state.", ["state"])
        for state, count in store.counts().items():
            rows.add_metric([state], count)
        oldest = store.oldest_pending_ts_us()
        age = _gauge(
            "dodo_outbox_oldest_pending_age_seconds",
            "Age (by event time) of the oldest undelivered event; 0 when none. Dodo refuses > 3600.",
        )
        age.add_metric([], 0.0 if oldest is None else max(0.0, now - from_us(oldest)))
        pause = status.read_pause(store)
        paused = _gauge("dodo_outbox_delivery_paused", "1 while delivery is paused, with why.", ["reason"])
        paused.add_metric([pause_label(pause)], 0 if pause is None else 1)
        families: list[Metric] = [rows, age, paused]
        agents = _gauge("dodo_outbox_agents", "Agents working on the outbox, by state.", ["state"])
        for state, count in agents_by_state(store).items():
            agents.add_metric([state], count)
        families.append(agents)
        delivery = _gauge(
            "dodo_outbox_delivery_success_ratio",
            "Events delivered / (delivered + dead-lettered) over the window; NaN when none settled.",
            ["window"],
        )
        request = _gauge(
            "dodo_outbox_request_success_ratio",
            "2xx requests / all requests to Dodo over the window; NaN when none were sent.",
            ["window"],
        )
        for name, rates in zip(WINDOWS, store.window_rates(to_us(now), tuple(WINDOWS.values())), strict=True):
            delivery.add_metric([name], _nan(rates.delivery_success_ratio))
            request.add_metric([name], _nan(rates.request_success_ratio))
        families += [delivery, request]
        stats = store.file_stats()
        size = _gauge("dodo_outbox_database_size_bytes", "Size of the outbox file (pages × page size).")
        size.add_metric([], stats.size_bytes)
        free = _gauge("dodo_outbox_database_free_bytes", "Free pages in the outbox file, in bytes.")
        free.add_metric([], stats.free_bytes)
        families += [size, free, *dbmetrics.families(store)]
        if self.max_events is not None:
            cap = _gauge(
                "dodo_outbox_max_events", "[outbox] max_events: the backlog at which intake refuses."
            )
            cap.add_metric([], self.max_events)
            families.append(cap)
        return families


def _nan(value: float | None) -> float:
    return math.nan if value is None else value


def pause_label(pause: dict[str, object] | None) -> str:
    """The `reason` label of the pause gauge: `auth` (Dodo refused the key), `no_key` (none is
    configured or readable), `not_found` (the base URL answers 404), `other`, or '' when running.

    Taken from the pause's `kind` when the worker recorded one, else read from its sentence.
    """
    if pause is None:
        return ""
    kind = pause.get("kind")
    if isinstance(kind, str) and kind in PAUSE_KINDS:
        return kind
    text = str(pause.get("reason") or "")
    if "404" in text:
        return "not_found"
    if "refused the API key" in text or "HTTP 401" in text or "HTTP 403" in text:
        return "auth"
    if "key" in text:
        return "no_key"
    return OTHER


def _log_failure(exc: BaseException) -> None:
    log.warning("metrics_outbox_unreadable", error=str(exc))


_watched: dict[str, OutboxCollector] = {}
_watch_lock = threading.RLock()


def watch_store(
    store: OutboxStore, max_events: int | None = None, clock: Callable[[], float] = time.time
) -> None:
    """Serve the outbox gauges of `store` from REGISTRY (replacing any store watched before)."""
    with _watch_lock:
        unwatch_store()
        collector = OutboxCollector(store, max_events, clock)
        REGISTRY.register(collector)
        _watched["current"] = collector


def unwatch_store() -> None:
    """Stop serving outbox gauges (the agent is stopping)."""
    with _watch_lock:
        old = _watched.pop("current", None)
        if old is not None:
            REGISTRY.unregister(old)


def render() -> bytes:
    """The whole registry in the Prometheus text format (serve it with Content-Type CONTENT_TYPE)."""
    return generate_latest(REGISTRY)


def sample(name: str, labels: dict[str, str] | None = None) -> float | None:
    """One sample's current value from REGISTRY (for tests and `status`), or None if absent."""
    return REGISTRY.get_sample_value(name, labels or {})
