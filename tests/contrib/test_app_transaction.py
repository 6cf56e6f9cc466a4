"""`outbox.enqueue(event, conn=...)` on the app's own PostgreSQL transaction, for each way an app holds
one (tests/contrib/conftest.py KINDS): the event commits or vanishes with the app's own row, and the
rules (validation, duplicates, conflicts) are the same as everywhere else."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from agent.errors import EventConflictError, InvalidEventError
from agent.outbox import Outbox
from tests.builders import raw_event
from tests.contrib.conftest import KINDS, AppTransaction, stored

pytestmark = pytest.mark.parametrize("kind", KINDS)

Begin = Callable[[str], AppTransaction]


def test_a_rollback_leaves_neither_the_event_nor_the_apps_row(
    kind: str, pg_outbox: Outbox, app_transaction: Begin, postgres_url: str, pg_schema: str
) -> None:
    tx = app_transaction(kind)
    tx.add_order("o1")
    assert pg_outbox.enqueue(raw_event("gone"), conn=tx.conn).new == ["gone"]
    assert pg_outbox.enqueue_many([raw_event("gone2")], conn=tx.conn).new == ["gone2"]
    tx.rollback()
    assert stored(postgres_url, pg_schema) == ([], [])


def test_a_commit_leaves_exactly_its_events_with_the_apps_row(
    kind: str, pg_outbox: Outbox, app_transaction: Begin, postgres_url: str, pg_schema: str
) -> None:
    tx = app_transaction(kind)
    pg_outbox.enqueue(raw_event("first"), conn=tx.conn)  # before the app's own write: still inside
    tx.add_order("o1")
    result = pg_outbox.enqueue_many([raw_event("a"), raw_event("b")], conn=tx.conn)
    assert result.new == ["a", "b"] and result.source == "library"
    # Not committed by us: another connection sees nothing until the app commits.
    assert stored(postgres_url, pg_schema) == ([], [])
    tx.commit()
    assert stored(postgres_url, pg_schema) == (["first", "a", "b"], ["o1"])
    record = pg_outbox.store.get("a")
    assert record is not None and record.state == "pending"
    assert pg_outbox.store.counts()["pending"] == 3


def test_duplicates_are_reported_and_a_conflict_leaves_the_caller_to_roll_back(
    kind: str, pg_outbox: Outbox, app_transaction: Begin, postgres_url: str, pg_schema: str
) -> None:
    pg_outbox.enqueue(raw_event("kept", metadata={"n": 1}))  # already in the outbox, committed
    tx = app_transaction(kind)
    tx.add_order("o1")
    again = pg_outbox.enqueue(raw_event("kept", metadata={"n": 1}), conn=tx.conn)
    assert again.new == [] and again.duplicates == ["kept"]
    with pytest.raises(EventConflictError) as refused:
        pg_outbox.enqueue_many([raw_event("new"), raw_event("kept", metadata={"n": 2})], conn=tx.conn)
    assert refused.value.event_ids == ("kept",)
    tx.rollback()  # the contract: the app rolls back on a conflict
    assert stored(postgres_url, pg_schema) == (["kept"], [])
    record = pg_outbox.store.get("kept")
    assert record is not None and '"n":1' in record.payload.replace(" ", "")


def test_two_clashing_events_in_one_call_store_nothing_and_the_app_can_still_commit(
    kind: str, pg_outbox: Outbox, app_transaction: Begin, postgres_url: str, pg_schema: str
) -> None:
    tx = app_transaction(kind)
    tx.add_order("o1")
    with pytest.raises(EventConflictError):
        pg_outbox.enqueue_many(
            [raw_event("x", metadata={"n": 1}), raw_event("x", metadata={"n": 2})], conn=tx.conn
        )
    tx.commit()  # refused before any write: the app's transaction was not touched
    assert stored(postgres_url, pg_schema) == ([], ["o1"])


def test_an_invalid_event_is_refused_before_any_write(
    kind: str, pg_outbox: Outbox, app_transaction: Begin, postgres_url: str, pg_schema: str
) -> None:
    tx = app_transaction(kind)
    tx.add_order("o1")
    with pytest.raises(InvalidEventError) as refused:
        pg_outbox.enqueue_many([raw_event("ok"), {"event_id": "bad", "customer_id": "c"}], conn=tx.conn)
    assert "events[1].event_name" in str(refused.value)
    tx.commit()
    assert stored(postgres_url, pg_schema) == ([], ["o1"])


def test_an_enqueue_alone_is_committed_by_the_apps_commit(
    kind: str, pg_outbox: Outbox, app_transaction: Begin, postgres_url: str, pg_schema: str
) -> None:
    """Nothing else in the transaction: a fresh SQLAlchemy Connection has not begun one yet, and its
    commit() would have nothing to commit unless the enqueue began it (as SQLAlchemy's autobegin)."""
    tx = app_transaction(kind)
    pg_outbox.enqueue(raw_event("alone"), conn=tx.conn)
    tx.commit()
    assert stored(postgres_url, pg_schema) == (["alone"], [])
