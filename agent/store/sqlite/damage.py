"""A damaged outbox file: check its integrity and move it aside (with its WAL) to keep running.

The file is opened on its own connection, never through `SqliteStore` (which would refuse it, and would
migrate it). `salvage.py` copies the rows such a file still holds into another outbox.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from agent.errors import OutboxError
from agent.store.records import State
from agent.store.sqlite.schema import stored_version

SIDE_FILES = ("-wal", "-shm", "-journal")


@dataclass
class Health:
    """What an integrity check of one file found. `problems` is empty when the file is healthy."""

    path: Path
    problems: list[str] = field(default_factory=list)
    counts: dict[str, int] | None = None  # rows per state, when they could be counted
    schema_version: int | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), isolation_level=None, timeout=10)
    conn.execute("PRAGMA query_only = 1")
    return conn


def _open(path: Path) -> sqlite3.Connection:
    """The damaged file on a connection of its own that writes nothing (its WAL is still read)."""
    if not path.is_file():
        raise FileNotFoundError(f"no outbox file at {path}")
    return _connect(path)


def expected_size(path: Path) -> tuple[int, int] | None:
    """(bytes the header says the file has, bytes it has) when the file is shorter: truncated."""
    with path.open("rb") as handle:
        head = handle.read(100)
    if len(head) < 100 or not head.startswith(b"SQLite format 3\x00"):
        return None
    page_size = int.from_bytes(head[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(head[28:32], "big")
    actual = path.stat().st_size
    return (pages * page_size, actual) if pages and actual < pages * page_size else None


@contextlib.contextmanager
def readable(path: Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection to `path`, or to a zero-padded copy of it when it is truncated."""
    if not path.is_file():
        raise FileNotFoundError(f"no outbox file at {path}")
    truncated = expected_size(path)
    if truncated is None:
        conn = _connect(path)
        try:
            yield conn
        finally:
            conn.close()
        return
    with tempfile.TemporaryDirectory(prefix=".dodo-outbox-salvage-", dir=path.parent) as scratch:
        copy = Path(scratch) / path.name
        shutil.copyfile(path, copy)
        with contextlib.suppress(FileNotFoundError):
            shutil.copyfile(f"{path}-wal", f"{copy}-wal")
        os.truncate(copy, truncated[0])  # extends with zeros: missing pages read as damaged ones
        conn = _connect(copy)
        try:
            yield conn
        finally:
            conn.close()


def check(path: Path, *, full: bool = True, limit: int = 20) -> Health:
    """Run `PRAGMA integrity_check` (or `quick_check` with `full=False`) on `path` and count its rows.

    Never raises for a damaged file: what SQLite says becomes `problems`. Raises FileNotFoundError when
    there is no file.
    """
    health = Health(path)
    truncated = expected_size(path) if path.is_file() else None
    if truncated is not None:
        health.problems.append(
            f"truncated: the file has {truncated[1]} bytes, its header says {truncated[0]}"
        )
    try:
        conn = _open(path)
    except sqlite3.DatabaseError as exc:
        health.problems.append(f"cannot open: {exc}")
        return health
    try:
        pragma = "integrity_check" if full else "quick_check"
        try:
            rows = conn.execute(f"PRAGMA {pragma}({int(limit)})").fetchall()
            found = [" ".join(str(r[0]).split()) for r in rows]
            if found != ["ok"]:
                health.problems.extend(found)
        except sqlite3.DatabaseError as exc:
            health.problems.append(f"{pragma} failed: {exc}")
        with contextlib.suppress(sqlite3.DatabaseError, OutboxError):
            health.schema_version = stored_version(conn)
        with contextlib.suppress(sqlite3.DatabaseError):
            counts = dict.fromkeys([s.value for s in State], 0)
            for state, count in conn.execute(
                "SELECT state, count(*) FROM dodo_outbox_events NOT INDEXED GROUP BY state"
            ):
                counts[str(state)] = int(count)
            health.counts = counts
    finally:
        conn.close()
    return health


def quarantine(path: Path, now: float) -> Path:
    """Move a damaged outbox (and its -wal/-shm/-journal files) aside to `<name>.corrupt-<UTC time>`.

    Returns the new path of the database file; its WAL moves with it under the matching name, so
    `salvage` still reads the transactions committed there. Raises OSError when it cannot be moved.
    """
    stamp = datetime.fromtimestamp(now, UTC).strftime("%Y%m%dT%H%M%SZ")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 0
    while any(os.path.lexists(f"{target}{suffix}") for suffix in ("", *SIDE_FILES)):
        n += 1
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    # The side files first: a crash half-way leaves the database file in place, still detected next
    # start, rather than a database whose WAL was already taken away.
    for suffix in SIDE_FILES:
        with contextlib.suppress(FileNotFoundError):
            os.replace(f"{path}{suffix}", f"{target}{suffix}")
    os.replace(path, target)
    with contextlib.suppress(OSError):
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    return target
