"""Fleet chaos: three `run` processes drain one PostgreSQL outbox, killed and stalled, against a faulty Dodo.

What runs:
- PostgreSQL (the suite's throwaway cluster, one schema for the outbox, one for the app's own table);
- the Dodo emulator in its own process, answering a share of 5xx, hanging (timeouts), cutting
  connections, storing a batch and then cutting the connection (lost acks), and bursts of 429;
- three `python -m agent run` on the same `[outbox] url` + `schema`;
- app producers (own processes): each transaction inserts an order row in the app's table and enqueues
  its 1-8 events with `outbox.enqueue_many(events, conn=app_conn)` on the same psycopg connection, then
  commits, or (a share, decided after the enqueue) rolls back;
- agents killed with SIGKILL at chosen points: `claimed` (it holds leased rows: before or at the POST),
  `during` (Dodo holds the requests: mid-POST), `after` (its rows were just settled), and restarted;
- once, an agent SIGSTOPped while it holds rows and Dodo holds its request, until the lease has passed
  and the others delivered its rows; then SIGCONTed: it must log `lease_lost` and move none of them.

At the end (faults off, drained): every committed event is at Dodo (0 lost); no rolled-back event is at
Dodo or in the outbox; the app's orders are exactly the committed transactions; no request carried more
than 1000 events (the emulator's request log); the stalled agent's rows kept the delivery the others
made; `status --json` agrees with Dodo; the fleet's worst 60-second request window stays within its one
shared budget.

CI mode takes about a minute. The long mode (`DODO_OUTBOX_FLEET_CHAOS=long`) runs minutes with more
load and kills. `DODO_OUTBOX_CHAOS_SEED=N` repeats a run's choices (timing still varies).
"""

from __future__ import annotations

import os
import random
import signal
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.reliability.conftest import report
from tests.reliability.fleet import (
    Fleet,
    budget_allows,
    held_by,
    read_verdicts,
    request_times,
    start_producer,
    worst_window,
)
from tests.reliability.helpers import AgentProcess, EmulatorProcess, status_json, wait_until
from tests.reliability.test_chaos import FAULTS  # the SQLite chaos test's faults, the same Dodo

MODE = os.environ.get("DODO_OUTBOX_FLEET_CHAOS", "ci").strip().lower()
AGENTS = 3
REQUESTS_PER_MINUTE, BURST = 600, 10


@dataclass(frozen=True)
class Plan:
    mode: str
    produce_seconds: float
    sigkills: int
    producers: int
    drain_deadline: float
    timeout: float
    pause: float = 1.0
    """Scales the producers' pauses between transactions: below 1 is more load."""


PLANS = {
    "ci": Plan("ci", produce_seconds=20, sigkills=6, producers=2, drain_deadline=90, timeout=300),
    "long": Plan(
        "long", produce_seconds=300, sigkills=45, producers=3, drain_deadline=300, timeout=1200, pause=0.5
    ),
}
PLAN = PLANS.get(MODE, PLANS["ci"])
ROLLBACK_RATE = 0.2

HOLD_MS = 600  # Dodo holds every request this long (below the 1 s timeout): an agent dies mid-POST


@dataclass
class Kill:
    agent: int
    point: str
    reached: bool


@pytest.fixture
def app_schema(postgres_url: str) -> Iterator[str]:
    """The app's own schema with its `orders` table (one row per transaction), dropped afterwards."""
    import psycopg

    name = "app_" + uuid.uuid4().hex[:12]
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {name}")
        conn.execute(f"CREATE TABLE {name}.orders (order_id text PRIMARY KEY, events int NOT NULL)")
    yield name
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")


def soon(predicate: Callable[[], bool], seconds: float = 5.0) -> bool:
    """Whether `predicate` held within `seconds` (a kill point missed is reported, not failed)."""
    try:
        wait_until(predicate, seconds, poll=0.01)
    except AssertionError:
        return False
    return True


def stopped(pid: int) -> bool:
    """Whether process `pid` is stopped (state T in /proc/PID/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] in ("T", "t")


class Chaos:
    def __init__(self, fleet: Fleet, emulator: EmulatorProcess, url: str, schema: str) -> None:
        self.fleet, self.emulator, self.url, self.schema = fleet, emulator, url, schema
        self.kills: list[Kill] = []
        self.stalled: dict[str, Any] = {}

    def holding(self, agent: AgentProcess) -> list[str]:
        return held_by(self.url, self.schema, agent.pid) if agent.running() else []

    def kill_at(self, number: int, point: str) -> None:
        agent = self.fleet.agents[number]
        if point == "claimed":
            reached = soon(lambda: bool(self.holding(agent)))
        elif point == "during":
            self.emulator.set_faults(**FAULTS, latency_ms=HOLD_MS)
            try:
                before = self.emulator.stats()["requests"]
                reached = soon(
                    lambda: bool(self.holding(agent)) and self.emulator.stats()["requests"] > before
                )
            finally:
                self.emulator.set_faults(**FAULTS)
        else:  # "after": the rows it held were just settled (the answer came, the settle committed)
            held: set[str] = set()

            def holds() -> bool:
                held.update(self.holding(agent))
                return bool(held)

            reached = soon(holds) and soon(lambda: not held & set(self.holding(agent)))
        agent.kill()
        self.kills.append(Kill(number, point, reached))
        agent.start()

    def stall(self, number: int, store: Any) -> None:
        """SIGSTOP an agent holding rows (Dodo holding its request) past its lease; SIGCONT it once the
        others delivered those rows: it must move none of them (its settle is guarded by its lease)."""
        agent = self.fleet.agents[number]
        assert agent.proc is not None
        proc = agent.proc
        held: list[str] = []

        def stopped_holding() -> bool:
            if not self.holding(agent):
                return False
            proc.send_signal(signal.SIGSTOP)
            wait_until(lambda: stopped(proc.pid), 10, "the agent to stop")
            held[:] = self.holding(agent)  # stable now: it is stopped and its lease outlives this read
            if held:
                return True
            proc.send_signal(signal.SIGCONT)  # it had just settled: let it claim again
            return False

        self.emulator.set_faults(**FAULTS, latency_ms=HOLD_MS)
        try:
            wait_until(stopped_holding, 60, "an agent to stop while it holds rows", poll=0.01)
        finally:
            self.emulator.set_faults(**FAULTS)
        mark = agent.log_path.stat().st_size

        def delivered_by_others() -> bool:
            return all((r := store.get(i)) is not None and r.state == "delivered" for i in held)

        wait_until(delivered_by_others, 90, "the others to deliver the stalled agent's rows")
        settled = {i: store.get(i).settled_at_us for i in held}
        proc.send_signal(signal.SIGCONT)

        def lost_its_lease() -> bool:
            with agent.log_path.open("rb") as log:
                log.seek(mark)
                return b'"lease_lost"' in log.read()

        wait_until(lost_its_lease, 60, "the continued agent to find its lease lost (lease_lost)")
        self.stalled = {"agent": number, "rows": held, "settled": settled}


@pytest.mark.timeout(PLAN.timeout)
def test_fleet_chaos_loses_no_committed_event_and_delivers_no_rolled_back_one(
    tmp_path: Path, request: pytest.FixtureRequest, postgres_url: str, pg_schema: str, app_schema: str
) -> None:
    from agent.store import StoreOptions, open_store

    seed = int(os.environ.get("DODO_OUTBOX_CHAOS_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    emulator = EmulatorProcess(rate_limit=False, seed=seed).start()
    fleet = Fleet.build(
        tmp_path,
        AGENTS,
        emulator.url,
        postgres_url,
        pg_schema,
        delivery={"batch_max_events": 1000, "requests_per_minute": REQUESTS_PER_MINUTE, "burst": BURST},
    )
    store = open_store(postgres_url, StoreOptions(schema=pg_schema))  # creates the schema first
    acks = [tmp_path / f"producer{n}.acks" for n in range(PLAN.producers)]
    stop_file = tmp_path / "producers.stop"
    producers = []
    chaos = Chaos(fleet, emulator, postgres_url, pg_schema)
    try:
        emulator.set_faults(**FAULTS, seed=seed)
        fleet.start()
        producers = [
            start_producer(
                postgres_url,
                pg_schema,
                app_schema,
                f"p{n}",
                acks[n],
                stop_file,
                seed + n,
                ROLLBACK_RATE,
                PLAN.pause,
                tmp_path / f"producer{n}.log",
            )
            for n in range(PLAN.producers)
        ]
        points = ["claimed", "during", "after"]
        schedule: list[tuple[int, str]] = [(n % AGENTS, points[n % 3]) for n in range(PLAN.sigkills)]
        rng.shuffle(schedule)
        schedule.insert(rng.randrange(1, len(schedule)), (rng.randrange(AGENTS), "stall"))
        started = time.monotonic()
        gap = PLAN.produce_seconds / (len(schedule) + 1)
        for step, (number, point) in enumerate(schedule):
            # pacing the schedule over the production time (correctness waits on conditions, above)
            time.sleep(
                max(0.1, min(gap * rng.uniform(0.5, 1.5), started + PLAN.produce_seconds - time.monotonic()))
            )
            if step % 3 == 1:  # now and then a burst of 429s with Retry-After
                emulator.set_faults(**FAULTS, script=[429] * rng.randint(4, 10))
            if point == "stall":
                chaos.stall(number, store)
            else:
                chaos.kill_at(number, point)
        time.sleep(max(0.0, started + PLAN.produce_seconds - time.monotonic()))

        stop_file.touch()
        for producer in producers:
            producer.wait(60)
        emulator.clear_faults()
        wait_until(
            lambda: store.backlog() == 0, PLAN.drain_deadline, "the fleet to drain the outbox", poll=0.25
        )
        for agent in fleet.agents:
            assert agent.stop() == 0, agent.log_tail()
    except BaseException:
        print(fleet.tails())
        raise
    finally:
        stop_file.touch()
        for producer in producers:
            if producer.poll() is None:
                producer.kill()
                producer.wait(10)
        fleet.ensure_stopped()
        after = {i: store.get(i) for i in chaos.stalled.get("rows", [])}
        stats = emulator.stats() if emulator.proc is not None else {}
        log = emulator.admin("GET", "log")["items"] if emulator.proc is not None else []
        at_dodo = emulator.events() if emulator.proc is not None else {}
        emulator.stop()

    # -- the verdict --------------------------------------------------------------------------------
    verdicts = read_verdicts(acks)
    committed, rolled_back = verdicts.committed, verdicts.rolled_back
    lost = sorted(committed - set(at_dodo))
    rolled_back_delivered = sorted(rolled_back & set(at_dodo))
    times = request_times(log)
    worst = worst_window(times, 60.0)
    allowed = budget_allows(REQUESTS_PER_MINUTE, BURST, 60.0)
    batches = [e["events"] for e in log if e["events"] is not None]
    summary = (
        f"fleet chaos: agents={AGENTS} sent={len(committed | rolled_back | verdicts.unknown)} "
        f"committed={len(committed)} rolled_back={len(rolled_back)} delivered={len(at_dodo)} "
        f"lost={len(lost)} duplicates={stats.get('duplicates_ignored', 0)} "
        f"worst_60s={worst} budget_60s={allowed:g}"
    )
    store_rows = {i: store.get(i) for i in committed | rolled_back}
    store.close()
    kinds = Counter(f"{k.point}{'' if k.reached else '(missed)'}" for k in chaos.kills)
    detail = (
        f"fleet chaos detail: mode={PLAN.mode} seed={seed} kills={dict(kinds)} "
        f"stalled_rows={len(chaos.stalled.get('rows', []))} max_batch={max(batches, default=0)} "
        f"requests_checked={len(log)}/{stats.get('requests')} "
        f"transactions={verdicts.transactions} dodo_requests={stats.get('requests_by_status')}"
    )
    report(request, summary)
    report(request, detail)

    assert lost == [], f"{len(lost)} committed events never reached Dodo: {lost[:10]}\n{detail}"
    assert rolled_back_delivered == [], f"rolled-back events reached Dodo: {rolled_back_delivered[:10]}"
    assert len(committed) > 500 and len(rolled_back) > 50, f"too little load to prove anything: {summary}"
    assert len(chaos.kills) == PLAN.sigkills
    # Rolled back means absent: no row in the outbox, no order in the app's table.
    assert [i for i in rolled_back if store_rows[i] is not None] == []
    import psycopg

    with psycopg.connect(postgres_url) as conn:
        orders = {str(r[0]) for r in conn.execute(f"SELECT order_id FROM {app_schema}.orders")}
    # The app's orders are exactly its committed transactions (a commit that raised may be either).
    assert verdicts.firsts["C"] <= orders, "a committed order is missing"
    assert orders <= verdicts.firsts["C"] | verdicts.firsts["U"], "a rolled-back order was stored"
    # No request carried more than 1000 events (the emulator keeps the last 10,000 requests: all of a
    # CI run's; a long run's detail line says how many it checked).
    assert batches and max(batches) <= 1000
    assert len(log) == stats["requests"] or len(log) == 10_000
    # The stalled agent, continued after the others delivered its rows, moved none of them.
    rows, settled = chaos.stalled["rows"], chaos.stalled["settled"]
    assert rows, "the stalled agent held no rows: the stall proved nothing"
    assert {i: (r.state, r.settled_at_us) for i, r in after.items() if r is not None} == {
        i: ("delivered", settled[i]) for i in rows
    }
    # Every committed event is delivered in the outbox, and status agrees with Dodo.
    assert {i for i in committed if (r := store_rows[i]) is None or r.state != "delivered"} == set()
    status = status_json(fleet.configs[0])
    counts = {k: status[k] for k in ("pending", "inflight", "delivered", "dead")}
    assert counts == {"pending": 0, "inflight": 0, "delivered": len(at_dodo), "dead": 0}
    assert worst <= allowed + 1, summary  # one budget for the fleet, not one per agent
