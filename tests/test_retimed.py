"""A producer's retry that rebuilt the event with another timestamp is a duplicate, not a conflict; two
events of one call that clash are both refused (issue 11). Every insert path: the single-call autocommit
fast path, group commit of several calls, the transactional outbox, inside one call and across calls."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from agent import EventConflictError, Outbox
from agent.events import validate_many
from agent.store import Store
from agent.timestamps import format_timestamp, parse_timestamp


def at(seconds_ago: float) -> str:
    return format_timestamp(
        parse_timestamp(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - seconds_ago)))
    )


def event(i: int | str, ts: str | None = None, **meta: object) -> dict[str, object]:
    found: dict[str, object] = {"event_id": f"e{i}", "customer_id": "cus_1", "event_name": "api.call"}
    if ts is not None:
        found["timestamp"] = ts
    if meta:
        found["metadata"] = meta
    return found


def stored_payload(path: str | Path, event_id: str) -> str:
    with sqlite3.connect(path) as conn:
        return str(
            conn.execute("SELECT payload FROM dodo_outbox_events WHERE event_id = ?", (event_id,)).fetchone()[
                0
            ]
        )


def test_a_retimed_retry_across_calls_is_a_duplicate_keeping_the_stored_event(tmp_path: Path) -> None:
    first, second = at(120), at(60)
    with Outbox(tmp_path / "o.db") as outbox:
        assert outbox.enqueue(event(1, first, n=1)).new == ["e1"]
        kept = stored_payload(outbox.path, "e1")
        # The single-event autocommit fast path, then a many-event call (transaction path).
        for result in (
            outbox.enqueue(event(1, second, n=1)),
            outbox.enqueue_many([event(2), event(1, second, n=1)]),
        ):
            assert "e1" in result.duplicates and "e1" not in result.new
            [note] = result.notes()
            assert "only timestamp differs" in note.message
            assert first in note.message and second in note.message and "kept the stored one" in note.message
        assert result.new == ["e2"] and result.ingested_count == 1
        assert result.notes()[0].path == "events[1].timestamp"
        assert stored_payload(outbox.path, "e1") == kept


def test_a_retimed_repeat_inside_one_call_is_a_duplicate(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db") as outbox:
        result = outbox.enqueue_many([event(1, at(90), n=1), event(2), event(1, at(30), n=1)])
        assert result.new == ["e1", "e2"] and result.duplicates == ["e1"]
        [note] = result.notes()
        assert note.path == "events[2].timestamp" and "events[0]" in note.message
        assert '"n":1' in stored_payload(outbox.path, "e1")


@pytest.mark.parametrize(
    "change", [{"customer_id": "cus_2"}, {"event_name": "other"}, {"metadata": {"n": 2}}]
)
def test_any_other_difference_stays_a_conflict(tmp_path: Path, change: dict[str, object]) -> None:
    with Outbox(tmp_path / "o.db") as outbox:
        outbox.enqueue(event(1, at(90), n=1))
        with pytest.raises(EventConflictError):
            outbox.enqueue({**event(1, at(30), n=1), **change})
        with pytest.raises(EventConflictError):
            outbox.enqueue_many([event(3), {**event(1, at(30), n=1), **change}])
        assert Store(outbox.path).get("e3") is None


def test_group_commit_of_several_calls_takes_a_retimed_retry_as_a_duplicate(tmp_path: Path) -> None:
    with Store(tmp_path / "o.db") as store:
        now = time.time()
        [stored] = store.insert_groups([(validate_many([event(1, at(90), n=1)], now), "library")], 1)
        assert not isinstance(stored, Exception)
        groups = [
            (validate_many([event(2)], now), "library"),
            (validate_many([event(1, at(30), n=1)], now), "http"),
            (validate_many([event(3), event(1, at(20), n=2)], now), "cli"),
        ]
        new, retry, conflict = store.insert_groups(groups, 2)
        assert not isinstance(new, Exception) and new.new == ["e2"]
        assert not isinstance(retry, Exception) and retry.duplicates == ["e1"] and len(retry.retimed) == 1
        assert isinstance(conflict, EventConflictError)
        assert store.get("e3") is None


def test_the_transactional_outbox_takes_a_retimed_retry_as_a_duplicate(tmp_path: Path) -> None:
    app = sqlite3.connect(tmp_path / "app.db", isolation_level=None)
    with Outbox(tmp_path / "unused.db") as outbox:
        app.execute("BEGIN")
        outbox.enqueue(event(1, at(90), n=1), conn=app)
        app.execute("COMMIT")
        app.execute("BEGIN")
        result = outbox.enqueue(event(1, at(30), n=1), conn=app)
        app.execute("COMMIT")
        assert result.duplicates == ["e1"] and "only timestamp differs" in result.notes()[0].message
    app.close()


def test_two_clashing_events_in_one_call_are_both_refused_and_not_called_stored(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db") as outbox:
        with pytest.raises(EventConflictError) as info:
            outbox.enqueue_many([event(1, n=1), event(2), event(1, n=2)])
        assert [(c.index, c.other) for c in info.value.conflicts] == [(0, 2), (2, 0)]
        assert "already stored" not in str(info.value) and "both refused" in str(info.value)
        assert "already" not in info.value.conflicts[0].reason()
        assert Store(outbox.path).counts()["pending"] == 0


def test_a_conflict_error_without_positions_still_names_every_event() -> None:
    # E.g. raised by a checker or an older caller: intakes locate the refused events by id.
    error = EventConflictError(["e1"])
    assert [(c.index, c.stored) for c in error.located(["e0", "e1", "e2", "e1"])] == [(1, True), (3, True)]
    assert "already stored" in str(error)
