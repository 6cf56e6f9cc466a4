"""Conformance: repairing stored instants after the wall clock stepped back.

Retry times are on the caller's clock on every backend, so their repair is stated here. Leases are on
the backend's lease clock (agent/store/base.py): SQLite's follow the caller's clock and are repaired
with it (tests/store/test_sqlite.py); PostgreSQL's follow the server's, which a host's step does not
move (tests/store/test_postgres.py).
"""

from __future__ import annotations

from agent.store import OutboxStore
from tests.store.helpers import BIG, NOW_US, US, events


def test_shift_back_brings_future_retries_closer_never_before_now(store: OutboxStore) -> None:
    store.insert_groups([(events("r", "s"), "cli")], 1)
    rows = {
        c.event_id: c
        for c in store.claim(now_us=NOW_US, limit=10, max_bytes=BIG, lease_us=100 * US, owner="w")
    }
    store.mark_retry([rows["r"].id], owner="w", next_attempt_us=NOW_US + 600 * US, error="503")
    store.mark_retry([rows["s"].id], owner="w", next_attempt_us=NOW_US + 100 * US, error="503")
    assert store.shift_back(now_us=NOW_US, step_us=300 * US) == 2
    far, near = store.get("r"), store.get("s")
    assert far is not None and near is not None
    assert far.next_attempt_at_us == NOW_US + 300 * US
    assert near.next_attempt_at_us == NOW_US  # never before now
    assert store.shift_back(now_us=NOW_US, step_us=300 * US) == 1  # "s" no longer lies ahead


def test_cap_future_brings_in_retries_beyond_the_longest_delay(store: OutboxStore) -> None:
    store.insert_groups([(events("far", "near"), "cli")], 1)
    rows = {
        c.event_id: c
        for c in store.claim(now_us=NOW_US, limit=10, max_bytes=BIG, lease_us=10**4 * US, owner="w")
    }
    store.mark_retry([rows["far"].id], owner="w", next_attempt_us=NOW_US + 10**5 * US, error="503")
    store.mark_retry([rows["near"].id], owner="w", next_attempt_us=NOW_US + 10 * US, error="503")
    assert store.cap_future(now_us=NOW_US, max_delay_us=3600 * US, lease_us=60 * US) == 1
    far, near = store.get("far"), store.get("near")
    assert far is not None and near is not None
    assert far.next_attempt_at_us == NOW_US and near.next_attempt_at_us == NOW_US + 10 * US
