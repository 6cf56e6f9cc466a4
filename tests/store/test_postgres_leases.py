"""PostgreSQL leases are timed by the server's clock (`clock_timestamp()`), never the caller's `now_us`:
agents on hosts whose clocks disagree agree on when a lease ends. (SQLite's leases follow the caller's
clock: tests/store/test_sqlite.py.)"""

from __future__ import annotations

import time

from agent.store.postgres import PostgresStore
from agent.timestamps import US, to_us
from tests.store.helpers import BIG, LEASE, events
from tests.waiting import wait_until

HOURS_OFF = 3 * 3600 * US


def server_now_us(pg: PostgresStore) -> int:
    with pg.read() as conn:
        row = conn.execute("SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint").fetchone()
    assert row is not None
    return int(row[0])


def test_a_claim_from_a_host_hours_behind_still_leases_by_the_server_clock(pg: PostgresStore) -> None:
    pg.insert_groups([(events("a"), "cli")], 1)
    before = server_now_us(pg)
    behind = to_us(time.time()) - HOURS_OFF
    assert len(pg.claim(now_us=behind, limit=1, max_bytes=BIG, lease_us=LEASE, owner="w")) == 1
    after = server_now_us(pg)
    record = pg.get("a")
    assert record is not None and record.lease_until_us is not None
    assert before + LEASE <= record.lease_until_us <= after + LEASE
    # Hours behind, its own clock would call the lease long over: the server does not, so nobody
    # else's release takes the row while its holder is still sending.
    assert pg.release_expired(to_us(time.time()) + HOURS_OFF) == 0
    assert pg.counts()["inflight"] == 1


def test_a_host_hours_behind_still_releases_a_dead_workers_lease_on_time(pg: PostgresStore) -> None:
    pg.insert_groups([(events("a"), "cli")], 1)
    behind = to_us(time.time()) - HOURS_OFF
    [row] = pg.claim(now_us=behind, limit=1, max_bytes=BIG, lease_us=US // 5, owner="dead")
    # By the caller's clock the lease has hours to run; by the server's it ends in 0.2 s.
    wait_until(lambda: pg.release_expired(behind) == 1, timeout=30, what="the lease to end on the server")
    [again] = pg.claim(now_us=behind, limit=1, max_bytes=BIG, lease_us=LEASE, owner="next")
    assert again.id == row.id and again.attempts == 2


def test_a_host_clock_step_moves_retries_but_not_server_timed_leases(pg: PostgresStore) -> None:
    pg.insert_groups([(events("r", "l"), "cli")], 1)
    now = to_us(time.time())
    rows = {
        c.event_id: c for c in pg.claim(now_us=now, limit=10, max_bytes=BIG, lease_us=100 * US, owner="w")
    }
    pg.mark_retry([rows["r"].id], owner="w", next_attempt_us=now + 600 * US, error="503")
    leased = pg.get("l")
    assert leased is not None
    assert pg.shift_back(now_us=now, step_us=300 * US) == 1  # the retry only
    after = pg.get("l")
    assert after is not None and after.lease_until_us == leased.lease_until_us
    # cap_future bounds a lease by the server's now + lease, as it bounds retries by the caller's.
    assert pg.cap_future(now_us=now, max_delay_us=3600 * US, lease_us=10 * US) == 1
    capped = pg.get("l")
    assert capped is not None and capped.lease_until_us is not None
    assert capped.lease_until_us <= server_now_us(pg) + 10 * US
