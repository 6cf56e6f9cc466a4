"""A damaged outbox file: salvage the rows that can still be read (damage.py checks and moves it aside).

Pure Python over the sqlite3 module (no `sqlite3` binary needed). The damaged file is opened on its
own connection, never through `Store` (which would refuse it, and would migrate it).

Salvage reads the events table every way it can, because damage defeats each way differently:
1. a full scan, leaf page after leaf page, up to the first unreadable page;
2. by rowid ranges: a range that fails is halved until the damage is fenced in to single ids (a range
   that ends early without an error, as a damaged interior page can make it, is read on from its
   last row);
3. one by one, every rowid the event_id index still lists that neither pass above could read.
A truncated file (shorter than its header says) is read from a copy padded back to full size with
zero pages, so its first part is not lost with its missing tail. Each row is checked (its payload is
the canonical JSON of the same event_id) and inserted into the target outbox with
`ON CONFLICT (event_id) DO NOTHING`, so the target may be a fresh file or the live outbox of a running
agent. Rows that were in flight come back as pending, due now.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from agent.store.records import State
from agent.store.sqlite.connection import StoreBase
from agent.store.sqlite.damage import readable
from agent.timestamps import strip_timestamp

_STATES = frozenset(s.value for s in State)

COLUMNS = (
    "event_id, event_name, ts, payload, stamped, source, state, attempts, enqueued_at, next_attempt_at, "
    "settled_at, restamped, reason, http_status, response, last_error"
)
_INSERT = (
    f"INSERT INTO dodo_outbox_events ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (event_id) DO NOTHING"
)
CHUNK_IDS = 4096
"""Ids read per range query: one query per range while the table reads cleanly."""
INSERT_CHUNK = 2000


@dataclass
class SalvageReport:
    """What `salvage` copied. `copied` counts rows new to the target by (target) state; `present` rows
    whose event_id the target already had; `read` rows read; `invalid` rows read but not intact;
    `unreadable` the rowids that could not be read (some may have held no row), in
    `unreadable_ranges` runs of consecutive ids."""

    source: Path
    target: Path
    copied: dict[str, int] = field(default_factory=lambda: dict.fromkeys(("pending", "delivered", "dead"), 0))
    present: int = 0
    read: int = 0
    invalid: int = 0
    unreadable: set[int] = field(default_factory=set)
    unreadable_ranges: int = 0
    schema_error: str | None = None

    @property
    def complete(self) -> bool:
        """True when nothing was skipped: every row of the source is in the target."""
        return not (self.invalid or self.unreadable or self.schema_error)


def _intact(row: Sequence[object]) -> bool:
    """Whether a row read from a damaged file is whole: a known state and the canonical payload of
    the same event_id (damage inside a cell can leave SQLite reading it without complaint)."""
    event_id, _name, ts, payload, *_rest = row
    state = row[6]
    if not isinstance(event_id, str) or not isinstance(payload, str) or not isinstance(ts, int):
        return False
    if state not in _STATES:
        return False
    try:
        document = json.loads(payload)
        strip_timestamp(payload)
    except ValueError:
        return False
    return isinstance(document, dict) and document.get("event_id") == event_id


@dataclass
class _Reading:
    """What the passes have read so far: the ids seen, and enough to size the rowid space."""

    seen: set[int] = field(default_factory=set)
    listed: set[int] = field(default_factory=set)  # rowids the event_id index lists
    row_bytes: int = 0
    top_seen: int = 0


def _upper_bound(conn: sqlite3.Connection, reading: _Reading) -> int:
    """One past the highest rowid that may exist: max(id) when it reads, else an estimate."""
    with contextlib.suppress(sqlite3.DatabaseError):
        top = conn.execute("SELECT max(id) FROM dodo_outbox_events").fetchone()[0]
        if top is not None:
            return max(int(top), reading.top_seen) + 1
    known = max(reading.top_seen, max(reading.listed, default=0))
    try:
        pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
        size = int(conn.execute("PRAGMA page_size").fetchone()[0])
    except sqlite3.DatabaseError:
        return known + 1
    # Rows as big as those read so far (a row takes at least 16 bytes) could fill the whole file.
    per_row = max(16, reading.row_bytes // max(1, len(reading.seen)) // 2)
    return known + pages * size // per_row + 1


def _scan(conn: sqlite3.Connection) -> Iterator[tuple[object, ...]]:
    """Rows in table order (leaf after leaf), up to the first unreadable page.

    Bounded by the most rows the file could hold, in case damaged pages point back at each other."""
    limit = _capacity(conn)
    with contextlib.suppress(sqlite3.DatabaseError):
        for count, row in enumerate(
            conn.execute(f"SELECT id, {COLUMNS} FROM dodo_outbox_events NOT INDEXED")
        ):
            if count > limit:
                return
            yield row


def _capacity(conn: sqlite3.Connection) -> int:
    """The most rows the file could hold (a row takes at least 16 bytes of a page)."""
    try:
        pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
        size = int(conn.execute("PRAGMA page_size").fetchone()[0])
    except sqlite3.DatabaseError:
        return 1 << 40
    return pages * size // 16


def _listed(conn: sqlite3.Connection, reading: _Reading) -> None:
    """Collect the rowids of the event_id index (it holds every row's id, apart from the table)."""
    with contextlib.suppress(sqlite3.DatabaseError):
        for (row_id,) in conn.execute(
            "SELECT id FROM dodo_outbox_events INDEXED BY sqlite_autoindex_dodo_outbox_events_1"
        ):
            reading.listed.add(int(row_id))


def _ranges(
    conn: sqlite3.Connection, reading: _Reading, report: SalvageReport
) -> Iterator[tuple[object, ...]]:
    """Rows of every readable rowid range, in id order; damaged ranges are halved down to single ids."""
    query = f"SELECT id, {COLUMNS} FROM dodo_outbox_events WHERE id >= ? AND id < ? ORDER BY id"
    top = _upper_bound(conn, reading)
    # A stack of [lo, hi) ranges, lowest on top: ranges are read (and damage is met) in id order.
    stack = [(lo, min(lo + CHUNK_IDS, top)) for lo in range(top - 1 - (top - 1) % CHUNK_IDS, -1, -CHUNK_IDS)]
    while stack:
        lo, hi = stack.pop()
        try:
            rows = conn.execute(query, (lo, hi)).fetchall()
        except sqlite3.DatabaseError:
            if hi - lo <= 1:
                _unreadable(report, lo)
                continue
            mid = (lo + hi) // 2
            stack.append((mid, hi))
            stack.append((lo, mid))
            continue
        last = int(rows[-1][0]) if rows else -1
        if lo <= last < hi - 1:  # ended early: read on after its last row (always forward)
            stack.append((last + 1, hi))
        yield from rows


def _points(
    conn: sqlite3.Connection, reading: _Reading, report: SalvageReport
) -> Iterator[tuple[object, ...]]:
    """The listed rows no pass could read, each by its own lookup."""
    query = f"SELECT id, {COLUMNS} FROM dodo_outbox_events WHERE id = ?"
    for row_id in sorted(reading.listed - reading.seen):
        try:
            row = conn.execute(query, (row_id,)).fetchone()
        except sqlite3.DatabaseError:
            _unreadable(report, row_id)
            continue
        if row is None:  # the index lists it, the table search cannot find it: lost to the damage
            _unreadable(report, row_id)
        else:
            yield row


def _unreadable(report: SalvageReport, row_id: int) -> None:
    if row_id in report.unreadable:
        return
    report.unreadable.add(row_id)
    if row_id - 1 not in report.unreadable:
        report.unreadable_ranges += 1


def salvage(source: Path, target: StoreBase, now_us: int) -> SalvageReport:
    """Copy every intact row of the outbox file `source` into the outbox `target`.

    Rows keep their state, attempts, times and dead-letter details; inflight rows become pending, due
    at `now_us`. event_ids the target already holds are left alone (counted in `present`). `source` is
    never written. Raises FileNotFoundError when `source` does not exist, OutboxError /
    OutboxFullError when the target cannot be written.
    """
    report = SalvageReport(source, target.path)
    reading = _Reading()
    with readable(source) as conn:
        try:
            conn.execute("SELECT id FROM dodo_outbox_events LIMIT 0").fetchall()
        except sqlite3.DatabaseError as exc:
            report.schema_error = str(exc)
            return report
        batch: list[tuple[object, ...]] = []
        for number in range(3):
            if number == 1:
                _listed(conn, reading)
            rows = (
                _scan(conn)
                if number == 0
                else _ranges(conn, reading, report)
                if number == 1
                else _points(conn, reading, report)
            )
            for row in rows:
                row_id = int(row[0])  # type: ignore[call-overload]
                if row_id in reading.seen:
                    continue
                reading.seen.add(row_id)
                reading.top_seen = max(reading.top_seen, row_id)
                reading.row_bytes += sum(len(v) for v in row[1:] if isinstance(v, str)) + 64
                report.read += 1
                if not _intact(row[1:]):
                    report.invalid += 1
                    continue
                batch.append(_as_target_row(row[1:], now_us))
                if len(batch) >= INSERT_CHUNK:
                    _insert(target, batch, report)
                    batch = []
        _insert(target, batch, report)
    # A listed id that a later pass read after all is not lost.
    report.unreadable -= reading.seen
    return report


def _as_target_row(row: tuple[object, ...], now_us: int) -> tuple[object, ...]:
    values = list(row)
    if values[6] == "inflight":  # its worker is gone with the old file: due again now
        values[6] = "pending"
        values[9] = now_us
    return tuple(values)


def _insert(target: StoreBase, rows: list[tuple[object, ...]], report: SalvageReport) -> None:
    if not rows:
        return
    with target.write() as conn:
        for row in rows:
            if conn.execute(_INSERT, row).rowcount:
                report.copied[str(row[6])] += 1
            else:
                report.present += 1
