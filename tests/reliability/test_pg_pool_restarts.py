"""The PostgreSQL store's pool under threads while the server crashes again and again.

Several threads share one store (its psycopg_pool pool: more threads than connections, as in the agent,
where the senders, the HTTP committer and the scheduler share it) and hammer small transactions (an
insert of one event, a kv upsert, a read) while the server is restarted `-m immediate` in a loop on a
cluster of this test alone. Calls fail while the server is down (OutboxError); after each restart every
thread must get through again. A thread that makes no progress for PROGRESS_DEADLINE seconds is a store
call waiting forever (the hang once seen after a crash, see test_pg_crash.py's WEDGE): the test fails
with the stuck threads' stacks.
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from collections import Counter

import pytest

from agent.bench.pgcluster import Cluster
from agent.errors import OutboxError
from agent.events import validate_many
from agent.store import StoreOptions, open_store
from tests.reliability.conftest import report

THREADS = 6
"""More than the pool's 4 connections: some callers wait in the pool's queue, as in the agent."""
RESTARTS = 8
CALLS_AFTER_RESTART = 5
"""Each thread completes this many calls after a restart before the next one."""
PROGRESS_DEADLINE = 45.0
"""Generous: the pool reconnects in about a second; a store call that is still waiting is stuck."""


class Hammer:
    """THREADS threads, each calling the store in a loop until `stop`; counts completed calls."""

    def __init__(self, url: str, schema: str) -> None:
        self.store = open_store(url, StoreOptions(schema=schema, busy_timeout_ms=1000))
        self.done = [0] * THREADS
        self.errors: Counter[str] = Counter()
        self.unexpected: list[str] = []
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=self._run, args=(n,), name=f"hammer-{n}", daemon=True)
            for n in range(THREADS)
        ]

    def start(self) -> Hammer:
        for thread in self.threads:
            thread.start()
        return self

    def _run(self, n: int) -> None:
        calls = 0
        while not self.stop.is_set():
            calls += 1
            try:
                self._call(n, calls)
            except OutboxError as exc:  # the server is down or just came back: expected
                self.errors[type(exc).__name__] += 1
                continue
            except Exception:  # anything else is a bug: recorded, the thread goes on
                self.unexpected.append(traceback.format_exc())
                continue
            self.done[n] += 1

    def _call(self, n: int, calls: int) -> None:
        now_us = int(time.time() * 1_000_000)
        kind = calls % 3
        if kind == 0:
            event = {"event_id": f"t{n}-{calls}", "customer_id": "c", "event_name": "api_call"}
            [valid] = validate_many([event], now=time.time())
            self.store.insert_groups([([valid], "test")], now_us)
        elif kind == 1:
            self.store.kv_set(f"k{n}", str(calls), now_us)
        else:
            self.store.kv_get(f"k{n}")

    def stuck(self, since: list[int]) -> list[int]:
        return [n for n in range(THREADS) if self.done[n] < since[n] + CALLS_AFTER_RESTART]

    def stacks(self, which: list[int]) -> str:
        frames = sys._current_frames()
        lines: list[str] = []
        for n in which:
            thread = self.threads[n]
            frame = frames.get(thread.ident or -1)
            stack = "".join(traceback.format_stack(frame)) if frame is not None else "(gone)\n"
            lines.append(f"--- {thread.name}\n{stack}")
        return "".join(lines)

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(PROGRESS_DEADLINE)
        self.store.close()


def test_threads_on_one_pool_get_through_every_crash_of_the_server(
    pg_cluster: Cluster, request: pytest.FixtureRequest
) -> None:
    hammer = Hammer(pg_cluster.url, "restart_outbox").start()
    try:
        for restart in range(RESTARTS + 1):
            since = list(hammer.done)
            deadline = time.monotonic() + PROGRESS_DEADLINE
            while hammer.stuck(since) and time.monotonic() < deadline:
                time.sleep(0.05)
            stuck = hammer.stuck(since)
            assert not stuck, (
                f"after restart {restart} of {RESTARTS}, threads {stuck} made no progress for "
                f"{PROGRESS_DEADLINE:g} s: a store call waits forever. Stacks:\n{hammer.stacks(stuck)}"
            )
            if restart < RESTARTS:
                pg_cluster.restart("immediate")
    finally:
        hammer.close()
    assert not hammer.unexpected, hammer.unexpected[0]
    assert all(not thread.is_alive() for thread in hammer.threads)
    report(
        request,
        f"pg pool restarts: {RESTARTS} crashes, {sum(hammer.done)} calls done by {THREADS} threads, "
        f"failed while down: {dict(hammer.errors)}",
    )
