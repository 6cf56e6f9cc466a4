"""The retention job: prune delivered rows and the request log, then give free pages back to the disk.

Scheduled by the service (every few minutes; never overlapping itself). What it deletes:
- delivered rows settled more than `[outbox] delivered_retention_hours` ago (kept until then for
  per-event lookup and audit);
- request-log rows older than the same retention, but never younger than REQUEST_LOG_MIN_HOURS:
  `status` and the success-ratio gauges read the last hour from that log.
Never pending, inflight or dead rows: dead rows leave only by `dlq replay` or `dlq purge`.

Deletes run in chunks of `agent.store.dlq.CHUNK_ROWS` rows, one short transaction each, so intake and
delivery keep writing between them. Afterwards `PRAGMA incremental_vacuum` returns free pages to the
file system, so the outbox file shrinks after a backlog is delivered instead of staying at its
high-water mark. Drop-directory files (done/) are the drop directory's own job.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from agent.config import Settings
from agent.logs import get_logger
from agent.ops import metrics
from agent.store import OutboxStore
from agent.timestamps import to_us

log = get_logger(__name__)

REQUEST_LOG_MIN_HOURS = 2.0


@dataclass(frozen=True, slots=True)
class RetentionReport:
    """What one run did. `pages_freed` × `page_size` is what the file shrank by."""

    delivered_pruned: int
    requests_pruned: int
    pages_freed: int
    page_size: int
    duration_seconds: float

    @property
    def bytes_freed(self) -> int:
        return self.pages_freed * self.page_size


def run_retention(
    store: OutboxStore, settings: Settings, now: float, *, chunk: int | None = None, vacuum: bool = True
) -> RetentionReport:
    """Prune what retention allows at `now` (epoch seconds), then reclaim free pages.

    `chunk` overrides the rows per transaction (tests). Raises OutboxError / OutboxFullError like any
    write; the scheduler logs it and the next run continues where this one stopped.
    """
    started = time.monotonic()
    now_us = to_us(now)
    hours = settings.outbox.delivered_retention_hours
    sizes = {} if chunk is None else {"chunk": chunk}
    delivered = store.prune_delivered(now_us - to_us(hours * 3600), **sizes)
    requests_cutoff = now_us - to_us(max(hours, REQUEST_LOG_MIN_HOURS) * 3600)
    requests = store.prune_requests(requests_cutoff, **sizes)
    freed = store.incremental_vacuum() if vacuum else 0
    report = RetentionReport(
        delivered, requests, freed, store.file_stats().page_size, round(time.monotonic() - started, 3)
    )
    metrics.record_pruned("events", delivered)
    metrics.record_pruned("requests", requests)
    if delivered or requests or freed:
        log.info(
            "retention_pruned",
            delivered=delivered,
            requests=requests,
            pages_freed=freed,
            bytes_freed=report.bytes_freed,
            duration_s=report.duration_seconds,
            retention_hours=hours,
        )
    return report
