"""Conformance: retention prunes delivered rows and the request log in bounded chunks, never dead rows."""

from __future__ import annotations

from agent.store import OutboxStore
from tests.ops_helpers import add_dead, add_delivered, add_pending, us
from tests.store.helpers import NOW

HOUR = 3600


def test_prune_delivered_takes_only_old_delivered_rows_in_bounded_chunks(store: OutboxStore) -> None:
    add_delivered(store, [f"old{i}" for i in range(25)], now=NOW - 5 * HOUR)
    add_delivered(store, ["new"], now=NOW - HOUR)
    add_dead(store, ["dead"], now=NOW - 50 * HOUR)
    add_pending(store, ["pend"], now=NOW - 50 * HOUR)
    # At most max_chunks transactions of `chunk` rows per call; the next call continues.
    assert store.prune_delivered(us(NOW - 4 * HOUR), chunk=10, max_chunks=2) == 20
    assert store.prune_delivered(us(NOW - 4 * HOUR), chunk=10, max_chunks=2) == 5
    assert store.prune_delivered(us(NOW - 4 * HOUR)) == 0
    assert store.counts() == {"pending": 1, "inflight": 0, "delivered": 1, "dead": 1}
    assert store.get("old0") is None and store.get("new") is not None
    # Even a cutoff in the future prunes no dead or pending row.
    assert store.prune_delivered(us(NOW + HOUR)) == 1
    assert store.get("dead") is not None and store.get("pend") is not None


def test_prune_requests_takes_only_old_request_log_rows(store: OutboxStore) -> None:
    for hours_ago in (0.5, 2.5, 6, 7):
        store.record_request(
            now_us=us(NOW - hours_ago * HOUR), status=200, outcome="delivered", events=1, delivered=1
        )
    assert store.prune_requests(us(NOW - 4 * HOUR), chunk=1) == 2
    assert store.window_rates(us(NOW), (24 * HOUR,))[0].requests == 2
