"""The store conformance suite: every backend of `agent.store.OutboxStore` must pass tests/store/.

Each test takes `store` (a fresh, empty outbox) or `store_factory` (open the same outbox again, e.g.
to reopen it) and runs once per backend in BACKENDS. A new backend (issue 13: PostgreSQL) joins by
adding its name to BACKENDS and its branch to `_open` and `caller_transaction`; the tests do not
change. Tests of one backend's own mechanics (SQLite's pragmas, WAL, file stats, salvage) live in
tests/store/test_sqlite.py, which does not use these fixtures.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.store import OutboxStore, StoreOptions, open_store

BACKENDS = ["sqlite", "postgres"]

try:
    import psycopg  # noqa: F401
except ImportError:  # without the postgres extra: the conformance params skip (see postgres_url)
    collect_ignore = ["test_postgres.py", "test_postgres_leases.py", "test_pg_schema.py"]

StoreFactory = Callable[[], OutboxStore]
"""Opens (again) the one outbox of the test; every store it opened is closed after the test."""


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@dataclass
class Location:
    where: str | Path
    options: StoreOptions


@pytest.fixture
def location(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Location]:
    """Where the test's outbox lives: a new SQLite file, or a new schema on the test server."""
    if backend == "sqlite":
        yield Location(tmp_path / "conformance.db", StoreOptions())
        return
    if backend != "postgres":
        raise AssertionError(f"no location for backend {backend!r}")
    url: str = request.getfixturevalue("postgres_url")
    schema = "t_" + uuid.uuid4().hex[:16]
    yield Location(url, StoreOptions(schema=schema))
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


@pytest.fixture
def store_factory(location: Location) -> Iterator[StoreFactory]:
    opened: list[OutboxStore] = []

    def factory() -> OutboxStore:
        store = open_store(location.where, location.options)
        opened.append(store)
        return store

    yield factory
    for store in opened:
        store.close()


@pytest.fixture
def store(store_factory: StoreFactory) -> OutboxStore:
    return store_factory()


@dataclass
class CallerTransaction:
    """An application's own connection with an open transaction (the transactional outbox)."""

    conn: Any
    commit: Callable[[], None]
    rollback: Callable[[], None]


@pytest.fixture
def caller_transaction(backend: str, location: Location) -> Iterator[Callable[[], CallerTransaction]]:
    """Begins a transaction on a new application connection to the test's outbox."""
    connections: list[Any] = []

    def begin() -> CallerTransaction:
        if backend == "postgres":
            import psycopg

            pg = psycopg.connect(str(location.where))
            connections.append(pg)
            pg.execute("SELECT 1")  # the transaction is open from here
            return CallerTransaction(pg, pg.commit, pg.rollback)
        if backend != "sqlite":
            raise AssertionError(f"no application connection for backend {backend!r}")
        conn = sqlite3.connect(location.where, isolation_level=None, timeout=10)
        connections.append(conn)
        conn.execute("BEGIN IMMEDIATE")

        def commit() -> None:
            conn.execute("COMMIT")

        def rollback() -> None:
            conn.execute("ROLLBACK")

        return CallerTransaction(conn, commit, rollback)

    yield begin
    for conn in connections:
        conn.close()


@pytest.fixture
def pg(postgres_url: str, pg_schema: str) -> Iterator[Any]:
    """A PostgresStore on a fresh schema, for the PostgreSQL-only tests (test_postgres*.py, test_pg_*.py)."""
    from agent.store.postgres import PostgresStore

    store = open_store(postgres_url, StoreOptions(schema=pg_schema))
    assert isinstance(store, PostgresStore)
    yield store
    store.close()
