"""The PostgreSQL backend keeps no session state, so a PgBouncer in transaction pooling can hand each
transaction to any server connection: no session advisory locks, no SET outside a transaction, no
LISTEN, no temporary tables or held cursors; and prepared statements can be turned off
(`[outbox] prepared_statements = false`, psycopg's `prepare_threshold=None`).

A real PgBouncer in front of a fleet is the real-process fleet tests' business (tests/reliability).
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from agent.store import StoreOptions
from agent.store.postgres import PostgresStore
from tests.builders import stored_event as event

SOURCES = sorted((Path(__file__).parents[2] / "agent" / "store" / "postgres").glob("*.py"))

# Statements that leave state in the session behind a transaction-pooling PgBouncer.
SESSION_STATE = {
    "a session advisory lock": re.compile(r"pg_(try_)?advisory_lock(_shared)?\s*\(", re.I),
    "LISTEN": re.compile(r"[\"'(]\s*LISTEN\b", re.I),
    "a SET outside a transaction (use SET LOCAL)": re.compile(
        r"[\"']\s*SET\s+(?!LOCAL\b)(SESSION\s+)?\w+\s*(=|TO\b)", re.I
    ),
    "a temporary table": re.compile(r"\bCREATE\s+TEMP(ORARY)?\b", re.I),
    "a cursor held past its transaction": re.compile(r"\bWITH\s+HOLD\b", re.I),
    "an explicit PREPARE": re.compile(r"[\"']\s*PREPARE\s", re.I),
}


def test_the_backend_source_has_no_session_state() -> None:
    assert SOURCES, "the PostgreSQL backend's modules were not found"
    found = [
        f"{path.name}: {what}: {match.group(0)!r}"
        for path in SOURCES
        for what, pattern in SESSION_STATE.items()
        for match in pattern.finditer(path.read_text())
    ]
    assert found == []


def test_the_session_check_catches_what_it_looks_for() -> None:
    # The patterns above would have caught the usual offenders (so the test above can fail).
    offenders = [
        'conn.execute("SELECT pg_advisory_lock(1)")',
        'conn.execute("LISTEN dodo")',
        "conn.execute(\"SET statement_timeout = '5s'\")",
        "conn.execute('SET SESSION work_mem TO 1024')",
        'conn.execute("CREATE TEMP TABLE x (a int)")',
        'conn.execute("PREPARE p AS SELECT 1")',
    ]
    for text in offenders:
        assert any(p.search(text) for p in SESSION_STATE.values()), text
    assert not any(
        p.search('conn.execute("SET LOCAL statement_timeout = 5")') for p in SESSION_STATE.values()
    )
    assert not any(p.search('"UPDATE {ev} SET state = %s"') for p in SESSION_STATE.values())


def _exercise(store: PostgresStore) -> None:
    """Run the agent's hot statements more often than psycopg's prepare threshold (5)."""
    store.insert_groups([([event(i) for i in range(20)], "test")], int(time.time() * 1e6))
    for _ in range(8):
        rows = store.claim(
            now_us=int(time.time() * 1e6), limit=2, max_bytes=10**6, lease_us=60 * 10**6, owner="o"
        )
        store.mark_delivered([r.id for r in rows], owner="o", now_us=int(time.time() * 1e6))
        store.take_slot("dodo_requests", per_minute=0, burst=1)
        store.kv_get("delivery_paused")
        store.heartbeat("o", host="h", pid=1)


def _session(store: PostgresStore) -> dict[str, Any]:
    with store.pool.connection() as conn:
        prepared = conn.execute("SELECT count(*) FROM pg_prepared_statements").fetchone()
        locks = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE pid = pg_backend_pid() AND locktype = 'advisory'"
        ).fetchone()
        settings = conn.execute("SELECT name FROM pg_settings WHERE source = 'session'").fetchall()
        conn.rollback()
    return {"prepared": prepared[0], "advisory_locks": locks[0], "session_settings": [s[0] for s in settings]}


def test_with_prepared_statements_off_nothing_is_left_in_the_session(
    postgres_url: str, pg_schema: str
) -> None:
    with PostgresStore(postgres_url, StoreOptions(schema=pg_schema, prepared_statements=False)) as store:
        _exercise(store)
        assert _session(store) == {"prepared": 0, "advisory_locks": 0, "session_settings": []}


def test_prepared_statements_on_by_default(postgres_url: str, pg_schema: str) -> None:
    # The other side of the option (and proof the check above can see prepared statements).
    with PostgresStore(postgres_url, StoreOptions(schema=pg_schema)) as store:
        _exercise(store)
        assert _session(store)["prepared"] > 0
