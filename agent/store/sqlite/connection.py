"""The outbox connection: opening, the one transaction helper, and how SQLite errors map to ours."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Self

from agent.errors import OutboxClosedError, OutboxCorruptError, OutboxError, OutboxFullError
from agent.store.records import StoreOptions
from agent.store.sqlite import schema


def disk_full(exc: BaseException) -> bool:
    """Whether an SQLite error means the disk (or max_page_count) is full."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code == sqlite3.SQLITE_FULL or "database or disk is full" in str(exc)


def damaged(exc: BaseException) -> bool:
    """Whether an SQLite error means the file itself is damaged or is not a database.

    Not "locked", "cannot open", "I/O error" or "read-only": those say nothing about the file's
    content, and a file moved aside for them would take healthy, acknowledged events with it.
    """
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


def corrupt_error(path: Path, detail: str) -> OutboxCorruptError:
    """The error for a damaged outbox file: names the file and what to do."""
    return OutboxCorruptError(
        f"the outbox {path} is damaged ({detail}). Check it with `dodo-outbox doctor --outbox {path}`; "
        f"copy its readable rows into a new outbox with "
        f"`dodo-outbox doctor --outbox {path} --salvage NEW_PATH`"
    )


class StoreBase:
    """One SQLite connection, shared by the threads of one process under a lock.

    Several processes may open the same file: WAL lets readers run beside one writer, and every write
    takes the database lock up front (BEGIN IMMEDIATE) so two writers never deadlock mid-transaction.
    """

    def __init__(self, path: str | Path, options: StoreOptions | None = None) -> None:
        self.options = options or StoreOptions()
        self.path = Path(path)
        if str(self.path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()
        try:
            self._conn: sqlite3.Connection | None = sqlite3.connect(
                str(self.path), isolation_level=None, check_same_thread=False, timeout=0
            )
            schema.configure(self._conn, self.options.synchronous, self.options.busy_timeout_ms)
            if self.options.check_integrity:
                self._check_integrity()
            self.migrated_from = schema.migrate(self._conn)
        except OutboxCorruptError:
            self._close_quietly()
            raise
        except sqlite3.DatabaseError as exc:
            self._close_quietly()
            if disk_full(exc):
                raise OutboxFullError(f"cannot open the outbox {self.path}: the disk is full") from exc
            if damaged(exc):
                raise corrupt_error(self.path, str(exc)) from exc
            # Locked, unreadable, missing directory, I/O error: not damage (see `damaged`).
            raise OutboxError(f"cannot open the outbox {self.path}: {exc}") from exc

    def _check_integrity(self) -> None:
        """PRAGMA quick_check. Raises OutboxCorruptError naming the first problems it reports."""
        rows = self.conn.execute("PRAGMA quick_check(5)").fetchall()
        if [r[0] for r in rows] != ["ok"]:
            detail = "; ".join(" ".join(str(r[0]).split()) for r in rows[:3])
            raise corrupt_error(self.path, f"PRAGMA quick_check: {detail}")

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise OutboxClosedError(f"the outbox {self.path} is closed")
        return self._conn

    def close(self) -> None:
        """Close the connection (checkpointing the WAL). Safe to call twice."""
        with self.lock:
            if self._conn is not None:
                with suppress(sqlite3.Error):
                    self._conn.execute("PRAGMA optimize")
                self._close_quietly()

    def _close_quietly(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def location(self) -> str:
        """The outbox file, for messages and status."""
        return str(self.path)

    @property
    def closed(self) -> bool:
        return self._conn is None

    @property
    def schema_versions(self) -> tuple[int, int]:
        """(the schema version found on opening, 0 for a new outbox; the version it is at now)."""
        return self.migrated_from, schema.SCHEMA_VERSION

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: BEGIN IMMEDIATE, COMMIT on success, ROLLBACK on any error.

        Returns only after COMMIT, so with synchronous=FULL the data is on disk. Raises
        OutboxFullError when the disk is full, OutboxError (OutboxCorruptError for a damaged file)
        for SQLite's other errors, such as a file that stays locked.
        """
        with self.lock:
            conn = self.conn
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise OutboxError(
                    f"the outbox {self.path} stayed locked by another writer for "
                    f"{self.options.busy_timeout_ms} ms: {exc}"
                ) from exc
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error) and disk_full(exc):
                    raise OutboxFullError(
                        f"the disk holding the outbox {self.path} is full; nothing of this write was "
                        "stored. Free space; the agent recovers by itself",
                        retry_after=5.0,
                    ) from exc
                if isinstance(exc, sqlite3.Error):
                    raise self._translate(exc) from exc
                raise

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """The connection for reads, under the process lock (a consistent snapshot per statement).

        Raises OutboxError (OutboxCorruptError for a damaged file) instead of SQLite's own errors.
        """
        with self.lock:
            try:
                yield self.conn
            except sqlite3.Error as exc:
                raise self._translate(exc) from exc

    def _translate(self, exc: sqlite3.Error) -> OutboxError:
        """SQLite's error as ours, so nothing outside the store needs to know SQLite."""
        if damaged(exc):
            return corrupt_error(self.path, str(exc))
        return OutboxError(f"the outbox {self.path} failed: {exc}")
