"""The library API: durability, group commit under threads, several processes, the transactional outbox."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from agent import EventConflictError, InvalidEventError, Outbox, OutboxFullError
from agent.store import Store


def event(i: int | str, **meta: object) -> dict[str, object]:
    return {"event_id": f"e{i}", "customer_id": "cus_1", "event_name": "api.call", "metadata": meta or None}


def stored_ids(path: Path) -> set[str]:
    """Read with a separate plain sqlite3 connection: what is on disk, not in our cache."""
    conn = sqlite3.connect(path)
    try:
        return {r[0] for r in conn.execute("SELECT event_id FROM dodo_outbox_events")}
    finally:
        conn.close()


def test_enqueue_returns_after_commit(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    with Outbox(path) as outbox:
        result = outbox.enqueue(event(1, tokens=5))
        assert result.new == ["e1"] and result.ingested_count == 1
        assert stored_ids(path) == {"e1"}


def test_results_report_duplicates_warnings_and_late(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db") as outbox:
        outbox.enqueue(event(1))
        two_hours_ago = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 7200))
        old = event(2) | {"timestamp": two_hours_ago}
        result = outbox.enqueue_many([event(1), old, event(3, tokens="12")])
        # An event 2 hours old is late (the delivery policy decides), not refused (older than
        # [intake] max_event_age it would be: tests/test_event_age.py).
        assert result.new == ["e2", "e3"]
        assert result.duplicates == ["e1"]
        assert result.late == ["e2"]
        assert [w.path for w in result.warnings] == ["events[2].metadata.tokens"]


def test_invalid_batch_stores_nothing(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    with Outbox(path) as outbox:
        with pytest.raises(InvalidEventError) as info:
            outbox.enqueue_many([event(1), event(2) | {"customer_id": ""}])
        assert [p.path for p in info.value.problems] == ["events[1].customer_id"]
    assert stored_ids(path) == set()


def test_conflict_stores_nothing_of_the_call(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    with Outbox(path) as outbox:
        outbox.enqueue(event(1, n=1))
        with pytest.raises(EventConflictError):
            outbox.enqueue_many([event(2), event(1, n=2)])
    assert stored_ids(path) == {"e1"}


def test_group_commit_under_threads(tmp_path: Path) -> None:
    """32 threads x 50 single-event calls: every call durable, no duplicates, fewer commits than calls."""
    path = tmp_path / "o.db"
    errors: list[BaseException] = []
    with Outbox(path) as outbox:
        commits = 0
        real_insert = outbox.store.insert_groups

        def counting(groups, now_us):  # type: ignore[no-untyped-def]
            nonlocal commits
            commits += 1
            return real_insert(groups, now_us)

        outbox.store.insert_groups = counting  # type: ignore[method-assign]

        def produce(thread: int) -> None:
            try:
                for i in range(50):
                    result = outbox.enqueue(event(f"{thread}-{i}"))
                    assert result.new == [f"e{thread}-{i}"]
                    # Durable on return: visible to another connection right away.
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=produce, args=(t,)) for t in range(32)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []
    assert len(stored_ids(path)) == 32 * 50
    assert commits < 32 * 50, "concurrent calls must share transactions"


def test_group_commit_isolates_a_conflicting_call(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db") as outbox:
        outbox.enqueue(event("x", n=1))
        barrier = threading.Barrier(8)
        outcomes: dict[int, str] = {}

        def produce(i: int) -> None:
            barrier.wait()
            try:
                if i == 0:
                    outbox.enqueue(event("x", n=2))
                else:
                    outbox.enqueue(event(i))
                outcomes[i] = "ok"
            except EventConflictError:
                outcomes[i] = "conflict"

        threads = [threading.Thread(target=produce, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert outcomes[0] == "conflict"
        assert all(outcomes[i] == "ok" for i in range(1, 8))
        assert outbox.store.counts()["pending"] == 8


_PRODUCER = """
import sys
from agent import Outbox
with Outbox(sys.argv[1]) as outbox:
    for chunk in range(20):
        outbox.enqueue_many([
            {"event_id": f"p{sys.argv[2]}-{chunk}-{i}", "customer_id": "c", "event_name": "api.call"}
            for i in range(25)
        ])
"""

_DRAINER = """
import sys, time
from agent.store import Store
with Store(sys.argv[1]) as store:
    done = 0
    deadline = time.time() + 60
    while done < int(sys.argv[2]) and time.time() < deadline:
        rows = store.claim(
            now_us=int(time.time() * 1e6) + 10**9, limit=100, max_bytes=10**7, lease_us=10**8, owner="drainer"
        )
        done += store.mark_delivered([r.id for r in rows], owner="drainer", now_us=int(time.time() * 1e6))
        if not rows:
            time.sleep(0.01)
    print(done)
"""


def test_several_processes_enqueue_while_another_drains(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    Store(path).close()
    total = 4 * 20 * 25
    drainer = subprocess.Popen(
        [sys.executable, "-c", _DRAINER, str(path), str(total)], stdout=subprocess.PIPE, text=True
    )
    producers = [
        subprocess.Popen(
            [sys.executable, "-c", _PRODUCER, str(path), str(p)], stderr=subprocess.PIPE, text=True
        )
        for p in range(4)
    ]
    for proc in producers:
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
    out, _ = drainer.communicate(timeout=120)
    assert drainer.returncode == 0
    assert int(out) == total
    with Store(path) as store:
        assert store.counts() == {"pending": 0, "inflight": 0, "delivered": total, "dead": 0}


def test_transactional_outbox_commits_and_rolls_back_with_the_app(tmp_path: Path) -> None:
    app_db = tmp_path / "app.db"
    app = sqlite3.connect(app_db, isolation_level=None)
    app.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, total INTEGER)")
    outbox = Outbox(tmp_path / "unused.db")

    app.execute("BEGIN")
    app.execute("INSERT INTO orders (total) VALUES (10)")
    outbox.enqueue(event("rolled-back"), conn=app)
    app.execute("ROLLBACK")

    app.execute("BEGIN")
    app.execute("INSERT INTO orders (total) VALUES (20)")
    result = outbox.enqueue(event("committed"), conn=app)
    app.execute("COMMIT")
    app.close()
    outbox.close()
    assert result.new == ["ecommitted"]

    # The agent drains the application's own database file.
    with Store(app_db) as store:
        assert store.get("ecommitted") is not None
        assert store.get("erolled-back") is None
        assert store.counts()["pending"] == 1
    assert sqlite3.connect(app_db).execute("SELECT count(*) FROM orders").fetchone()[0] == 1


@pytest.mark.parametrize("app_version", [0, 7])
def test_the_outbox_leaves_the_apps_schema_version_alone(tmp_path: Path, app_version: int) -> None:
    """Apps version their own schema with PRAGMA user_version; the outbox in their file must not.

    Before: the agent refused an app's database at user_version 7 ("written by a newer dodo-outbox"),
    and moved one at 0 to 1, so the app's own migration 1 would have been skipped.
    """
    app_db = tmp_path / "app.db"
    app = sqlite3.connect(app_db, isolation_level=None)
    app.execute("PRAGMA journal_mode = WAL")
    app.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY)")
    app.execute(f"PRAGMA user_version = {app_version}")
    with Store(app_db):  # the agent opens the app's database before the app ever enqueued
        pass
    with Outbox(app_db) as outbox:
        app.execute("BEGIN IMMEDIATE")
        app.execute("INSERT INTO orders DEFAULT VALUES")
        outbox.enqueue(event("order-1"), conn=app)
        app.execute("COMMIT")
    with Store(app_db) as store:
        assert store.get("eorder-1") is not None
    assert app.execute("PRAGMA user_version").fetchone()[0] == app_version
    app.close()


def test_capacity_refuses_without_storing_and_recovers(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    with Outbox(path, max_events=3) as outbox:
        outbox.enqueue_many([event(1), event(2)])
        with pytest.raises(OutboxFullError, match="max_events = 3") as info:
            outbox.enqueue_many([event(3), event(4)])
        assert info.value.retry_after > 0
        assert stored_ids(path) == {"e1", "e2"}
        # Delivering frees room.
        rows = outbox.store.claim(now_us=10**18, limit=10, max_bytes=10**6, lease_us=10**9, owner="w")
        outbox.store.mark_delivered([r.id for r in rows], owner="w", now_us=1)
        outbox.wait_for_room(2, timeout=5, poll=0.05)
        assert outbox.enqueue_many([event(3), event(4)]).new == ["e3", "e4"]


def test_listeners_hear_committed_enqueues(tmp_path: Path) -> None:
    heard: list[list[str]] = []
    with Outbox(tmp_path / "o.db") as outbox:
        outbox.add_listener(lambda r: heard.append(r.new))
        outbox.enqueue(event(1))
        outbox.enqueue(event(1))
    assert heard == [["e1"], []]


def test_disk_full_refuses_cleanly_and_recovers(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    with Outbox(path) as outbox:
        outbox.enqueue(event(0))
        sqlite_store = outbox.store
        assert isinstance(sqlite_store, Store)  # the SQLite file's page limit fakes a full disk
        pages = sqlite_store.conn.execute("PRAGMA page_count").fetchone()[0]
        sqlite_store.conn.execute(f"PRAGMA max_page_count = {pages}")
        big = [event(i, blob="x" * 400) for i in range(1, 200)]
        with pytest.raises(OutboxFullError, match="disk"):
            outbox.enqueue_many(big)
        assert stored_ids(path) == {"e0"}
        sqlite_store.conn.execute("PRAGMA max_page_count = 1073741823")
        assert len(outbox.enqueue_many(big).new) == 199


def test_max_bytes_refuses_on_used_pages_and_recovers_after_pruning(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    with Outbox(path, max_bytes=200_000) as outbox:
        stored = 0
        with pytest.raises(OutboxFullError, match="max_bytes = 200000"):
            for i in range(1000):
                outbox.enqueue_many([event(f"{i}-{j}", blob="x" * 400) for j in range(10)])
                stored += 10
                outbox._backlog_checked = -1.0  # look at the file on every call in this test
        assert 0 < stored < 10_000
        assert len(stored_ids(path)) == stored  # the refused call stored nothing
        # Delivered rows pruned by retention free their pages: intake resumes.
        rows = outbox.store.claim(now_us=10**18, limit=10_000, max_bytes=10**9, lease_us=10**9, owner="w")
        outbox.store.mark_delivered([r.id for r in rows], owner="w", now_us=1)
        outbox.store.prune_delivered(10**18)
        outbox._backlog_checked = -1.0
        assert outbox.enqueue(event("after")).new == ["eafter"]
