"""A fleet: several workers on one outbox share one rate budget, one pause (and its one probe) and a
registry `status` lists. Each Worker has its own store (its own connections, as a separate process
would) on the same outbox: a PostgreSQL schema, or an SQLite file (processes on one host).

Real-process fleets (`run` subprocesses, kill -9, PgBouncer) are tests/reliability's business; these
drive Worker objects in threads against a real emulator so every request's arrival time is known.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.bench.fleet_budget import worst_excess
from agent.config import DodoSettings, Settings
from agent.delivery.worker import Worker
from agent.emulator import EmulatorServer
from agent.ops import metrics, status
from agent.ops.fleet import agents_document
from agent.store import OutboxStore, StoreOptions, open_store
from tests.builders import make_settings, make_worker
from tests.builders import stored_event as event
from tests.emulator_fixture import FakeDodoFactory

Opener = Callable[[], OutboxStore]


@pytest.fixture(params=["sqlite", "postgres"])
def open_outbox(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """Opens the test's one outbox again (one store per agent); all are closed after the test."""
    opened: list[OutboxStore] = []
    if request.param == "sqlite":
        where: str | Path = tmp_path / "fleet.db"
        options = StoreOptions()
    else:
        where = request.getfixturevalue("postgres_url")
        options = StoreOptions(schema=request.getfixturevalue("pg_schema"))

    def open_one() -> OutboxStore:
        store = open_store(where, options)
        opened.append(store)
        return store

    yield open_one
    for store in opened:
        store.close()


def put(store: OutboxStore, n: int, prefix: str = "e") -> set[str]:
    events = [event(i, prefix=prefix) for i in range(n)]
    store.insert_groups([(events, "test")], int(time.time() * 1e6))
    return {e.event_id for e in events}


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def drain_together(workers: list[Worker], done: Callable[[], bool], timeout: float = 60.0) -> None:
    """Every worker drains in its own thread (as the agents of a fleet do) until `done()`."""
    stop = threading.Event()
    failures: list[BaseException] = []

    def loop(worker: Worker) -> None:
        try:
            while not stop.is_set():
                worker.drain_until_idle(stop)
                stop.wait(0.02)
        except BaseException as exc:  # surfaced below
            failures.append(exc)
            stop.set()

    threads = [threading.Thread(target=loop, args=(w,), daemon=True) for w in workers]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: done() or bool(failures), "the fleet to finish", timeout)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    if failures:
        raise failures[0]


# -- one rate budget --------------------------------------------------------------------------------


def test_three_agents_together_keep_to_one_budget_and_get_no_429(
    open_outbox: Opener, fake_dodo_factory: FakeDodoFactory
) -> None:
    # The account allows 5 at once and 5/s; the fleet is configured for 4 at once and 4/s. Three agents
    # that each paced themselves to it would send 12 at once and 12/s: 429s, and windows far over.
    per_minute, burst = 240.0, 4
    fake = fake_dodo_factory(rate_per_second=5.0, rate_per_minute=300.0)
    ids = put(open_outbox(), 40)
    settings = make_settings(
        fake.url, requests_per_minute=per_minute, burst=burst, batch_max_events=2, max_in_flight=2
    )
    workers = [make_worker(open_outbox(), settings) for _ in range(3)]
    try:
        drain_together(workers, lambda: set(fake.events) == ids)
    finally:
        for w in workers:
            w.close()
    log = fake.ingest_log()
    assert {entry["outcome"] for entry in log} == {"200"}  # no 429, nothing else either
    assert len(log) == 20
    # One request of slack for the trip from the slot to the emulator (a slot taken a little later
    # may arrive a little sooner); without the shared budget the excess is about 8 at the start.
    assert worst_excess([entry["at"] for entry in log], per_minute, burst) <= 1.0


def test_a_429_seen_by_one_agent_holds_the_budget_for_all(
    open_outbox: Opener, fake_dodo_factory: FakeDodoFactory
) -> None:
    fake = fake_dodo_factory(rate_limit=False)
    settings = make_settings(fake.url, requests_per_minute=600.0, burst=10)
    a, b = make_worker(open_outbox(), settings), make_worker(open_outbox(), settings)
    try:
        a.runner.settler.pacer.slow_down(time.monotonic(), 30.0)  # as Settler does on a 429
        # b never saw the 429: it waits the Retry-After too, at half the fleet's rate.
        assert b.pacer.try_acquire(time.monotonic()) > 25.0
        assert b.pacer.rate_per_minute == 300.0
        assert not b.pacer.acquire(time.monotonic, lambda _: None, timeout=0.2)
    finally:
        a.close()
        b.close()


def test_a_real_429_with_retry_after_pushes_the_other_agent_back(
    open_outbox: Opener, fake_dodo_factory: FakeDodoFactory
) -> None:
    fake = fake_dodo_factory(rate_limit=False)
    fake.set_faults(script=[429], retry_after_seconds=20)
    store_a, store_b = open_outbox(), open_outbox()
    put(store_a, 1)
    settings = make_settings(fake.url, requests_per_minute=600.0, burst=10)
    a, b = make_worker(store_a, settings), make_worker(store_b, settings)
    try:
        report = a.drain_once()
        assert report.retried == 1
        assert b.pacer.try_acquire(time.monotonic()) > 15.0
    finally:
        a.close()
        b.close()


# -- one pause ----------------------------------------------------------------------------------------


def _key_settings(fake: EmulatorServer, key_file: Path, **delivery: Any) -> Settings:
    return dataclasses.replace(
        make_settings(fake.url, **delivery), dodo=DodoSettings(base_url=fake.url, api_key_file=str(key_file))
    )


def test_a_401_pauses_the_fleet_one_probe_for_all_and_a_fixed_key_resumes_all(
    open_outbox: Opener, fake_dodo_factory: FakeDodoFactory, tmp_path: Path
) -> None:
    fake = fake_dodo_factory(rate_limit=False)
    key_file = tmp_path / "key"
    key_file.write_text("sk_revoked\n")
    store_a, store_b = open_outbox(), open_outbox()
    ids = put(store_a, 10)
    every = 0.5
    settings = _key_settings(fake, key_file, batch_max_events=2, max_in_flight=1, auth_retry_seconds=every)
    a, b = make_worker(store_a, settings, environ={}), make_worker(store_b, settings, environ={})
    try:
        report = a.drain_once()
        assert report.paused is not None and "HTTP 401" in report.paused
        first = len(fake.ingest_log())
        assert b.drain_once().sent == 0 and b.paused == a.paused  # b never asked Dodo: it read the record
        for agent_store in (store_a, store_b):  # any agent's status and metrics show it
            doc = status.build(agent_store)
            assert (doc["paused"], doc["paused_kind"], doc["paused_by"]) == (True, "auth", a.owner)
            assert metrics.pause_label(status.read_pause(agent_store)) == "auth"
        # Both agents tick for a while with the key still wrong: the fleet probes once per period,
        # not once per agent per period.
        started = time.monotonic()
        while time.monotonic() - started < 4 * every:
            a.drain_once()
            b.drain_once()
            time.sleep(0.01)
        elapsed = time.monotonic() - started
        probes = len(fake.ingest_log()) - first
        assert 1 <= probes <= elapsed / every + 1
        assert {e["outcome"] for e in fake.ingest_log()} == {"401"}
        key_file.write_text("test_key\n")  # fixed: whichever agent probes next reads it
        drain_together([a, b], lambda: set(fake.events) == ids)
        # Whichever probed resumed at once; the other resumes at its next tick, having read the record.
        a.drain_once()
        b.drain_once()
        assert a.paused is None and b.paused is None
        assert status.read_pause(store_b) is None
    finally:
        a.close()
        b.close()


def test_a_404_pauses_the_other_agent_and_a_reload_makes_the_probe_due_for_the_fleet(
    open_outbox: Opener, fake_dodo_factory: FakeDodoFactory
) -> None:
    fake = fake_dodo_factory(rate_limit=False)
    store_a, store_b = open_outbox(), open_outbox()
    put(store_a, 2)
    wrong = make_settings(fake.url + "/wrong", auth_retry_seconds=3600.0)
    a, b = (
        make_worker(store_a, wrong),
        make_worker(store_b, make_settings(fake.url, auth_retry_seconds=3600.0)),
    )
    try:
        assert a.drain_once().paused is not None
        assert b.drain_once().paused is not None and b.pause.kind == "not_found"
        assert b.drain_once().sent == 0  # no probe for an hour
        b.reload_key()  # SIGHUP on b (its base URL is right): the fleet's probe is due now
        report = b.drain_until_idle()
        assert report.paused is None and report.delivered == 2
        assert a.drain_once().paused is None  # a reads the cleared record: resumed
    finally:
        a.close()
        b.close()


# -- the agents' registry ------------------------------------------------------------------------------


def test_status_lists_the_agents_and_their_share(
    open_outbox: Opener, fake_dodo_factory: FakeDodoFactory
) -> None:
    fake = fake_dodo_factory(rate_limit=False)
    store = open_outbox()
    ids = put(store, 30)
    settings = make_settings(fake.url, batch_max_events=3, max_in_flight=1)
    workers = [make_worker(open_outbox(), settings) for _ in range(2)]
    try:
        drain_together(workers, lambda: set(fake.events) == ids)
    finally:
        for w in workers:
            w.close()
    agents = {a["agent_id"]: a for a in status.build(store)["agents"]}
    assert set(agents) == {w.owner for w in workers}
    assert sum(a["delivered"] for a in agents.values()) == 30
    assert sum(a["claimed"] for a in agents.values()) >= 30
    assert sum(a["delivered_share"] for a in agents.values()) == pytest.approx(1.0, abs=0.001)
    assert {a["state"] for a in agents.values()} == {"stopped"}  # closed cleanly
    live = open_outbox()
    live.heartbeat("elsewhere:7:abc", host="elsewhere", pid=7)
    states = {a["agent_id"]: a["state"] for a in agents_document(live)}
    assert states["elsewhere:7:abc"] == "active"
    wait_for(lambda: agents_document(live, gone_after=0.05)[-1]["state"] == "gone", "the agent to look gone")


def test_the_status_command_shows_the_agents_and_who_paused(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from agent.cli import cli

    db = tmp_path / "outbox.db"
    with open_store(db) as store:
        store.heartbeat("web-1:11:aaaa", host="web-1", pid=11, claimed=40, delivered=30)
        store.heartbeat("web-2:22:bbbb", host="web-2", pid=22, claimed=10, delivered=10, stopped=True)
        status.write_pause(
            store, "Dodo refused the API key with HTTP 401", time.time(), kind="auth", by="web-1:11:aaaa"
        )
    result = CliRunner().invoke(cli, ["status", "--outbox", str(db)])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "agents on this outbox  1 active" in out
    assert "web-1 pid 11" in out and "web-2 pid 22" in out and "stopped" in out
    assert "75%" in out and "25%" in out  # each one's share of the deliveries
    assert "seen by web-1:11:aaaa" in out
    result = CliRunner().invoke(cli, ["status", "--outbox", str(db), "--json"])
    document = json.loads(result.output)
    assert [a["host"] for a in document["agents"]] == ["web-1", "web-2"]
    assert (document["paused_kind"], document["paused_by"]) == ("auth", "web-1:11:aaaa")


def test_an_agent_started_after_the_key_was_fixed_probes_at_once_and_resumes_the_fleet(
    open_outbox: Opener, fake_dodo_factory: FakeDodoFactory
) -> None:
    fake = fake_dodo_factory(rate_limit=False)
    store = open_outbox()
    ids = put(store, 3)
    other = make_worker(open_outbox(), make_settings(fake.url, auth_retry_seconds=3600.0))
    # The fleet paused just now (another agent saw a 401): no probe is due for an hour.
    status.write_pause(
        store, "Dodo refused the API key with HTTP 401", time.time(), kind="auth", by="old:1:x"
    )
    store.hold_slot("pause_probe", delay_us=3_600_000_000, per_minute=1 / 60, burst=1)
    assert other.drain_once().paused is not None  # the running agent follows the record
    assert other.drain_once().sent == 0 and fake.stats()["requests"] == 0
    fresh = make_worker(open_outbox(), make_settings(fake.url, auth_retry_seconds=3600.0))
    try:
        report = fresh.drain_until_idle()  # started with the fixed key: its first tick is the probe
        assert report.paused is None and report.delivered == 3
        assert set(fake.events) == ids and status.read_pause(store) is None
        assert other.drain_once().paused is None
    finally:
        other.close()
        fresh.close()
