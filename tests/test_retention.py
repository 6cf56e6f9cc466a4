"""Retention: prunes only delivered rows (and the request log) past retention, in chunks, and the file's
free pages go back to the file system."""

from __future__ import annotations

from pathlib import Path

from agent.config import OutboxSettings, Settings
from agent.ops.retention import run_retention
from agent.store import Store
from tests.ops_helpers import NOW, add_dead, add_delivered, add_pending, us

HOUR = 3600.0


def settings(hours: float) -> Settings:
    return Settings(outbox=OutboxSettings(delivered_retention_hours=hours))


def ids(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{i:05d}" for i in range(n)]


def test_prunes_only_delivered_rows_past_retention(tmp_path: Path) -> None:
    with Store(tmp_path / "o.db") as store:
        for start in range(0, 2500, 1000):  # one claim takes at most 1000 rows
            add_delivered(store, ids("old", 2500)[start : start + 1000], now=NOW - 5 * HOUR)
        add_delivered(store, ids("new", 10), now=NOW - 1 * HOUR)
        add_dead(store, ids("dead", 5), now=NOW - 50 * HOUR)
        add_pending(store, ids("pend", 5), now=NOW - 50 * HOUR)
        for hours_ago in (0.5, 2.5, 6):
            store.record_request(
                now_us=us(NOW - hours_ago * HOUR), status=200, outcome="delivered", events=1, delivered=1
            )

        # Bounded: at most max_chunks transactions of `chunk` rows per call; the next call continues.
        assert store.prune_delivered(us(NOW - 4 * HOUR), chunk=1000, max_chunks=2) == 2000
        report = run_retention(store, settings(4), NOW, chunk=200)
        assert report.delivered_pruned == 500
        assert store.counts() == {"pending": 5, "inflight": 0, "delivered": 10, "dead": 5}
        assert store.get("old00000") is None and store.get("new00000") is not None
        assert report.requests_pruned == 1  # the 6 h old one; 2.5 h is within 4 h

        # A short retention still keeps REQUEST_LOG_MIN_HOURS of request log (status reads the last hour).
        report = run_retention(store, settings(0), NOW)
        assert report.delivered_pruned == 10 and report.requests_pruned == 1
        assert store.window_rates(us(NOW), (3600,))[0].requests == 1
        assert store.counts()["dead"] == 5 and store.counts()["pending"] == 5


def test_free_pages_are_given_back(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    with Store(path) as store:
        note = "x" * 450
        for start in range(0, 3000, 1000):
            add_delivered(store, ids("big", 3000)[start : start + 1000], now=NOW - 48 * HOUR, note=note)
        full = store.file_stats()
        report = run_retention(store, settings(24), NOW, vacuum=False)
        assert report.delivered_pruned == 3000 and report.pages_freed == 0
        freed_but_kept = store.file_stats()
        assert freed_but_kept.freelist_count > 200
        assert freed_but_kept.page_count == full.page_count

        report = run_retention(store, settings(24), NOW)
        after = store.file_stats()
        assert report.pages_freed >= freed_but_kept.freelist_count - 5
        assert after.freelist_count < freed_but_kept.freelist_count
        assert after.page_count < full.page_count - 200
        assert report.bytes_freed == report.pages_freed * after.page_size
        store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert path.stat().st_size < full.size_bytes // 2  # the file itself shrank
