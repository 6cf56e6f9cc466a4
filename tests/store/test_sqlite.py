"""The SQLite backend's own mechanics: pragmas, WAL, schema versions and migrations, damage, the claim index.

Behaviour every backend shares (transitions, leases, idempotency, DLQ, retention, stats) is in the
conformance suite beside this file; these tests build SqliteStore directly and read the file with sqlite3.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.errors import OutboxCorruptError
from agent.events import Event, validate_many
from agent.store import SCHEMA_VERSION, SqliteStore, Store, StoreOptions, migrate, open_store
from agent.store.sqlite import schema

NOW = time.time()
US = 1_000_000


def events(*ids: str, now: float = NOW, **meta: object) -> list[Event]:
    return validate_many(
        [
            {"event_id": i, "customer_id": "cus_1", "event_name": "api.call", "metadata": meta or None}
            for i in ids
        ],
        now,
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """The SQLite store itself (not the conformance suite's backend-parametrised one)."""
    with Store(tmp_path / "outbox.db") as s:
        yield s


def raw(store: Store) -> sqlite3.Connection:
    return sqlite3.connect(store.path)


def test_pragmas_and_schema_version(store: Store) -> None:
    conn = raw(store)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    version = conn.execute("SELECT value FROM dodo_outbox_kv WHERE key = 'schema_version'").fetchone()
    assert version == (str(SCHEMA_VERSION),)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 0  # an app's, when it shares the file
    assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental
    assert store.conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_synchronous_normal_is_configurable(tmp_path: Path) -> None:
    with Store(tmp_path / "n.db", StoreOptions(synchronous="normal")) as s:
        assert s.conn.execute("PRAGMA synchronous").fetchone()[0] == 1


def test_reopen_keeps_rows_and_does_not_migrate_twice(tmp_path: Path) -> None:
    with Store(tmp_path / "o.db") as s:
        s.insert_groups([(events("a"), "cli")], 1)
    with Store(tmp_path / "o.db") as s:
        assert s.counts()["pending"] == 1


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    with Store(tmp_path / "o.db"):
        pass
    conn = sqlite3.connect(tmp_path / "o.db")
    with conn:
        sql = "UPDATE dodo_outbox_kv SET value = ? WHERE key = 'schema_version'"
        conn.execute(sql, (SCHEMA_VERSION + 1,))
    conn.close()
    with pytest.raises(Exception, match="newer dodo-outbox"):
        Store(tmp_path / "o.db")


def test_a_file_from_before_the_version_row_opens_with_its_rows(tmp_path: Path) -> None:
    """Outbox files written while the version lived in PRAGMA user_version (= 1) have no version row."""
    conn = sqlite3.connect(tmp_path / "o.db")
    with conn:
        for statement in schema._statements(schema.MIGRATIONS[0]):  # exactly what a v1 outbox holds
            conn.execute(statement)
        conn.execute("PRAGMA user_version = 1")
        conn.execute(
            "INSERT INTO dodo_outbox_events (event_id, event_name, ts, payload, enqueued_at) "
            "VALUES ('a1', 'n', 1, '{}', 1)"
        )
    conn.close()
    with Store(tmp_path / "o.db") as s:
        assert s.counts()["pending"] == 1
        assert s.kv_get("schema_version") is not None


def test_garbage_file_is_reported_as_corrupt_with_advice(tmp_path: Path) -> None:
    path = tmp_path / "bad.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(OutboxCorruptError, match="doctor"):
        Store(path)


def test_claim_uses_the_claim_index(store: Store) -> None:
    plan = " ".join(store.explain_claim())
    assert "USING INDEX dodo_outbox_claim" in plan
    assert "TEMP B-TREE" not in plan  # no sort: the index gives event-time order


def test_file_stats_count_pages_and_vacuum_gives_free_ones_back(store: Store) -> None:
    store.insert_groups([(events(*[f"e{i:04d}" for i in range(2000)], pad="x" * 200), "cli")], 1)
    full = store.file_stats()
    assert full.page_size > 0 and full.size_bytes == full.page_size * full.page_count
    assert store.prune_delivered(1 << 62) == 0  # nothing delivered: nothing freed
    with store.write() as conn:
        conn.execute("DELETE FROM dodo_outbox_events")
    assert store.file_stats().freelist_count > 0
    assert store.incremental_vacuum() > 0
    after = store.file_stats()
    assert after.freelist_count == 0 and after.page_count < full.page_count


def test_open_store_gives_the_sqlite_backend_for_a_path(tmp_path: Path) -> None:
    with open_store(tmp_path / "f.db") as opened:
        assert isinstance(opened, SqliteStore) and opened.path == tmp_path / "f.db"
    assert opened.closed


def test_leases_follow_the_callers_clock_and_its_repair(store: Store) -> None:
    """SQLite (one agent per file) times leases by the caller's `now_us`, so a step back of that
    clock is repaired on leases too (PostgreSQL: tests/store/test_postgres_leases.py)."""
    now = int(NOW * US)
    store.insert_groups([(events("r", "l", "c"), "cli")], 1)
    rows = {
        c.event_id: c
        for c in store.claim(now_us=now, limit=2, max_bytes=1 << 20, lease_us=100 * US, owner="w")
    }
    assert store.get("l") is not None and store.get("l").lease_until_us == now + 100 * US  # type: ignore[union-attr]
    assert store.release_expired(now + 99 * US) == 0
    store.mark_retry([rows["r"].id], owner="w", next_attempt_us=now + 600 * US, error="503")
    assert store.shift_back(now_us=now, step_us=300 * US) == 2  # the retry and the lease
    leased = store.get("l")
    assert leased is not None and leased.lease_until_us == now  # never before now
    store.claim(now_us=now, limit=1, max_bytes=1 << 20, lease_us=10**4 * US, owner="w")
    assert store.cap_future(now_us=now, max_delay_us=3600 * US, lease_us=60 * US) == 1  # "c"'s lease
    capped = store.get("c")
    assert capped is not None and capped.lease_until_us == now + 60 * US


def test_migrate_reports_the_version_an_older_file_was_brought_from(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "o.db")
    with conn:
        for statement in schema._statements(schema.MIGRATIONS[0]):  # a v1 outbox
            conn.execute(statement)
    conn.close()
    assert migrate(tmp_path / "o.db") == (1, SCHEMA_VERSION)
    assert migrate(tmp_path / "o.db") == (SCHEMA_VERSION, SCHEMA_VERSION)
