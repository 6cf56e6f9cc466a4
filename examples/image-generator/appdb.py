"""The app's own SQLite database: customers (API key -> Dodo customer id) and generations.

In library mode the same file is the outbox: the agent's `[outbox] path` points here, and usage events
are written in the transaction that records the generation (see `usage.py`).
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import astuple, dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS customers (
    key_sha256  TEXT PRIMARY KEY,   -- the API key itself is never stored
    customer_id TEXT NOT NULL       -- Dodo's customer id, cus_...
);
CREATE TABLE IF NOT EXISTS generations (
    customer_id TEXT    NOT NULL,
    request_id  TEXT    NOT NULL,   -- the client's X-Request-ID: a retry finds its first answer
    prompt      TEXT    NOT NULL,
    resolution  TEXT    NOT NULL,
    tokens      INTEGER NOT NULL,   -- tokens the prompt rewriting used
    png         BLOB    NOT NULL,
    created_at  TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (customer_id, request_id)
);
"""


@dataclass(frozen=True)
class Generation:
    customer_id: str
    request_id: str
    prompt: str
    resolution: str
    tokens: int
    png: bytes


def connect(path: str | Path) -> sqlite3.Connection:
    """A connection for one request: explicit transactions (`transaction()`), WAL so the agent can
    read and write the file at the same time, durable commits (billing data survives a power cut)."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=10)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    return conn


def init(conn: sqlite3.Connection, customers: Mapping[str, str]) -> None:
    """Create the tables and register `customers` (API key -> customer id)."""
    with transaction(conn):
        for statement in SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.executemany(
            "INSERT OR REPLACE INTO customers (key_sha256, customer_id) VALUES (?, ?)",
            [(_digest(key), customer) for key, customer in customers.items()],
        )


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any error. Takes the write lock up front, so two
    writers (two requests, or the app and the agent) queue instead of failing mid-transaction."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def customer_for(conn: sqlite3.Connection, api_key: str) -> str | None:
    sql = "SELECT customer_id FROM customers WHERE key_sha256 = ?"
    row = conn.execute(sql, (_digest(api_key),)).fetchone()
    return None if row is None else str(row[0])


def find(conn: sqlite3.Connection, customer_id: str, request_id: str) -> Generation | None:
    row = conn.execute(
        "SELECT customer_id, request_id, prompt, resolution, tokens, png FROM generations "
        "WHERE customer_id = ? AND request_id = ?",
        (customer_id, request_id),
    ).fetchone()
    return None if row is None else Generation(*row)


def insert(conn: sqlite3.Connection, generation: Generation) -> bool:
    """Record a generation inside the caller's transaction; False when the request id is taken."""
    cursor = conn.execute(
        "INSERT INTO generations (customer_id, request_id, prompt, resolution, tokens, png) "
        "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        astuple(generation),  # the columns in the dataclass's field order
    )
    return cursor.rowcount == 1


def _digest(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()
