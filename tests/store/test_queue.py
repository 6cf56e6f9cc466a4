"""Conformance: claim order and budget, leases, attempts, transitions guarded against stale workers."""

from __future__ import annotations

import time

from agent.store import OutboxStore, State
from agent.timestamps import to_us
from tests.store.helpers import BIG, LEASE, NOW, NOW_US, US, events


def test_claim_order_leases_and_attempts(store: OutboxStore) -> None:
    store.insert_groups([(events("new", now=NOW), "cli")], 1)
    store.insert_groups([(events("old", now=NOW - 600), "cli")], 2)
    claimed = store.claim(now_us=NOW_US, limit=10, max_bytes=BIG, lease_us=LEASE, owner="w1")
    assert [c.event_id for c in claimed] == ["old", "new"]
    assert [c.attempts for c in claimed] == [1, 1]
    assert store.counts()["inflight"] == 2
    assert store.claim(now_us=NOW_US, limit=10, max_bytes=BIG, lease_us=LEASE, owner="w2") == []


def test_claim_takes_at_most_limit_in_event_time_order(store: OutboxStore) -> None:
    for age in (10, 30, 20):
        store.insert_groups([(events(f"t{age}", now=NOW - age), "cli")], 1)
    [first] = store.claim(now_us=NOW_US, limit=1, max_bytes=BIG, lease_us=LEASE, owner="w")
    assert first.event_id == "t30"
    rest = store.claim(now_us=NOW_US, limit=5, max_bytes=BIG, lease_us=LEASE, owner="w")
    assert [c.event_id for c in rest] == ["t20", "t10"]


def test_claim_respects_byte_budget_but_always_takes_one(store: OutboxStore) -> None:
    store.insert_groups([(events("a", "b", "c"), "cli")], 1)
    record = store.get("a")
    assert record is not None
    size = len(record.payload) + 1
    assert len(store.claim(now_us=NOW_US, limit=10, max_bytes=size * 2, lease_us=LEASE, owner="w")) == 2
    assert len(store.claim(now_us=NOW_US, limit=10, max_bytes=1, lease_us=LEASE, owner="w")) == 1


def test_claimed_rows_carry_what_the_sender_needs(store: OutboxStore) -> None:
    [event] = events("a")
    store.insert_groups([([event], "cli")], 7)
    before = to_us(time.time())
    [row] = store.claim(now_us=before, limit=10, max_bytes=BIG, lease_us=LEASE, owner="w")
    after = to_us(time.time())
    assert (row.event_id, row.ts_us, row.payload, row.enqueued_at_us) == ("a", event.ts_us, event.payload, 7)
    record = store.get("a")
    assert record is not None and record.state == State.INFLIGHT
    # now + lease by the clock that times leases: the caller's, or (PostgreSQL) the server's, which
    # for the test's server on this host reads the same wall clock (1 ms for rounding).
    assert record.lease_until_us is not None
    assert before + LEASE - 1000 <= record.lease_until_us <= after + LEASE + 1000


def test_claim_skips_rows_not_yet_due(store: OutboxStore) -> None:
    store.insert_groups([(events("a"), "cli")], 1)
    [row] = store.claim(now_us=NOW_US, limit=10, max_bytes=BIG, lease_us=LEASE, owner="w")
    moved = store.mark_retry(
        [row.id], owner="w", next_attempt_us=NOW_US + 60 * US, error="503 Service Unavailable"
    )
    assert moved == 1
    assert store.next_due_us() == NOW_US + 60 * US
    assert store.claim(now_us=NOW_US + 59 * US, limit=10, max_bytes=BIG, lease_us=LEASE, owner="w") == []
    [again] = store.claim(now_us=NOW_US + 61 * US, limit=10, max_bytes=BIG, lease_us=LEASE, owner="w")
    assert again.attempts == 2
    record = store.get("a")
    assert record is not None and record.last_error == "503 Service Unavailable"


def test_refund_gives_the_attempt_back(store: OutboxStore) -> None:
    store.insert_groups([(events("a"), "cli")], 1)
    [row] = store.claim(now_us=NOW_US, limit=10, max_bytes=BIG, lease_us=LEASE, owner="w")
    store.mark_retry([row.id], owner="w", next_attempt_us=0, error="401: key refused", refund=True)
    record = store.get("a")
    assert record is not None and record.attempts == 0


def test_stale_worker_cannot_move_a_delivered_row(store: OutboxStore) -> None:
    store.insert_groups([(events("a"), "cli")], 1)
    now = NOW_US
    [row] = store.claim(now_us=now, limit=10, max_bytes=BIG, lease_us=1, owner="stale")
    # The stale worker's lease expires; another worker takes the row over and delivers it.
    assert store.release_expired(now + 2 * US) == 1
    [taken] = store.claim(now_us=now + 2 * US, limit=10, max_bytes=BIG, lease_us=LEASE, owner="fresh")
    assert taken.attempts == 2
    assert store.mark_delivered([taken.id], owner="fresh", now_us=now + 3 * US) == 1
    # The stale worker wakes up and tries every transition: none applies.
    assert store.mark_retry([row.id], owner="stale", next_attempt_us=now, error="late") == 0
    dead = store.mark_dead(
        [row.id], owner="stale", now_us=now, reason="rejected", http_status=400, response="{}"
    )
    assert dead == 0
    assert store.mark_delivered([row.id], owner="stale", now_us=now) == 0
    record = store.get("a")
    assert record is not None and record.state == "delivered"
    # Nor can anyone settle a delivered row again.
    again = store.mark_dead(
        [taken.id], owner="fresh", now_us=now, reason="rejected", http_status=400, response="{}"
    )
    assert again == 0


def test_a_lost_lease_claimed_again_cannot_be_settled_by_its_first_owner(store: OutboxStore) -> None:
    """The row is inflight again, under another owner: the first owner's settle must not apply."""
    store.insert_groups([(events("a"), "cli")], 1)
    [row] = store.claim(now_us=NOW_US, limit=10, max_bytes=BIG, lease_us=1, owner="first")
    assert store.release_expired(NOW_US + 2 * US) == 1
    [taken] = store.claim(now_us=NOW_US + 2 * US, limit=10, max_bytes=BIG, lease_us=LEASE, owner="second")
    assert taken.id == row.id
    assert store.mark_delivered([row.id], owner="first", now_us=NOW_US + 3 * US) == 0
    assert store.mark_retry([row.id], owner="first", next_attempt_us=0, error="late", refund=True) == 0
    dead = store.mark_dead(
        [row.id], owner="first", now_us=NOW_US, reason="rejected", http_status=400, response="{}"
    )
    assert dead == 0
    record = store.get("a")
    assert record is not None and record.state == "inflight" and record.attempts == 2
    assert store.mark_delivered([taken.id], owner="second", now_us=NOW_US + 4 * US) == 1


def test_each_claim_of_one_worker_is_its_own_token(store: OutboxStore) -> None:
    """One worker, two batches (the worker's claims are `<owner>/<batch>`): the batch that lost its
    lease cannot settle the rows its sibling batch claimed again, by any transition."""
    store.insert_groups([(events("a", "b"), "cli")], 1)
    stale = store.claim(now_us=NOW_US, limit=10, max_bytes=BIG, lease_us=1, owner="host:7:w/b1")
    assert store.release_expired(NOW_US + 2 * US) == 2
    fresh = store.claim(now_us=NOW_US + 2 * US, limit=10, max_bytes=BIG, lease_us=LEASE, owner="host:7:w/b2")
    ids = [c.id for c in stale]
    assert sorted(ids) == sorted(c.id for c in fresh)
    assert store.mark_retry(ids, owner="host:7:w/b1", next_attempt_us=0, error="503") == 0
    assert store.mark_delivered(ids, owner="host:7:w/b1", now_us=NOW_US + 3 * US) == 0
    assert (
        store.mark_dead(ids, owner="host:7:w/b1", now_us=NOW_US, reason="x", http_status=400, response="")
        == 0
    )
    assert store.mark_retry(ids, owner="host:7:w", next_attempt_us=0, error="503") == 0  # the bare worker
    assert store.counts()["inflight"] == 2
    assert store.mark_delivered(ids, owner="host:7:w/b2", now_us=NOW_US + 4 * US) == 2


def test_a_pending_row_cannot_be_settled(store: OutboxStore) -> None:
    store.insert_groups([(events("a"), "cli")], 1)
    [row] = store.claim(now_us=NOW_US, limit=10, max_bytes=BIG, lease_us=LEASE, owner="w")
    assert store.mark_retry([row.id], owner="w", next_attempt_us=0, error="503") == 1
    assert store.mark_delivered([row.id], owner="w", now_us=NOW_US) == 0
    assert store.mark_retry([row.id], owner="w", next_attempt_us=0, error="503") == 0
    assert store.counts()["pending"] == 1


def test_settle_counts_only_the_rows_that_moved(store: OutboxStore) -> None:
    ids = [f"e{i:04d}" for i in range(1200)]
    store.insert_groups([(events(*ids), "cli")], 1)
    claimed = store.claim(now_us=NOW_US, limit=2000, max_bytes=1 << 30, lease_us=LEASE, owner="w")
    assert len(claimed) == 1200
    assert store.mark_delivered([c.id for c in claimed] + [10**9], owner="w", now_us=NOW_US) == 1200
    assert store.mark_delivered([], owner="w", now_us=NOW_US) == 0
    assert store.counts()["delivered"] == 1200


def test_release_expired_only_touches_expired_leases(store: OutboxStore) -> None:
    store.insert_groups([(events("a", "b"), "cli")], 1)
    now = NOW_US
    store.claim(now_us=now, limit=1, max_bytes=BIG, lease_us=1, owner="w1")
    store.claim(now_us=now, limit=1, max_bytes=BIG, lease_us=100 * US, owner="w2")
    assert store.release_expired(now + 50 * US) == 1
    assert store.counts() == {"pending": 1, "inflight": 1, "delivered": 0, "dead": 0}
    [again] = store.claim(now_us=now + 50 * US, limit=10, max_bytes=BIG, lease_us=LEASE, owner="w3")
    assert again.attempts == 2  # the attempt of the dead worker still counts


def test_dead_rows_keep_reason_status_and_bounded_response(store: OutboxStore) -> None:
    store.insert_groups([(events("a"), "cli")], 1)
    [row] = store.claim(now_us=NOW_US, limit=10, max_bytes=BIG, lease_us=LEASE, owner="w")
    store.mark_dead(
        [row.id], owner="w", now_us=NOW_US, reason="rejected", http_status=422, response="x" * 10_000
    )
    record = store.get("a")
    assert record is not None
    assert (record.state, record.reason, record.http_status) == ("dead", "rejected", 422)
    assert record.response is not None and 0 < len(record.response) <= 2000
    assert record.settled_at_us == NOW_US


def test_delivered_rows_record_the_restamp(store: OutboxStore) -> None:
    store.insert_groups([(events("a", "b"), "cli")], 1)
    rows = store.claim(now_us=NOW_US, limit=10, max_bytes=BIG, lease_us=LEASE, owner="w")
    ids = {c.event_id: c.id for c in rows}
    assert store.mark_delivered(list(ids.values()), owner="w", now_us=NOW_US, restamped=[ids["a"]]) == 2
    a, b = store.get("a"), store.get("b")
    assert a is not None and b is not None and a.restamped and not b.restamped
    assert a.settled_at_us == NOW_US


def test_a_stale_claim_cannot_flag_rows_as_restamped(store: OutboxStore) -> None:
    """The restamp flag moves with the delivery it belongs to: a batch that lost its lease flags
    nothing, and the batch that holds the rows flags exactly its own."""
    store.insert_groups([(events("a", "b"), "cli")], 1)
    stale = store.claim(now_us=NOW_US, limit=10, max_bytes=BIG, lease_us=1, owner="w/1")
    assert store.release_expired(NOW_US + 2 * US) == 2
    fresh = {
        c.event_id: c.id
        for c in store.claim(now_us=NOW_US + 2 * US, limit=10, max_bytes=BIG, lease_us=LEASE, owner="w/2")
    }
    ids = [c.id for c in stale]
    assert store.mark_delivered(ids, owner="w/1", now_us=NOW_US, restamped=ids) == 0
    assert store.mark_delivered(list(fresh.values()), owner="w/2", now_us=NOW_US, restamped=[fresh["b"]]) == 2
    a, b = store.get("a"), store.get("b")
    assert a is not None and b is not None
    assert (a.state, a.restamped, b.state, b.restamped) == ("delivered", False, "delivered", True)


def test_counts_and_oldest_pending(store: OutboxStore) -> None:
    assert store.oldest_pending_ts_us() is None
    assert store.next_due_us() is None
    oldest = events("a", now=NOW - 100)
    store.insert_groups([(oldest, "cli"), (events("b", now=NOW - 50), "cli")], 1)
    assert store.oldest_pending_ts_us() == oldest[0].ts_us
    assert store.oldest_pending_enqueued_us() == 1
    store.claim(now_us=NOW_US, limit=1, max_bytes=BIG, lease_us=LEASE, owner="w")
    # The oldest is inflight now: still undelivered, still counted.
    assert store.oldest_pending_ts_us() == oldest[0].ts_us
    assert store.backlog() == 2
