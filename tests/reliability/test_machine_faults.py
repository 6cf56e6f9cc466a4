"""Faults of the machine: a full disk, a full outbox, a corrupt or truncated outbox file at start,
and the clock jumping forward and backward.

- Disk full (SQLite's `max_page_count` on the agent's own connection, and, where the test may mount
  one, a real tiny tmpfs): intake refuses with 429 + Retry-After, nothing of a refused request is
  stored, nothing acknowledged is lost, and the agent takes events again by itself once there is room.
- A damaged outbox at start: detected by PRAGMA quick_check; the agent logs what happened and what to
  do, moves the file aside and starts on a fresh one (no crash loop); `dodo-outbox doctor` reports the
  damage and salvages the readable rows, even into the outbox of the running agent.
- Clock jumps: leases and backoffs neither lose events nor stall them.
"""

from __future__ import annotations

import functools
import json
import os
import random
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent import config as config_module
from agent.config import DeliverySettings, DodoSettings, Settings
from agent.delivery.client import DodoClient
from agent.delivery.worker import Worker
from agent.emulator import EmulatorServer
from agent.errors import OutboxCorruptError, OutboxError
from agent.events import validate_many
from agent.ops import metrics
from agent.outbox import Outbox
from agent.service import Agent
from agent.store import Store, StoreOptions
from tests.emulator_fixture import FakeDodoFactory
from tests.reliability.helpers import (
    KEY,
    AgentProcess,
    base_sections,
    cli,
    free_port,
    wait_until,
    write_config,
)

US = 1_000_000


def events(prefix: str, count: int, note: int = 300) -> list[dict[str, Any]]:
    return [
        {
            "event_id": f"{prefix}-{i:06d}",
            "customer_id": "cus_1",
            "event_name": "api.call",
            "metadata": {"note": "n" * note, "i": i},
        }
        for i in range(count)
    ]


def rows(path: Path) -> dict[str, str]:
    """event_id -> state, read on a connection of our own."""
    conn = sqlite3.connect(path)
    try:
        return dict(conn.execute("SELECT event_id, state FROM dodo_outbox_events").fetchall())
    finally:
        conn.close()


# -- an in-process agent (for faults injected on its own connection) ---------------------------------


@contextmanager
def running_agent(tmp_path: Path, url: str, **overrides: Any) -> Iterator[Agent]:
    defaults: dict[str, dict[str, Any]] = {
        "intake_dropdir": {"enabled": True, "path": str(tmp_path / "spool"), "scan_interval_seconds": 0.2},
        "delivery": {"lease_seconds": 2},
    }
    for name, values in overrides.items():
        defaults.setdefault(name, {}).update(values)
    sections = base_sections(tmp_path, url, 0, **defaults)
    settings = config_module.load(write_config(tmp_path / "agent.toml", sections), environ={})
    agent = Agent(settings, environ={"DODO_PAYMENTS_API_KEY": KEY}, stop_timeout=10).start()
    try:
        yield agent
    finally:
        agent.stop()


def post(agent: Agent, batch: list[dict[str, Any]]) -> httpx.Response:
    assert agent.http is not None
    return httpx.post(f"{agent.http.url}/events/ingest", json={"events": batch}, timeout=30)


def stored_count(agent: Agent) -> int:
    assert isinstance(agent.store, Store)  # the SQLite file itself: this test reads it directly
    with agent.store.read() as conn:
        return int(conn.execute("SELECT count(*) FROM dodo_outbox_events").fetchone()[0])


def fill_until_refused(agent: Agent, prefix: str, acked: set[str], refusals_wanted: int = 3) -> list[int]:
    """POST batches until `refusals_wanted` are refused; every refusal must store nothing."""
    statuses: list[int] = []
    for n in range(2000):
        batch = events(f"{prefix}{n}", 20)
        before = stored_count(agent)
        response = post(agent, batch)
        if response.status_code == 200:
            acked.update(e["event_id"] for e in batch)
            continue
        assert response.status_code in (429, 503), (response.status_code, response.text)
        assert "Retry-After" in response.headers
        assert stored_count(agent) == before, "a refused request stored rows"
        statuses.append(response.status_code)
        if len(statuses) >= refusals_wanted:
            return statuses
    raise AssertionError("the outbox never filled up")


def drop(spool: Path, name: str, batch: list[dict[str, Any]]) -> None:
    (spool / "tmp").mkdir(parents=True, exist_ok=True)
    staged = spool / "tmp" / name
    staged.write_text("".join(json.dumps(e) + "\n" for e in batch))
    os.rename(staged, spool / "new" / name)


def recover_and_deliver(
    agent: Agent, fake: EmulatorServer, acked: set[str], spool: Path, *, dodo_back_first: bool = False
) -> None:
    """After room returns: intake accepts again, the deferred drop file goes in, everything is delivered.

    `dodo_back_first`: room comes from delivery itself (a full backlog), so Dodo must answer first."""
    if dodo_back_first:
        fake.clear_faults()
    batch = events("after", 5)
    wait_until(lambda: post(agent, batch).status_code == 200, 60, "intake to accept events again")
    acked.update(e["event_id"] for e in batch)
    wait_until(lambda: not any((spool / "new").iterdir()), 60, "the deferred drop file to be ingested")
    assert not any((spool / "rejected").iterdir())
    fake.clear_faults()
    wait_until(lambda: acked <= set(fake.events), 60, "every acknowledged event to reach Dodo")
    assert agent.store is not None
    assert agent.store.counts()["dead"] == 0


def dropdir_refusals() -> float:
    """How often the drop directory deferred a file because the outbox was full (a process counter)."""
    return sum(
        sample.value
        for family in metrics.REGISTRY.collect()
        if family.name == "dodo_outbox_capacity_refusals"
        for sample in family.samples
        if sample.name.endswith("_total") and sample.labels.get("source") == "dropdir"
    )


def test_disk_full_refuses_with_429_loses_nothing_and_recovers_by_itself(
    tmp_path: Path, fake_dodo_factory: FakeDodoFactory
) -> None:
    fake = fake_dodo_factory(keys={KEY}, rate_limit=False)
    fake.set_faults(outage_seconds=3600)  # nothing is delivered (or pruned) while the disk fills
    acked: set[str] = set()
    with running_agent(tmp_path, fake.url) as agent:
        assert isinstance(agent.store, Store)  # the SQLite file itself: this test reads its pages
        first = events("first", 50)
        assert post(agent, first).status_code == 200
        acked.update(e["event_id"] for e in first)
        with agent.store.read() as conn:  # the agent's own connection: its file may not grow further
            pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
            conn.execute(f"PRAGMA max_page_count = {pages + 4}")
        statuses = fill_until_refused(agent, "full", acked)
        assert set(statuses) == {429}
        spool = tmp_path / "spool"
        deferred = dropdir_refusals()
        drop(spool, "while-full.ndjson", events("dropped", 30))
        wait_until(lambda: dropdir_refusals() > deferred, 60, "the drop directory to meet the full disk")
        assert (spool / "new" / "while-full.ndjson").exists()  # deferred, not rejected
        assert not any((spool / "rejected").iterdir())
        with agent.store.read() as conn:  # room again
            conn.execute("PRAGMA max_page_count = 1073741823")
        acked.update(f"dropped-{i:06d}" for i in range(30))
        recover_and_deliver(agent, fake, acked, spool)
        assert agent.stop()
    assert set(rows(tmp_path / "outbox.db").values()) == {"delivered"}


def test_max_events_refuses_with_429_and_takes_events_again_once_delivered(
    tmp_path: Path, fake_dodo_factory: FakeDodoFactory
) -> None:
    fake = fake_dodo_factory(keys={KEY}, rate_limit=False)
    fake.set_faults(outage_seconds=3600)
    acked: set[str] = set()
    with running_agent(tmp_path, fake.url, outbox={"max_events": 200}) as agent:
        statuses = fill_until_refused(agent, "cap", acked)
        assert set(statuses) == {429} and len(acked) <= 200
        spool = tmp_path / "spool"
        (spool / "new").mkdir(parents=True, exist_ok=True)
        recover_and_deliver(agent, fake, acked, spool, dodo_back_first=True)


@contextmanager
def tiny_tmpfs(where: Path, size: str) -> Iterator[Path]:
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True, check=False
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.decode().strip() or 'not permitted'})")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)


def test_a_real_full_disk_refuses_then_recovers_when_space_is_freed(
    tmp_path: Path, fake_dodo_factory: FakeDodoFactory
) -> None:
    fake = fake_dodo_factory(keys={KEY}, rate_limit=False)
    fake.set_faults(outage_seconds=3600)
    acked: set[str] = set()
    with tiny_tmpfs(tmp_path / "disk", "4m") as disk:
        filler = disk / "filler"
        with running_agent(disk, fake.url, intake_dropdir={"path": str(tmp_path / "spool")}) as agent:
            filler.write_bytes(b"\0" * (3 << 20))
            statuses = fill_until_refused(agent, "enospc", acked)
            assert set(statuses) <= {429, 503}
            filler.unlink()  # space returns
            spool = tmp_path / "spool"
            recover_and_deliver(agent, fake, acked, spool)
            assert agent.stop()
        assert set(rows(disk / "outbox.db").values()) == {"delivered"}


# -- a damaged outbox at start ------------------------------------------------------------------------


def make_outbox(path: Path, prefix: str, count: int) -> set[str]:
    with Outbox(path) as outbox:
        batch = events(prefix, count)
        outbox.enqueue_many(batch)
    return {e["event_id"] for e in batch}


def damage_middle(path: Path) -> None:
    size = path.stat().st_size
    with path.open("r+b") as handle:
        handle.seek(size // 2 + 100)
        handle.write(os.urandom(3000))


def truncate_half(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def garbage(path: Path) -> None:
    path.write_bytes(b"definitely not an SQLite file\n" * 200)


def quarantined(directory: Path) -> list[Path]:
    """The outbox files moved aside (not their -wal / -shm companions)."""
    return sorted(
        p
        for p in directory.iterdir()
        if p.name.startswith("outbox.db.corrupt-") and not p.name.endswith(("-wal", "-shm", "-journal"))
    )


@pytest.mark.parametrize(
    ("damage", "salvageable"), [(damage_middle, True), (truncate_half, True), (garbage, False)]
)
def test_a_damaged_outbox_is_moved_aside_the_agent_starts_fresh_and_doctor_salvages(
    tmp_path: Path, fake_dodo_factory: FakeDodoFactory, damage: Callable[[Path], None], salvageable: bool
) -> None:
    fake = fake_dodo_factory(keys={KEY}, rate_limit=False)
    outbox = tmp_path / "outbox.db"
    old = make_outbox(outbox, "old", 3000)
    damage(outbox)
    port = free_port()
    config = write_config(tmp_path / "agent.toml", base_sections(tmp_path, fake.url, port))
    agent = AgentProcess(config, tmp_path / "agent.log", port, {"DODO_PAYMENTS_API_KEY": KEY})
    try:
        agent.start()  # starts (ready), does not crash
        (moved,) = quarantined(tmp_path)
        logged = [e for e in agent.log_lines() if e.get("event") == "outbox_corrupt"]
        assert len(logged) == 1 and logged[0]["level"] == "error"
        assert logged[0]["outbox"] == str(outbox) and logged[0]["moved_to"] == str(moved)
        assert "dodo-outbox doctor" in logged[0]["action"] and str(moved) in logged[0]["action"]
        # The fresh outbox takes and delivers events.
        new = events("new", 10)
        assert httpx.post(f"{agent.url}/events/ingest", json={"events": new}, timeout=10).status_code == 200
        wait_until(lambda: {e["event_id"] for e in new} <= set(fake.events), 60, "new events delivered")
        # doctor names the damage ...
        checked = cli(config, "doctor", "--outbox", str(moved))
        assert checked.returncode == 1 and "DAMAGED" in checked.stdout
        assert "--salvage" in checked.stderr
        # ... and salvages the readable rows into the running agent's outbox, which delivers them.
        salvaged = cli(config, "doctor", "--outbox", str(moved), "--salvage", str(outbox), "--json")
        document = json.loads(salvaged.stdout)
        report = document["salvage"]
        # Exit 1 when damage was found or rows could not be read: damage in an index page leaves
        # every row readable (complete) and the file still damaged.
        assert salvaged.returncode == (0 if document["ok"] and report["complete"] else 1)
        if salvageable:
            copied = report["copied"]["pending"]
            assert copied > 500, report
            recovered = set(rows(outbox)) & old
            assert len(recovered) == copied
            wait_until(lambda: recovered <= set(fake.events), 60, "salvaged events delivered")
        else:
            assert report["schema_error"] and sum(report["copied"].values()) == 0
        # No crash loop: a restart finds a healthy file and moves nothing.
        assert agent.stop() == 0
        agent.start()
        assert quarantined(tmp_path) == [moved]
        assert len([e for e in agent.log_lines() if e.get("event") == "outbox_corrupt"]) == 1
        assert agent.stop() == 0
    finally:
        agent.ensure_stopped()


def test_doctor_on_a_healthy_outbox(tmp_path: Path) -> None:
    outbox = tmp_path / "outbox.db"
    ids = make_outbox(outbox, "ok", 20)
    config = write_config(tmp_path / "agent.toml", {"outbox": {"path": str(outbox)}})
    checked = cli(config, "doctor", "--json")
    assert checked.returncode == 0, checked.stderr
    document = json.loads(checked.stdout)
    assert document["ok"] and document["counts"]["pending"] == 20
    copy = tmp_path / "copy.db"
    salvaged = cli(config, "doctor", "--salvage", str(copy))
    assert salvaged.returncode == 0 and "20 rows" in salvaged.stdout
    assert set(rows(copy)) == ids
    again = cli(config, "doctor", "--salvage", str(copy), "--json")  # idempotent: nothing twice
    assert json.loads(again.stdout)["salvage"]["already_present"] == 20
    assert cli(config, "doctor", "--salvage", str(outbox)).returncode == 2  # not into itself
    assert cli(config, "doctor", "--outbox", str(tmp_path / "missing.db")).returncode == 2


def test_salvage_keeps_states_and_turns_inflight_into_pending(tmp_path: Path) -> None:
    from agent.store import salvage

    source = tmp_path / "source.db"
    with Store(source) as store:
        now = time.time()
        store.insert_groups([(validate_many(events("s", 4), now), "test")], int(now * US))
        claimed = store.claim(now_us=int(now * US), limit=3, max_bytes=1 << 30, lease_us=60 * US, owner="w")
        store.mark_delivered([claimed[0].id], owner="w", now_us=int(now * US))
        store.mark_dead(
            [claimed[1].id],
            owner="w",
            now_us=int(now * US),
            reason="rejected",
            http_status=400,
            response='{"code":"BAD_REQUEST"}',
        )
    with Store(tmp_path / "target.db") as target:
        report = salvage(source, target, int(now * US))
        got = {
            r.event_id: (r.state, r.reason, r.attempts)
            for r in (target.get(f"s-{i:06d}") for i in range(4))
            if r
        }
    assert report.complete and report.copied == {"pending": 2, "delivered": 1, "dead": 1}
    assert got["s-000000"] == ("delivered", None, 1)
    assert got["s-000001"] == ("dead", "rejected", 1)
    assert got["s-000002"] == ("pending", None, 1)  # was inflight: its worker is gone
    assert got["s-000003"] == ("pending", None, 0)


def test_regression_a_locked_outbox_is_not_taken_for_a_corrupt_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Was: every sqlite3.DatabaseError at open, "database is locked" included, became
    # OutboxCorruptError, and the agent would have moved a healthy outbox (and its events) aside.
    path = tmp_path / "outbox.db"
    ids = make_outbox(path, "locked", 5)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(OutboxError) as raised:
            Store(path, StoreOptions(busy_timeout_ms=100, check_integrity=True))
        assert not isinstance(raised.value, OutboxCorruptError)
        assert "locked" in str(raised.value)
        monkeypatch.setattr(
            "agent.service.StoreOptions", functools.partial(StoreOptions, busy_timeout_ms=100)
        )
        settings = Settings(outbox=config_module.OutboxSettings(path=str(path)))
        agent = Agent(settings, environ={})
        with pytest.raises(OutboxError):
            agent._open_store()
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert quarantined(tmp_path) == []
    assert set(rows(path)) == ids


def test_corruption_is_reported_with_the_file_and_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    make_outbox(path, "c", 3000)
    damage_middle(path)
    with pytest.raises(OutboxCorruptError) as raised:
        Store(path, StoreOptions(check_integrity=True))
    message = str(raised.value)
    assert str(path) in message and "quick_check" in message
    assert f"dodo-outbox doctor --outbox {path}" in message and "--salvage" in message


# -- clock jumps --------------------------------------------------------------------------------------


class Clock:
    """Epoch seconds that a test can jump."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def make_worker(
    store: Store, url: str, clock: Clock, rand: Callable[[], float] = random.random, **delivery: Any
) -> Worker:
    settings = Settings(
        dodo=DodoSettings(base_url=url),
        delivery=DeliverySettings(
            **{
                "backoff_initial_seconds": 0.05,
                "backoff_max_seconds": 0.2,
                "requests_per_minute": 0.0,
                "timeout_seconds": 2.0,
                "lease_seconds": 30,
                **delivery,
            }
        ),
    )
    return Worker(
        store,
        settings,
        DodoClient.from_settings(settings),
        clock=clock,
        rand=rand,
        environ={"DODO_PAYMENTS_API_KEY": KEY},
    )


def put(store: Store, prefix: str, count: int) -> set[str]:
    now = time.time()
    batch = validate_many(
        [
            {
                "event_id": f"{prefix}-{i}",
                "customer_id": "c",
                "event_name": "n",
                "timestamp": datetime.fromtimestamp(now, UTC).isoformat(),
            }
            for i in range(count)
        ],
        now,
    )
    store.insert_groups([(batch, "test")], int(now * US))
    return {e.event_id for e in batch}


def drain_until(worker: Worker, done: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"stalled: {worker.store.counts()}"
        worker.drain_until_idle()
        time.sleep(0.05)


def test_clock_jumping_back_after_failures_does_not_stall_retries(store: Store, fake: EmulatorServer) -> None:
    ids = put(store, "back", 20)
    clock = Clock()
    # Retries 5 s out, whatever the jitter draws (a full-jitter draw near 0 made them due at once, and
    # on a slow machine the first drain delivered them): the repair keeps them 5 s ahead when the clock
    # steps back an hour, so they go within drain_until's 20 s; without it they would wait the hour.
    worker = make_worker(
        store, fake.url, clock, rand=lambda: 1.0, backoff_initial_seconds=5.0, backoff_max_seconds=5.0
    )
    fake.set_faults(script=[503, 503, 503])  # retries scheduled at "now + backoff", breaker opened
    worker.drain_until_idle()
    assert store.counts()["pending"] == 20
    fake.clear_faults()
    clock.offset = -3600.0  # NTP steps the clock back an hour
    drain_until(worker, lambda: ids <= set(fake.events))
    worker.close()


def test_clock_jumping_back_does_not_hold_a_dead_workers_leases(store: Store, fake: EmulatorServer) -> None:
    ids = put(store, "lease", 10)
    store.claim(
        now_us=int(time.time() * US),
        limit=100,
        max_bytes=1 << 30,
        lease_us=30 * US,
        owner="a-worker-that-died",
    )
    clock = Clock()
    clock.offset = -3600.0
    worker = make_worker(store, fake.url, clock, lease_seconds=2)
    # By the clock as it now reads, that lease ends in an hour; a restart must not wait for it.
    drain_until(worker, lambda: ids <= set(fake.events), timeout=60)
    worker.close()


def test_clock_jumping_forward_loses_nothing(store: Store, fake: EmulatorServer) -> None:
    ids = put(store, "fwd", 30)
    clock = Clock()
    slow = make_worker(store, fake.url, clock, timeout_seconds=5)
    fake.set_faults(latency_ms=1500)  # the first worker's batch is in flight ...
    results: list[Any] = []
    thread = threading.Thread(target=lambda: results.append(slow.drain_once()))
    thread.start()
    wait_until(lambda: store.counts()["inflight"] > 0, 60, "a batch in flight")
    clock.offset = 7200.0  # ... when the clock leaps two hours: its lease looks expired, events look late
    other = make_worker(store, fake.url, clock)
    fake.clear_faults()
    drain_until(other, lambda: ids <= set(fake.events))
    thread.join(30)
    assert store.counts() == {"pending": 0, "inflight": 0, "delivered": 30, "dead": 0}
    slow.close()
    other.close()
