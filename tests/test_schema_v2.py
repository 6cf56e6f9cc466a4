"""Schema V2 (original_ts, for `dlq replay --restamp`): a v1 file is migrated in place, and the
transactional outbox creates the current schema on an application's database (issue 11)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from agent.events import validate_many
from agent.outbox import Outbox
from agent.store import SCHEMA_VERSION, Store
from agent.store.sqlite import schema

NOW = time.time()


def columns(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {row[1] for row in conn.execute("PRAGMA table_info(dodo_outbox_events)")}


def test_a_v1_file_is_migrated_keeping_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    conn = sqlite3.connect(path, isolation_level=None)
    for statement in schema._statements(schema.MIGRATIONS[0]):  # exactly what dodo-outbox v1 wrote
        conn.execute(statement)
    conn.execute("PRAGMA user_version = 1")
    [event] = validate_many([{"event_id": "old", "customer_id": "c", "event_name": "n"}], NOW)
    conn.execute(
        "INSERT INTO dodo_outbox_events (event_id, event_name, ts, payload, stamped, restamped, enqueued_at, "
        "last_error) VALUES (?, ?, ?, ?, 1, 0, ?, 'x')",
        (event.event_id, event.event_name, event.ts_us, event.payload, event.ts_us),
    )
    conn.close()
    assert "original_ts" not in columns(path)
    with Store(path) as store:
        record = store.get("old")
        assert record is not None and record.original_ts_us is None and record.last_error == "x"
        assert record.as_document()["original_timestamp"] is None
    assert "original_ts" in columns(path)
    with sqlite3.connect(path) as check:
        row = check.execute("SELECT value FROM dodo_outbox_kv WHERE key = 'schema_version'").fetchone()
        assert row == (str(SCHEMA_VERSION),) and SCHEMA_VERSION >= 2


def test_the_transactional_outbox_creates_the_current_schema(tmp_path: Path) -> None:
    app_db = tmp_path / "app.db"
    app = sqlite3.connect(app_db, isolation_level=None)
    app.execute("PRAGMA user_version = 7")  # the application's own schema version, not ours
    with Outbox(tmp_path / "unused.db") as outbox:
        app.execute("BEGIN")
        outbox.enqueue({"event_id": "e1", "customer_id": "c", "event_name": "n"}, conn=app)
        app.execute("COMMIT")
    app.close()
    assert "original_ts" in columns(app_db)
    with sqlite3.connect(app_db) as check:
        assert check.execute("PRAGMA user_version").fetchone()[0] == 7


def test_a_store_opens_tables_the_transactional_outbox_created(tmp_path: Path) -> None:
    app_db = tmp_path / "app.db"
    app = sqlite3.connect(app_db, isolation_level=None)
    with Outbox(tmp_path / "unused.db") as outbox:
        app.execute("BEGIN")
        outbox.enqueue({"event_id": "e1", "customer_id": "c", "event_name": "n"}, conn=app)
        app.execute("COMMIT")
    app.close()
    # The tables the app's connection created are at the current version: opening them migrates nothing.
    with Store(app_db) as store:
        assert store.get("e1") is not None
