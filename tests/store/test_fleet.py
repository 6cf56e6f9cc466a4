"""The fleet's shared state, on every backend: the slots (GCRA rate budget, the pause's probe) and the
agents' registry. Two stores opened on one outbox stand for two agents."""

from __future__ import annotations

import threading
import time

from agent.store import OutboxStore
from tests.store.conftest import StoreFactory

SLOT = "dodo_requests"


def test_a_budget_admits_its_burst_then_says_how_long_to_wait(store: OutboxStore) -> None:
    # 60/min = one slot a second; a burst of 3 goes at once, the 4th waits about a second.
    waits = [store.take_slot(SLOT, per_minute=60, burst=3) for _ in range(4)]
    assert waits[:3] == [0, 0, 0]
    assert 500_000 < waits[3] <= 1_000_000


def test_two_agents_share_one_budget(store_factory: StoreFactory) -> None:
    a, b = store_factory(), store_factory()
    taken = [a.take_slot(SLOT, per_minute=60, burst=2), b.take_slot(SLOT, per_minute=60, burst=2)]
    assert taken == [0, 0]
    assert a.take_slot(SLOT, per_minute=60, burst=2) > 0
    assert b.take_slot(SLOT, per_minute=60, burst=2) > 0


def test_concurrent_takers_never_get_more_than_the_burst(store_factory: StoreFactory) -> None:
    # 8 threads on 4 stores race for a budget of 5 at once and 1 a minute: exactly 5 win, however
    # the row locks interleave.
    stores = [store_factory() for _ in range(4)]
    granted: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def take(s: OutboxStore) -> None:
        start.wait()
        for _ in range(5):
            if s.take_slot(SLOT, per_minute=1, burst=5) == 0:
                with lock:
                    granted.append(1)

    threads = [threading.Thread(target=take, args=(stores[i % 4],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(granted) == 5


def test_a_hold_stops_every_agent_and_slows_the_shared_rate(store_factory: StoreFactory) -> None:
    a, b = store_factory(), store_factory()
    assert a.take_slot(SLOT, per_minute=120, burst=10) == 0
    a.hold_slot(SLOT, delay_us=30_000_000, per_minute=120, burst=10, slow_down=True)
    wait = b.take_slot(SLOT, per_minute=120, burst=10)
    assert 29_000_000 < wait <= 30_000_000 + 9 * 1_000_000  # the hold, and no burst after it
    assert b.slot_rate(SLOT) == 60.0  # halved for the fleet
    a.hold_slot(SLOT, delay_us=0, per_minute=120, burst=10, slow_down=True)
    assert b.slot_rate(SLOT) == 30.0


def test_slots_taken_while_slowed_bring_the_rate_back(store: OutboxStore) -> None:
    store.hold_slot(SLOT, delay_us=0, per_minute=100, burst=100, slow_down=True)
    assert store.slot_rate(SLOT) == 50.0
    store.reset_slot(SLOT)
    for _ in range(2):
        assert store.take_slot(SLOT, per_minute=100, burst=100, recovery=20) == 0
    assert store.slot_rate(SLOT) == 90.0
    assert store.take_slot(SLOT, per_minute=100, burst=100, recovery=20) == 0
    assert store.slot_rate(SLOT) is None  # back at the configured rate: no longer slowed


def test_an_unlimited_budget_still_honours_a_hold(store: OutboxStore) -> None:
    assert all(store.take_slot(SLOT, per_minute=0, burst=1) == 0 for _ in range(50))
    store.hold_slot(SLOT, delay_us=5_000_000, per_minute=0, burst=1, slow_down=True)
    assert 4_000_000 < store.take_slot(SLOT, per_minute=0, burst=1) <= 5_000_000
    assert store.slot_rate(SLOT) is None  # an unlimited budget is never slowed


def test_one_probe_per_interval_for_the_fleet_and_a_reset_frees_it(store_factory: StoreFactory) -> None:
    a, b = store_factory(), store_factory()
    every = 60.0 / 3600  # one probe an hour
    a.hold_slot("pause_probe", delay_us=3_600_000_000, per_minute=every, burst=1)
    assert a.take_slot("pause_probe", per_minute=every, burst=1) > 3_000_000_000
    b.reset_slot("pause_probe")  # b re-read its key: probe at once
    results = [
        a.take_slot("pause_probe", per_minute=every, burst=1),
        b.take_slot("pause_probe", per_minute=every, burst=1),
    ]
    assert sorted(r == 0 for r in results) == [False, True]  # exactly one of them probes


def test_agents_register_accumulate_and_are_forgotten(store_factory: StoreFactory) -> None:
    a, b = store_factory(), store_factory()
    a.heartbeat("host-a:1:x", host="host-a", pid=1, claimed=10, delivered=8)
    b.heartbeat("host-b:2:y", host="host-b", pid=2)
    a.heartbeat("host-a:1:x", host="host-a", pid=1, claimed=5, delivered=5, stopped=True)
    rows = {r.agent_id: r for r in b.agents()}
    assert set(rows) == {"host-a:1:x", "host-b:2:y"}
    first = rows["host-a:1:x"]
    assert (first.host, first.pid, first.claimed, first.delivered, first.stopped) == (
        "host-a",
        1,
        15,
        13,
        True,
    )
    assert rows["host-b:2:y"].stopped is False
    assert 0 <= first.seen_ago_us < 60_000_000 and first.started_us <= first.last_seen_us
    assert a.forget_agents(3_600_000_000) == 0
    time.sleep(0.01)  # the two rows must be older than the bounds below; 10 ms is plenty at 1 us
    assert a.forget_agents(3_600_000_000, stopped_unseen_for_us=1) == 1  # the stopped one goes sooner
    assert [r.agent_id for r in b.agents()] == ["host-b:2:y"]
    assert a.forget_agents(1) == 1
    assert b.agents() == []
