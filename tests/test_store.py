"""The outbox file: schema, guarded transitions, leases, idempotency, atomic batches, the claim index."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from agent.errors import EventConflictError, OutboxCorruptError
from agent.events import Event, validate_many
from agent.store import SCHEMA_VERSION, Store, StoreOptions
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


def test_enqueue_is_idempotent_and_conflicts_are_refused(store: Store) -> None:
    [first] = store.insert_groups([(events("a", "b"), "cli")], 1)
    assert not isinstance(first, Exception) and first.new == ["a", "b"]
    [again] = store.insert_groups([(events("a", "b", now=NOW + 5), "cli")], 2)
    assert not isinstance(again, Exception)
    assert again.new == [] and again.duplicates == ["a", "b"]
    [conflict] = store.insert_groups([(events("c", "a", n=2), "cli")], 3)
    assert isinstance(conflict, EventConflictError) and conflict.event_ids == ("a",)
    assert "never be billed" in str(conflict)
    # Atomic: the new event "c" of the refused call was not stored either.
    assert store.get("c") is None
    assert store.counts()["pending"] == 2


def test_groups_are_atomic_each_on_its_own(store: Store) -> None:
    store.insert_groups([(events("a"), "cli")], 1)
    results = store.insert_groups(
        [(events("x1", "x2"), "http"), (events("y1", "a", n=9), "http"), (events("z1"), "dropdir")], 2
    )
    assert [type(r).__name__ for r in results] == ["InsertResult", "EventConflictError", "InsertResult"]
    assert store.get("x2") is not None and store.get("z1") is not None
    assert store.get("y1") is None
    record = store.get("z1")
    assert record is not None and record.source == "dropdir"


def test_repeats_inside_one_call(store: Store) -> None:
    [result] = store.insert_groups([(events("a", "a"), "cli")], 1)
    assert not isinstance(result, Exception) and result.new == ["a"] and result.duplicates == ["a"]
    [bad] = store.insert_groups([(events("b") + events("b", n=1), "cli")], 1)
    assert isinstance(bad, EventConflictError)


def test_claim_order_leases_and_attempts(store: Store) -> None:
    store.insert_groups([(events("new", now=NOW), "cli")], 1)
    store.insert_groups([(events("old", now=NOW - 600), "cli")], 2)
    claimed = store.claim(now_us=int(NOW * US), limit=10, max_bytes=10**6, lease_us=30 * US, owner="w1")
    assert [c.event_id for c in claimed] == ["old", "new"]
    assert [c.attempts for c in claimed] == [1, 1]
    assert store.counts()["inflight"] == 2
    assert store.claim(now_us=int(NOW * US), limit=10, max_bytes=10**6, lease_us=30 * US, owner="w2") == []


def test_claim_respects_byte_budget_but_always_takes_one(store: Store) -> None:
    store.insert_groups([(events("a", "b", "c"), "cli")], 1)
    size = len(store.get("a").payload) + 1  # type: ignore[union-attr]
    assert (
        len(store.claim(now_us=int(NOW * US), limit=10, max_bytes=size * 2, lease_us=30 * US, owner="w")) == 2
    )
    assert len(store.claim(now_us=int(NOW * US), limit=10, max_bytes=1, lease_us=30 * US, owner="w")) == 1


def test_claim_skips_rows_not_yet_due(store: Store) -> None:
    store.insert_groups([(events("a"), "cli")], 1)
    [row] = store.claim(now_us=int(NOW * US), limit=10, max_bytes=10**6, lease_us=30 * US, owner="w")
    assert (
        store.mark_retry(
            [row.id], owner="w", next_attempt_us=int((NOW + 60) * US), error="503 Service Unavailable"
        )
        == 1
    )
    assert (
        store.claim(now_us=int((NOW + 59) * US), limit=10, max_bytes=10**6, lease_us=30 * US, owner="w") == []
    )
    [again] = store.claim(now_us=int((NOW + 61) * US), limit=10, max_bytes=10**6, lease_us=30 * US, owner="w")
    assert again.attempts == 2
    assert store.get("a").last_error == "503 Service Unavailable"  # type: ignore[union-attr]


def test_refund_gives_the_attempt_back(store: Store) -> None:
    store.insert_groups([(events("a"), "cli")], 1)
    [row] = store.claim(now_us=int(NOW * US), limit=10, max_bytes=10**6, lease_us=30 * US, owner="w")
    store.mark_retry([row.id], owner="w", next_attempt_us=0, error="401: key refused", refund=True)
    assert store.get("a").attempts == 0  # type: ignore[union-attr]


def test_stale_worker_cannot_move_a_delivered_row(store: Store) -> None:
    store.insert_groups([(events("a"), "cli")], 1)
    now = int(NOW * US)
    [row] = store.claim(now_us=now, limit=10, max_bytes=10**6, lease_us=1 * US, owner="stale")
    # The stale worker's lease expires; another worker takes the row over and delivers it.
    assert store.release_expired(now + 2 * US) == 1
    [taken] = store.claim(now_us=now + 2 * US, limit=10, max_bytes=10**6, lease_us=30 * US, owner="fresh")
    assert taken.attempts == 2
    assert store.mark_delivered([taken.id], owner="fresh", now_us=now + 3 * US) == 1
    # The stale worker wakes up and tries every transition: none applies.
    assert store.mark_retry([row.id], owner="stale", next_attempt_us=now, error="late") == 0
    assert (
        store.mark_dead(
            [row.id], owner="stale", now_us=now, reason="rejected", http_status=400, response="{}"
        )
        == 0
    )
    assert store.mark_delivered([row.id], owner="stale", now_us=now) == 0
    assert store.get("a").state == "delivered"  # type: ignore[union-attr]
    # Nor can anyone settle a delivered row again.
    assert (
        store.mark_dead(
            [taken.id], owner="fresh", now_us=now, reason="rejected", http_status=400, response="{}"
        )
        == 0
    )


def test_release_expired_only_touches_expired_leases(store: Store) -> None:
    store.insert_groups([(events("a", "b"), "cli")], 1)
    now = int(NOW * US)
    store.claim(now_us=now, limit=1, max_bytes=10**6, lease_us=10 * US, owner="w1")
    store.claim(now_us=now, limit=1, max_bytes=10**6, lease_us=100 * US, owner="w2")
    assert store.release_expired(now + 50 * US) == 1
    assert store.counts() == {"pending": 1, "inflight": 1, "delivered": 0, "dead": 0}


def test_dead_rows_keep_reason_status_and_bounded_response(store: Store) -> None:
    store.insert_groups([(events("a"), "cli")], 1)
    [row] = store.claim(now_us=int(NOW * US), limit=10, max_bytes=10**6, lease_us=30 * US, owner="w")
    store.mark_dead(
        [row.id], owner="w", now_us=int(NOW * US), reason="rejected", http_status=422, response="x" * 10_000
    )
    record = store.get("a")
    assert record is not None
    assert (record.state, record.reason, record.http_status) == ("dead", "rejected", 422)
    assert record.response is not None and 0 < len(record.response) <= 2000


def test_counts_and_oldest_pending(store: Store) -> None:
    assert store.oldest_pending_ts_us() is None
    oldest = events("a", now=NOW - 100)
    store.insert_groups([(oldest, "cli"), (events("b", now=NOW - 50), "cli")], 1)
    assert store.oldest_pending_ts_us() == oldest[0].ts_us
    store.claim(now_us=int(NOW * US), limit=1, max_bytes=10**6, lease_us=30 * US, owner="w")
    # The oldest is inflight now: still undelivered, still counted.
    assert store.oldest_pending_ts_us() == oldest[0].ts_us
    assert store.backlog() == 2
