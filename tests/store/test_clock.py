"""Conformance: repairing stored instants after the wall clock stepped back."""

from __future__ import annotations

from agent.store import OutboxStore
from tests.store.helpers import BIG, NOW_US, US, events


def test_shift_back_brings_future_retries_and_leases_closer_never_before_now(store: OutboxStore) -> None:
    store.insert_groups([(events("r", "l"), "cli")], 1)
    rows = {
        c.event_id: c
        for c in store.claim(now_us=NOW_US, limit=10, max_bytes=BIG, lease_us=100 * US, owner="w")
    }
    store.mark_retry([rows["r"].id], owner="w", next_attempt_us=NOW_US + 600 * US, error="503")
    assert store.shift_back(now_us=NOW_US, step_us=300 * US) == 2
    retry, leased = store.get("r"), store.get("l")
    assert retry is not None and leased is not None
    assert retry.next_attempt_at_us == NOW_US + 300 * US
    assert leased.lease_until_us == NOW_US  # never before now
    assert store.shift_back(now_us=NOW_US, step_us=300 * US) == 1  # the lease no longer lies ahead


def test_cap_future_brings_in_anything_beyond_the_longest_delay_or_lease(store: OutboxStore) -> None:
    store.insert_groups([(events("far", "near", "l"), "cli")], 1)
    rows = {
        c.event_id: c
        for c in store.claim(now_us=NOW_US, limit=10, max_bytes=BIG, lease_us=10**4 * US, owner="w")
    }
    store.mark_retry([rows["far"].id], owner="w", next_attempt_us=NOW_US + 10**5 * US, error="503")
    store.mark_retry([rows["near"].id], owner="w", next_attempt_us=NOW_US + 10 * US, error="503")
    assert store.cap_future(now_us=NOW_US, max_delay_us=3600 * US, lease_us=60 * US) == 2
    far, near, leased = store.get("far"), store.get("near"), store.get("l")
    assert far is not None and near is not None and leased is not None
    assert far.next_attempt_at_us == NOW_US and near.next_attempt_at_us == NOW_US + 10 * US
    assert leased.lease_until_us == NOW_US + 60 * US
