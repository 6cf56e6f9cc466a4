"""Conformance: the dead-letter queue: listing, counting, replay (with restamp), purge, top reasons."""

from __future__ import annotations

from agent.store import DeadFilter, OutboxStore
from tests.ops_helpers import add_dead, add_delivered, add_pending, us
from tests.store.helpers import NOW, NOW_US, US


def _dead_ids(store: OutboxStore, where: DeadFilter) -> list[str]:
    return [r.event_id for r in store.dead_rows(where, limit=100)]


def test_filters_select_exactly_their_rows(store: OutboxStore) -> None:
    add_dead(store, ["r1", "r2"], now=NOW - 7200, reason="rejected")
    add_dead(store, ["t1"], now=NOW - 60, reason="too_large", status=413)
    add_delivered(store, ["d1"])
    add_pending(store, ["p1"])
    assert _dead_ids(store, DeadFilter(all=True)) == ["r1", "r2", "t1"]
    assert _dead_ids(store, DeadFilter(reason="rejected")) == ["r1", "r2"]
    assert _dead_ids(store, DeadFilter(event_ids=("t1", "d1", "p1"))) == ["t1"]  # dead ones only
    assert _dead_ids(store, DeadFilter()) == []  # an empty filter selects nothing
    assert _dead_ids(store, DeadFilter(all=True, since_us=us(NOW - 3600))) == ["t1"]
    assert store.count_dead(DeadFilter(all=True)) == 3
    assert store.count_dead(DeadFilter(all=True), older_than_us=us(NOW - 3600)) == 2
    assert store.count_late(DeadFilter(all=True), us(NOW - 3600)) == 2
    assert store.top_dead_reasons() == [("rejected", 2), ("too_large", 1)]
    assert store.top_dead_reasons(limit=1) == [("rejected", 2)]


def test_dead_rows_page_by_id_and_iterate_in_chunks(store: OutboxStore) -> None:
    ids = [f"x{i}" for i in range(7)]
    add_dead(store, ids)
    first = store.dead_rows(DeadFilter(all=True), limit=3)
    assert [r.event_id for r in first] == ids[:3]
    rest = store.dead_rows(DeadFilter(all=True), limit=10, after_id=first[-1].id)
    assert [r.event_id for r in rest] == ids[3:]
    assert [r.event_id for r in store.iter_dead(DeadFilter(all=True), chunk=2)] == ids


def test_replay_moves_dead_rows_back_to_pending_reset(store: OutboxStore) -> None:
    add_dead(store, ["a", "b", "c"], reason="rejected", status=400)
    add_dead(store, ["z"], reason="too_large", status=413)
    steps = list(store.replay(DeadFilter(reason="rejected"), now_us=NOW_US, chunk=2))
    assert [s.moved for s in steps] == [2, 1] and all(s.restamped == 0 for s in steps)
    assert (
        sum(s.moved for s in store.replay(DeadFilter(reason="rejected"), now_us=NOW_US)) == 0
    )  # no longer dead
    record = store.get("a")
    assert record is not None
    assert (record.state, record.attempts, record.reason, record.http_status, record.response) == (
        "pending",
        0,
        None,
        None,
        None,
    )
    assert record.last_error is not None and "was: rejected (HTTP 400)" in record.last_error
    assert store.counts() == {"pending": 3, "inflight": 0, "delivered": 0, "dead": 1}
    [due] = store.claim(now_us=NOW_US, limit=1, max_bytes=1 << 20, lease_us=US, owner="w")
    assert due.event_id == "a"  # due now


def test_replay_with_restamp_keeps_the_original_timestamp(store: OutboxStore) -> None:
    add_dead(store, ["late"], now=NOW - 7200)
    add_dead(store, ["fresh"], now=NOW - 60)
    before = store.get("late")
    assert before is not None
    [step] = store.replay(DeadFilter(all=True), now_us=NOW_US, restamp_before_us=us(NOW - 3600))
    assert (step.moved, step.restamped) == (2, 1)
    late, fresh = store.get("late"), store.get("fresh")
    assert late is not None and fresh is not None
    assert late.restamped and late.ts_us == NOW_US and late.original_ts_us == before.ts_us
    assert late.payload.endswith(f'"timestamp":"{late.event["timestamp"]}"}}')  # still canonical
    assert late.last_error is not None and "original timestamp" in late.last_error
    assert not fresh.restamped and fresh.original_ts_us is None
    # A second death and replay keeps the first original.
    claimed = store.claim(now_us=NOW_US, limit=10, max_bytes=1 << 20, lease_us=US, owner="w")
    assert [c.event_id for c in claimed] == ["fresh", "late"]  # event time: late is now-stamped
    row = claimed[1]
    store.mark_dead([row.id], owner="w", now_us=NOW_US, reason="rejected", http_status=400, response="")
    list(store.replay(DeadFilter(event_ids=("late",)), now_us=NOW_US + US, restamp_before_us=NOW_US + 2 * US))
    again = store.get("late")
    assert again is not None and again.original_ts_us == before.ts_us and again.ts_us == NOW_US + US


def test_the_original_event_enqueued_again_after_a_restamp_is_a_duplicate(store: OutboxStore) -> None:
    add_dead(store, ["a1"], now=NOW - 7200)
    list(store.replay(DeadFilter(all=True), now_us=NOW_US, restamp_before_us=us(NOW - 3600)))
    add_pending(store, ["b1"])  # b1 is new; a1 below is the same event the producer sent before
    from tests.ops_helpers import evs

    [result] = store.insert_groups([(evs(["a1"], NOW), "cli")], NOW_US)
    assert not isinstance(result, Exception) and result.duplicates == ["a1"] and result.new == []


def test_purge_deletes_exactly_the_old_dead_rows(store: OutboxStore) -> None:
    add_dead(store, ["o1", "o2", "o3"], now=NOW - 7200, reason="rejected")
    add_dead(store, ["o4"], now=NOW - 7200, reason="too_large")
    add_dead(store, ["n1"], now=NOW - 60)
    add_delivered(store, ["d1"], now=NOW - 7200)
    assert store.purge_dead(us(NOW - 3600), reason="too_large") == 1
    assert store.purge_dead(us(NOW - 3600), chunk=2) == 3
    assert store.get("o1") is None and store.get("n1") is not None
    assert store.counts() == {"pending": 0, "inflight": 0, "delivered": 1, "dead": 1}
