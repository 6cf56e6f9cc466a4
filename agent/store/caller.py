"""The application's own connection for the transactional outbox (`enqueue(event, conn=...)`).

The one place that turns what an app passes as `conn` into the driver connection a store writes on:
a psycopg 3 or sqlite3 connection as it is, or a SQLAlchemy 2 `Connection`, `Session` or
`scoped_session` on that driver (their open transaction, begun as SQLAlchemy's own autobegin would).
Anything else, or a connection in autocommit (the event would commit on its own, part of no
transaction), is refused with a TypeError naming what was passed and what to pass instead.

No SQL here and no driver imported at module level: SQLAlchemy and psycopg are imported only when
the object passed comes from them.
"""

from __future__ import annotations

import sqlite3
from typing import Any, Literal

Driver = Literal["psycopg", "sqlite3"]

_WANTED = {
    "psycopg": "a psycopg 3 connection, or a SQLAlchemy 2 Connection or Session on "
    "`postgresql+psycopg://`",
    "sqlite3": "an sqlite3 connection to the outbox's SQLite file, or a SQLAlchemy 2 Connection or "
    "Session on `sqlite:///` that file",
}
_SCHEME = {"psycopg": "postgresql+psycopg://", "sqlite3": "sqlite:///"}


def driver_connection(conn: Any, driver: Driver) -> Any:
    """The `driver` connection (psycopg.Connection or sqlite3.Connection) under `conn`, inside an open
    transaction that commits or rolls back only when the caller's own does.

    Never commits or rolls back. Raises TypeError for an object that is not such a connection (the
    message names it and what to pass), or for a connection in autocommit mode.
    """
    session = _sqlalchemy_connection(conn, driver) if _from(conn, "sqlalchemy") else None
    raw = conn if session is None else session.connection.driver_connection
    if driver == "psycopg" and _from(raw, "psycopg2"):
        raise TypeError(
            f"conn= is {_name(conn)}, a psycopg2 connection; the PostgreSQL outbox writes through "
            "psycopg 3: with SQLAlchemy, create the engine with `postgresql+psycopg://` (not "
            "`postgresql://` or `postgresql+psycopg2://`); elsewhere, connect with `psycopg.connect()`"
        )
    if not isinstance(raw, _driver_class(driver)):
        raise TypeError(_unsupported(conn, raw, driver))
    if session is not None and not session.in_transaction():
        session.begin()  # what SQLAlchemy's autobegin does on the first execute; the caller commits it
    if _autocommits(raw):
        raise TypeError(
            f"conn= is {_name(conn)} in autocommit mode with no transaction open: the event would "
            "commit on its own, part of no transaction. Use a connection in a transaction (psycopg's "
            "default, autocommit=False; with sqlite3, BEGIN first; with SQLAlchemy, not "
            "isolation_level='AUTOCOMMIT'), then enqueue and commit your own writes with it"
        )
    return raw


def _sqlalchemy_connection(conn: Any, driver: Driver) -> Any:
    """The SQLAlchemy Connection of a Connection, Session or scoped_session (a Session's autobegins)."""
    from sqlalchemy.engine import Connection, Engine
    from sqlalchemy.orm import Session, scoped_session

    given = conn
    if isinstance(conn, scoped_session):
        conn = conn()
    if isinstance(conn, Session):
        conn = conn.connection()  # the session's connection, in its transaction (autobegun)
    if isinstance(conn, Engine):
        raise TypeError(
            "conn= is a SQLAlchemy Engine, which has no transaction to write in: pass the Connection "
            "of `with engine.begin() as conn:` (or `engine.connect()`), or a Session"
        )
    if not isinstance(conn, Connection):
        raise TypeError(_unsupported(given, given, driver))
    return conn


def _driver_class(driver: Driver) -> type[Any]:
    if driver == "sqlite3":
        return sqlite3.Connection
    import psycopg

    return psycopg.Connection


def _autocommits(conn: Any) -> bool:
    """Whether a write on `conn` now would commit by itself (no transaction open, none implied)."""
    if not isinstance(conn, sqlite3.Connection):
        return _psycopg_autocommits(conn)
    return _sqlite_autocommits(conn)


def _psycopg_autocommits(conn: Any) -> bool:
    """A psycopg connection outside autocommit is in a transaction from its first statement; one in
    autocommit is in a transaction only inside `with conn.transaction():` (psycopg's own advice)."""
    if not conn.autocommit:
        return False
    from psycopg.pq import TransactionStatus

    return bool(conn.info.transaction_status != TransactionStatus.INTRANS)


def _sqlite_autocommits(conn: sqlite3.Connection) -> bool:
    """Whether a write on `conn` now would commit by itself (no transaction open, none implied)."""
    if conn.in_transaction:
        return False
    autocommit = getattr(conn, "autocommit", None)  # Python 3.12+: True, False or legacy (-1)
    if autocommit is True:
        return True
    return autocommit in (None, -1) and conn.isolation_level is None


def _from(obj: Any, package: str) -> bool:
    module = type(obj).__module__ or ""
    return module == package or module.startswith(package + ".")


def _name(obj: Any) -> str:
    kind = type(obj)
    return f"{kind.__module__}.{kind.__qualname__}"


def _unsupported(given: Any, raw: Any, driver: Driver) -> str:
    shown = repr(given) if isinstance(given, str | bytes | int | float) else _name(given)
    hint = ""
    if driver == "psycopg" and isinstance(raw, sqlite3.Connection):
        hint = " (this outbox is on PostgreSQL; an SQLite connection cannot write in it)"
    elif driver == "sqlite3" and _from(raw, "psycopg"):
        hint = (
            " (this outbox is an SQLite file; open the Outbox with its postgresql:// URL to use PostgreSQL)"
        )
    elif _from(given, "sqlalchemy"):
        hint = f" (with SQLAlchemy, use the engine URL {_SCHEME[driver]}...)"
    return f"conn= is {shown}{hint}; pass {_WANTED[driver]}"
