"""Conformance: idempotency, conflicts, retimed duplicates, atomic groups, the caller's transaction."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from agent.errors import EventConflictError
from agent.events import Event, validate_many
from agent.store import InsertResult, OutboxStore
from agent.timestamps import format_timestamp
from tests.store.conftest import CallerTransaction, StoreFactory
from tests.store.helpers import NOW, events


def test_enqueue_is_idempotent_and_conflicts_are_refused(store: OutboxStore) -> None:
    [first] = store.insert_groups([(events("a", "b"), "cli")], 1)
    assert not isinstance(first, Exception) and first.new == ["a", "b"]
    [again] = store.insert_groups([(events("a", "b", now=NOW + 5), "cli")], 2)
    assert not isinstance(again, Exception)
    assert again.new == [] and again.duplicates == ["a", "b"]
    [conflict] = store.insert_groups([(events("c", "a", n=2), "cli")], 3)
    assert isinstance(conflict, EventConflictError) and conflict.event_ids == ("a",)
    assert "never be billed" in str(conflict)
    # Atomic: the new event "c" of the refused call was not stored either.
    assert store.get("c") is None
    assert store.counts()["pending"] == 2


def test_groups_are_atomic_each_on_its_own(store: OutboxStore) -> None:
    store.insert_groups([(events("a"), "cli")], 1)
    results = store.insert_groups(
        [(events("x1", "x2"), "http"), (events("y1", "a", n=9), "http"), (events("z1"), "dropdir")], 2
    )
    assert [type(r).__name__ for r in results] == ["InsertResult", "EventConflictError", "InsertResult"]
    assert store.get("x2") is not None and store.get("z1") is not None
    assert store.get("y1") is None
    record = store.get("z1")
    assert record is not None and record.source == "dropdir"


def test_large_groups_take_the_same_rules(store: OutboxStore) -> None:
    """Over 32 rows (past the one-statement path): all new, then a duplicate among many new."""
    many = [f"m{i:03d}" for i in range(100)]
    results = store.insert_groups([(events(*many[:50]), "cli"), (events(*many[50:]), "cli")], 1)
    assert all(isinstance(r, InsertResult) and len(r.new) == 50 for r in results)
    [mixed] = store.insert_groups([(events("fresh", *many[:40]), "cli")], 2)
    assert isinstance(mixed, InsertResult) and mixed.new == ["fresh"] and mixed.duplicates == many[:40]
    assert store.counts()["pending"] == 101


def test_repeats_inside_one_call(store: OutboxStore) -> None:
    [result] = store.insert_groups([(events("a", "a"), "cli")], 1)
    assert not isinstance(result, Exception) and result.new == ["a"] and result.duplicates == ["a"]
    [bad] = store.insert_groups([(events("b") + events("b", n=1), "cli")], 1)
    assert isinstance(bad, EventConflictError)
    assert store.get("b") is None


def test_a_retimed_repeat_is_a_duplicate_naming_both_timestamps(store: OutboxStore) -> None:
    def at(seconds_ago: float) -> list[Event]:
        stamp = format_timestamp(datetime.fromtimestamp(NOW - seconds_ago, UTC))
        return validate_many(
            [{"event_id": "r", "customer_id": "c", "event_name": "n", "timestamp": stamp}], NOW
        )

    first, second = at(60), at(55)
    store.insert_groups([(first, "cli")], 1)
    [result] = store.insert_groups([(second, "cli")], 2)
    assert isinstance(result, InsertResult) and result.duplicates == ["r"] and result.new == []
    [retimed] = result.retimed
    assert (retimed.index, retimed.event_id, retimed.earlier) == (0, "r", None)
    assert (retimed.stored, retimed.given) == (first[0].timestamp, second[0].timestamp)
    assert retimed.stored != retimed.given
    record = store.get("r")
    assert record is not None and record.payload == first[0].payload  # the first event is kept


def test_insert_on_the_callers_transaction_commits_and_rolls_back_with_it(
    store: OutboxStore, caller_transaction: Callable[[], CallerTransaction]
) -> None:
    rolled = caller_transaction()
    result = store.insert_on(rolled.conn, events("gone"), "library", 1)
    assert result.new == ["gone"]
    rolled.rollback()
    assert store.get("gone") is None

    kept = caller_transaction()
    assert store.insert_on(kept.conn, events("kept", "kept2"), "library", 1).new == ["kept", "kept2"]
    kept.commit()
    record = store.get("kept")
    assert record is not None and record.state == "pending" and record.source == "library"
    assert store.counts()["pending"] == 2


def test_insert_on_the_callers_transaction_keeps_the_same_rules(
    store: OutboxStore, caller_transaction: Callable[[], CallerTransaction]
) -> None:
    store.insert_groups([(events("a"), "cli")], 1)
    tx = caller_transaction()
    again = store.insert_on(tx.conn, events("a", now=NOW + 5), "library", 2)
    assert again.new == [] and again.duplicates == ["a"]
    with pytest.raises(EventConflictError) as refused:
        store.insert_on(tx.conn, events("b", "a", n=2), "library", 3)
    assert refused.value.event_ids == ("a",)
    tx.rollback()
    assert store.get("b") is None


def test_one_event_on_the_callers_transaction_takes_the_same_rules_and_columns(
    store: OutboxStore, caller_transaction: Callable[[], CallerTransaction]
) -> None:
    # One event per call is its own statement on PostgreSQL (scalars, not arrays): same rules, same row.
    tx = caller_transaction()
    stamp = format_timestamp(datetime.fromtimestamp(NOW - 60, UTC))
    [given] = validate_many(
        [{"event_id": "one", "customer_id": "cus_1", "event_name": "api.call", "timestamp": stamp}],
        NOW,
    )
    assert store.insert_on(tx.conn, [given], "library", 7).new == ["one"]
    tx.commit()
    tx = caller_transaction()
    assert store.insert_on(tx.conn, [given], "library", 8).duplicates == ["one"]
    with pytest.raises(EventConflictError) as refused:
        store.insert_on(tx.conn, events("one", n=2), "library", 9)
    assert refused.value.event_ids == ("one",)
    tx.rollback()
    record = store.get("one")
    assert record is not None and record.payload == given.payload and record.source == "library"
    assert record.event_name == "api.call" and record.ts_us == given.ts_us and record.state == "pending"
    assert record.stamped is False and record.enqueued_at_us == 7
    assert store.counts()["pending"] == 1


def test_rows_survive_a_reopen(store_factory: StoreFactory) -> None:
    first = store_factory()
    first.insert_groups([(events("a"), "cli")], 1)
    first.close()
    assert first.closed
    assert store_factory().counts()["pending"] == 1
