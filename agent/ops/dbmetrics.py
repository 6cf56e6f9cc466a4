"""The database gauges of the outbox collector (agent/ops/metrics.py `OutboxCollector`): dead and live
row versions of the hot events table and the age of the oldest open transaction on the database.

Read on scrape from `OutboxStore.vacuum_health()` (two small catalog queries, cached with the other
gauges); a backend that reports None (SQLite) has no such gauges. Alert on them with the thresholds
`status` warns at (agent/ops/dbhealth.py): dead > live and > 10,000, or a transaction older than 300 s.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client.metrics_core import GaugeMetricFamily, Metric

if TYPE_CHECKING:
    from agent.store import OutboxStore


def families(store: OutboxStore) -> list[Metric]:
    health = store.vacuum_health()
    if health is None:
        return []
    dead = GaugeMetricFamily(
        "dodo_outbox_dead_tuples",
        "Dead row versions in the outbox's events table (PostgreSQL), waiting for vacuum.",
    )
    dead.add_metric([], health.dead_tuples)
    live = GaugeMetricFamily(
        "dodo_outbox_live_tuples", "Live rows in the outbox's events table (PostgreSQL), as vacuum counts."
    )
    live.add_metric([], health.live_tuples)
    oldest = GaugeMetricFamily(
        "dodo_outbox_oldest_transaction_age_seconds",
        "Age of the oldest open transaction on the outbox's database (PostgreSQL); 0 when none. "
        "While it is open, vacuum cannot reclaim dead rows.",
    )
    oldest.add_metric([], health.oldest_transaction_age_seconds or 0.0)
    return [dead, live, oldest]
