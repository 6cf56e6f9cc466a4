"""What `conn=` refuses, and why: every refusal names what was passed and what to pass instead, and
stores nothing. Also SQLAlchemy on the app's own SQLite file (the SQLite outbox's transactional form)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from agent.outbox import Outbox
from agent.store import Store
from tests.builders import raw_event
from tests.contrib.conftest import sqlalchemy_url, stored


def test_an_engine_is_refused_it_has_no_transaction(pg_outbox: Outbox, postgres_url: str) -> None:
    engine = sa.create_engine(sqlalchemy_url(postgres_url), poolclass=sa.pool.NullPool)
    with pytest.raises(TypeError, match=r"SQLAlchemy Engine.*engine\.begin\(\)"):
        pg_outbox.enqueue(raw_event("e"), conn=engine)
    engine.dispose()


def test_autocommit_connections_are_refused_the_event_would_be_part_of_no_transaction(
    pg_outbox: Outbox, postgres_url: str, pg_schema: str
) -> None:
    with (
        psycopg.connect(postgres_url, autocommit=True) as pg,
        pytest.raises(TypeError, match=r"autocommit mode.*part of no transaction"),
    ):
        pg_outbox.enqueue(raw_event("e1"), conn=pg)
    engine = sa.create_engine(
        sqlalchemy_url(postgres_url), poolclass=sa.pool.NullPool, isolation_level="AUTOCOMMIT"
    )
    with engine.connect() as conn, pytest.raises(TypeError, match="isolation_level='AUTOCOMMIT'"):
        pg_outbox.enqueue(raw_event("e2"), conn=conn)
    engine.dispose()
    assert stored(postgres_url, pg_schema) == ([], [])


def test_an_autocommit_psycopg_connection_inside_its_transaction_block_is_that_transaction(
    pg_outbox: Outbox, postgres_url: str, pg_schema: str
) -> None:
    """psycopg's own advice: `autocommit=True` and `with conn.transaction():` for each unit of work."""

    class Abandon(Exception):
        pass

    with psycopg.connect(postgres_url, autocommit=True) as pg:
        with pytest.raises(Abandon), pg.transaction():
            pg_outbox.enqueue(raw_event("gone"), conn=pg)
            raise Abandon  # the block rolls back: the event with it
        with pg.transaction():
            pg_outbox.enqueue(raw_event("kept"), conn=pg)
            assert stored(postgres_url, pg_schema) == ([], [])  # not before the block commits
    assert stored(postgres_url, pg_schema)[0] == ["kept"]


def test_an_sqlite_connection_is_refused_by_a_postgresql_outbox(pg_outbox: Outbox, tmp_path: Path) -> None:
    app = sqlite3.connect(tmp_path / "app.db")
    with pytest.raises(TypeError, match=r"sqlite3\.Connection \(this outbox is on PostgreSQL"):
        pg_outbox.enqueue(raw_event("e"), conn=app)
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    with engine.connect() as conn:
        with pytest.raises(TypeError, match=r"engine\.base\.Connection \(this outbox is on PostgreSQL"):
            pg_outbox.enqueue(raw_event("e"), conn=conn)
        assert not conn.in_transaction()  # refused before beginning anything on it
    engine.dispose()
    app.close()


def test_a_psycopg2_connection_is_refused_with_the_url_to_use(pg_outbox: Outbox) -> None:
    # psycopg2 is not installed here (SQLAlchemy's plain `postgresql://` would need it): a stand-in of
    # its connection class, which is all the check reads.
    psycopg2_connection: Any = type("connection", (), {"__module__": "psycopg2.extensions"})()
    with pytest.raises(TypeError, match=r"psycopg2 connection.*`postgresql\+psycopg://`"):
        pg_outbox.enqueue(raw_event("e"), conn=psycopg2_connection)


def test_anything_else_is_refused_naming_it(pg_outbox: Outbox, tmp_path: Path, postgres_url: str) -> None:
    with pytest.raises(TypeError, match=r"conn= is 'dsn=x'; pass a psycopg 3 connection"):
        pg_outbox.enqueue(raw_event("e"), conn="dsn=x")
    with (
        Outbox(tmp_path / "o.db") as sqlite_outbox,
        psycopg.connect(postgres_url) as pg,
        pytest.raises(TypeError, match="this outbox is an SQLite file"),
    ):
        sqlite_outbox.enqueue(raw_event("e"), conn=pg)


def test_sqlalchemy_on_the_apps_sqlite_file_commits_and_rolls_back_with_it(tmp_path: Path) -> None:
    app_db = tmp_path / "app.db"
    engine = sa.create_engine(f"sqlite:///{app_db}")
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE orders (ref TEXT PRIMARY KEY)"))
    with Outbox(tmp_path / "unused.db") as outbox:
        with Session(engine) as session:
            session.execute(sa.text("INSERT INTO orders VALUES ('gone')"))
            outbox.enqueue(raw_event("gone"), conn=session)
            session.rollback()
        with engine.connect() as conn:
            conn.execute(sa.text("INSERT INTO orders VALUES ('kept')"))
            outbox.enqueue_many([raw_event("kept")], conn=conn)
            conn.commit()
        autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        with autocommit.connect() as conn, pytest.raises(TypeError, match="autocommit mode"):
            outbox.enqueue(raw_event("never"), conn=conn)
    engine.dispose()
    with Store(app_db) as store:
        assert store.get("gone") is None and store.get("never") is None
        assert store.get("kept") is not None and store.counts()["pending"] == 1
    with sqlite3.connect(app_db) as check:
        assert check.execute("SELECT ref FROM orders").fetchall() == [("kept",)]
