"""Measurement baselines: what the product is compared with. NOT product code.

These are the loops a competent engineer would write by hand, in raw `sqlite3`, and the peer a user
would pick instead (`persist-queue`). They contain SQL on purpose: `agent/store/` stays the only place
with SQL in the product; the SQL here only exists to be measured against it.

Fairness rules every baseline follows:
- The same durability: WAL and `synchronous=FULL`, one fsync'd COMMIT where the product commits.
- The same rows: the raw baselines write the outbox's own table (created by the product's schema), so
  both sides write the same bytes and update the same indexes; what differs is our code on top.
  `minimal_table` gives the bare 3-column table instead, to show what the schema itself costs.
- The same work around SQLite: events are JSON-encoded (orjson, sorted keys) before they are stored;
  batch baselines get the same already-validated events the product gets.
- No validation, no idempotency checks, no result objects: that is the overhead being measured.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import orjson

from agent.bench.common import API_KEY
from agent.delivery.client import build_body
from agent.events import Event
from agent.store.sqlite import schema

_INSERT_OUTBOX = (
    "INSERT INTO dodo_outbox_events (event_id, event_name, ts, payload, stamped, source, enqueued_at) "
    "VALUES (?, ?, ?, ?, 0, 'raw', ?)"
)
_INSERT_MINIMAL = "INSERT INTO bench_minimal (event_id, payload) VALUES (?, ?)"


def open_raw(path: Path, *, minimal_table: bool = False) -> sqlite3.Connection:
    """A raw connection in WAL + synchronous=FULL, with the outbox's table (or a minimal one)."""
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    if minimal_table:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS bench_minimal (id INTEGER PRIMARY KEY, "
            "event_id TEXT NOT NULL UNIQUE, payload TEXT NOT NULL)"
        )
    else:
        schema.migrate(conn)
    return conn


class RawPerEvent:
    """One INSERT per transaction, the event encoded with orjson. Thread-safe (one lock, one file)."""

    def __init__(self, path: Path, *, minimal_table: bool = False) -> None:
        self.conn = open_raw(path, minimal_table=minimal_table)
        self.minimal = minimal_table
        self._lock = threading.Lock()

    def insert(self, event: Mapping[str, Any]) -> None:
        payload = orjson.dumps(event, option=orjson.OPT_SORT_KEYS).decode()
        with self._lock:
            self.conn.execute("BEGIN IMMEDIATE")
            if self.minimal:
                self.conn.execute(_INSERT_MINIMAL, (event["event_id"], payload))
            else:
                now_us = time.time_ns() // 1000
                self.conn.execute(
                    _INSERT_OUTBOX, (event["event_id"], event["event_name"], now_us, payload, now_us)
                )
            self.conn.execute("COMMIT")

    def close(self) -> None:
        self.conn.close()


def raw_executemany(conn: sqlite3.Connection, events: Sequence[Event]) -> None:
    """One transaction, one executemany of already-validated events into the outbox's table."""
    now_us = time.time_ns() // 1000
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(_INSERT_OUTBOX, [(e.event_id, e.event_name, e.ts_us, e.payload, now_us) for e in events])
    conn.execute("COMMIT")


PEER_MISSING_NOTE = (
    "persist-queue is not installed, so this peer was not measured: "
    "pip install 'dodo-outbox[bench]' to compare with it"
)


def peer_installed() -> bool:
    """Whether persist-queue (the peer baseline, the `bench` extra) can be imported."""
    try:
        import persistqueue  # noqa: F401 (imported only to learn whether it is installed)
    except ImportError:
        return False
    return True


def open_persist_queue(path: Path, *, multithreading: bool = False) -> Any:
    """persist-queue's SQLiteAckQueue with durability made explicit: WAL (its default) + FULL.

    SQLite's default `synchronous` is already FULL in WAL mode here; setting it on both of the queue's
    connections makes the comparison independent of how SQLite was compiled. Items are pickled (its
    default serializer, cheaper than JSON), and every put/get/ack is its own committed transaction
    (`auto_commit=True`, the only mode its ack queue supports).
    """
    from persistqueue import SQLiteAckQueue

    queue: Any = SQLiteAckQueue(str(path), multithreading=multithreading, auto_commit=True)
    connections: list[Any] = [queue._putter, queue._getter]
    for conn in connections:
        conn.execute("PRAGMA synchronous = FULL")
    return queue


def persist_queue_synchronous(queue: Any) -> int:
    """The `synchronous` level of the queue's write connection (2 = FULL), for the report."""
    return int(queue._putter.execute("PRAGMA synchronous").fetchone()[0])


def _client(url: str) -> httpx.Client:
    return httpx.Client(
        base_url=url,
        headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
        timeout=30.0,
    )


def bare_drain(conn: sqlite3.Connection, url: str, batch: int = 1000) -> int:
    """The bare loop: claim (SELECT + UPDATE), splice stored JSON, POST, mark delivered; until empty.

    Runs on the outbox's own table and its claim index, one transaction per claim and per mark.
    Returns the events delivered. Raises RuntimeError on a non-2xx answer.
    """
    delivered = 0
    with _client(url) as client:
        while True:
            conn.execute("BEGIN IMMEDIATE")
            rows = conn.execute(
                "SELECT id, payload FROM dodo_outbox_events WHERE state = 'pending' ORDER BY ts LIMIT ?",
                (batch,),
            ).fetchall()
            ids = [row[0] for row in rows]
            marks = ",".join("?" * len(ids))
            if ids:
                conn.execute(f"UPDATE dodo_outbox_events SET state = 'inflight' WHERE id IN ({marks})", ids)
            conn.execute("COMMIT")
            if not ids:
                return delivered
            response = client.post("/events/ingest", content=build_body([row[1] for row in rows]))
            if response.status_code // 100 != 2:
                raise RuntimeError(f"bare loop: HTTP {response.status_code}: {response.text[:200]}")
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(f"UPDATE dodo_outbox_events SET state = 'delivered' WHERE id IN ({marks})", ids)
            conn.execute("COMMIT")
            delivered += len(ids)


def persist_queue_drain(queue: Any, url: str, per_request: int = 1) -> int:
    """persist-queue's way: get, POST, ack. `per_request` items are got (one commit each) per request.

    With `per_request=1` (the queue's natural use) each event is its own request. Returns the events
    delivered. Raises RuntimeError on a non-2xx answer.
    """
    from persistqueue.exceptions import Empty

    delivered = 0
    with _client(url) as client:
        while True:
            items: list[Any] = []
            try:
                while len(items) < per_request:
                    items.append(queue.get(block=False, raw=True))
            except Empty:
                pass
            if not items:
                return delivered
            body = orjson.dumps({"events": [item["data"] for item in items]})
            response = client.post("/events/ingest", content=body)
            if response.status_code // 100 != 2:
                raise RuntimeError(f"persist-queue loop: HTTP {response.status_code}: {response.text[:200]}")
            for item in items:
                queue.ack(item)
            delivered += len(items)
