"""The transactional outbox on an application's own PostgreSQL connection: psycopg 3, SQLAlchemy 2
(Connection, Session, Session.connection()) and Django, against the suite's real server.

`app_transaction(kind)` begins the application's transaction the way an app using that library would
and gives the object the app passes as `conn=`, plus the app's own write (a row in `orders`), commit and
rollback. Every test then checks the outcome from a separate connection, as the agent would see it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from agent.outbox import Outbox

KINDS = ["psycopg", "sqlalchemy-connection", "sqlalchemy-session", "sqlalchemy-session-connection"]
"""The ways an app hands us its transaction: each a value of `conn=`."""


def sqlalchemy_url(postgres_url: str) -> str:
    """The test server's URL for SQLAlchemy on psycopg 3 (its default `postgresql://` means psycopg2)."""
    return "postgresql+psycopg://" + postgres_url.split("://", 1)[1]


@dataclass
class AppTransaction:
    conn: Any
    """What the app passes as `conn=`."""
    add_order: Callable[[str], object]
    """The app's own write in the same transaction: a row in `orders`."""
    commit: Callable[[], None]
    rollback: Callable[[], None]


@pytest.fixture
def pg_outbox(postgres_url: str, pg_schema: str) -> Iterator[Outbox]:
    """An Outbox in a fresh schema of the test server, with the app's `orders` table beside it."""
    import psycopg

    with Outbox(postgres_url, schema=pg_schema) as outbox:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(f"CREATE TABLE {pg_schema}.orders (ref text PRIMARY KEY)")
        yield outbox


@pytest.fixture
def app_transaction(postgres_url: str, pg_schema: str) -> Iterator[Callable[[str], AppTransaction]]:
    """Begins an application transaction of the given kind (one of KINDS)."""
    import psycopg
    import sqlalchemy as sa
    from sqlalchemy.orm import Session

    cleanup: list[Callable[[], None]] = []
    engine = sa.create_engine(sqlalchemy_url(postgres_url), poolclass=sa.pool.NullPool)
    cleanup.append(engine.dispose)
    insert = f"INSERT INTO {pg_schema}.orders (ref) VALUES "

    def begin(kind: str) -> AppTransaction:
        if kind == "psycopg":
            pg = psycopg.connect(postgres_url)
            cleanup.append(pg.close)
            return AppTransaction(
                pg, lambda ref: pg.execute(insert + "(%s)", (ref,)), pg.commit, pg.rollback
            )
        if kind == "sqlalchemy-connection":
            conn = engine.connect()
            cleanup.append(conn.close)
            return AppTransaction(
                conn,
                lambda ref: conn.execute(sa.text(insert + "(:ref)"), {"ref": ref}),
                conn.commit,
                conn.rollback,
            )
        if kind not in ("sqlalchemy-session", "sqlalchemy-session-connection"):
            raise AssertionError(f"no application transaction of kind {kind!r}")
        session = Session(engine)
        cleanup.append(session.close)
        passed = session if kind == "sqlalchemy-session" else session.connection()
        return AppTransaction(
            passed,
            lambda ref: session.execute(sa.text(insert + "(:ref)"), {"ref": ref}),
            session.commit,
            session.rollback,
        )

    yield begin
    for close in reversed(cleanup):
        close()


def stored(postgres_url: str, schema: str) -> tuple[list[str], list[str]]:
    """(event_ids in the outbox, order refs), as committed: read on a separate connection."""
    import psycopg

    with psycopg.connect(postgres_url, autocommit=True) as conn:
        events = [r[0] for r in conn.execute(f"SELECT event_id FROM {schema}.dodo_outbox_events ORDER BY id")]
        orders = [r[0] for r in conn.execute(f"SELECT ref FROM {schema}.orders ORDER BY ref")]
    return events, orders
