"""Event-time range reads for `meters preview` and `reconcile`: the billable rows, streamed.

Served by the partial index `dodo_outbox_event_time` (ts over rows that are not dead), so a day's
range on a large outbox reads that day's rows and no others.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from agent.store.records import RangeRow, State
from agent.store.sqlite.connection import StoreBase

RANGE_SQL = (
    "SELECT event_id, event_name, ts, state, restamped, payload FROM dodo_outbox_events "
    f"WHERE ts >= ? AND ts < ? AND state <> '{State.DEAD}'"
)
_CHUNK = 5000
_IDS_PER_QUERY = 500


def billable_rows(
    db: StoreBase, from_us: int, until_us: int
) -> Iterator[tuple[str, str, int, str, int, str]]:
    """Rows not dead whose event time is in [from_us, until_us), as plain tuples
    (event_id, event_name, ts_us, state, restamped, payload): in the index's order (event time,
    then arrival), or arrival order where the index is missing; equal times come in arrival order
    either way, which is all `last` needs.

    Streamed in chunks; the process lock is held until the iterator is exhausted or closed, so
    consume it promptly (the CLI's read commands do) and close it when stopping early.
    """
    with db.read() as conn:
        cursor = conn.execute(RANGE_SQL, (from_us, until_us))
        while rows := cursor.fetchmany(_CHUNK):
            yield from rows


def rows_by_event_id(db: StoreBase, event_ids: Sequence[str]) -> dict[str, RangeRow]:
    """The rows (any state, any time) of these event ids that the outbox has."""
    found: dict[str, RangeRow] = {}
    with db.read() as conn:
        for start in range(0, len(event_ids), _IDS_PER_QUERY):
            chunk = list(event_ids[start : start + _IDS_PER_QUERY])
            marks = ",".join("?" * len(chunk))
            for row in conn.execute(
                "SELECT event_id, event_name, ts, state, restamped, payload FROM dodo_outbox_events "
                f"WHERE event_id IN ({marks})",
                chunk,
            ):
                found[row[0]] = RangeRow(row[0], row[1], int(row[2]), row[3], bool(row[4]), row[5])
    return found


def explain_billable_rows(db: StoreBase) -> list[str]:
    """The query plan of the range read (a test asserts it uses the event-time index)."""
    with db.read() as conn:
        rows = conn.execute("EXPLAIN QUERY PLAN " + RANGE_SQL, (0, 1)).fetchall()
    return [str(row[-1]) for row in rows]
