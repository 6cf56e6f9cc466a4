"""Chaos: the agent as a real process, killed again and again under load, against a faulty Dodo.

What runs:
- the Dodo emulator in its own process, answering a share of 5xx, hanging (timeouts), cutting
  connections, storing a batch and then cutting the connection (lost acks), bursts of 429 with
  `Retry-After`, and refusing "poison" events (ids matching `reject_event_ids`, which the agent's own
  validation accepts, so they are acknowledged and can only fail at Dodo);
- `python -m agent run` with short intervals, backoffs and leases;
- producers, concurrently: HTTP clients (an event counts as acknowledged when its request got 200),
  the drop directory (acknowledged once the file is renamed into new/) and the library
  (`Outbox(path).enqueue` in another process; acknowledged when it returns);
- the agent killed with SIGKILL several times at chosen points (mid-intake, mid-batch: while Dodo
  holds a request, mid-settle: just after Dodo answered) and restarted; once stopped with SIGTERM.

At the end (faults off, drained until idle within a deadline): every acknowledged valid event is at
the emulator (0 lost); no valid event is dead; every poison event in the outbox is dead with reason
`rejected` and Dodo's answer; `status --json` counts equal the emulator's; the drop directory is empty.

CI mode takes about a minute. The long mode (`DODO_OUTBOX_CHAOS=long`) runs minutes with many more
events and kills. `DODO_OUTBOX_CHAOS_SEED=N` repeats a run's choices (timing still varies).
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.reliability.conftest import report
from tests.reliability.helpers import (
    KEY,
    ROOT,
    AgentProcess,
    EmulatorProcess,
    base_sections,
    child_env,
    cli,
    free_port,
    status_json,
    wait_until,
    write_config,
)

MODE = os.environ.get("DODO_OUTBOX_CHAOS", "ci").strip().lower()
POISON_PREFIX = "poison-"


@dataclass(frozen=True)
class Plan:
    mode: str
    produce_seconds: float
    sigkills: int
    http_producers: int
    drain_deadline: float
    poison_rate: float
    timeout: float
    pause: float = 1.0
    """Scales the producers' pauses between writes: below 1 is more load."""


PLANS = {
    "ci": Plan(
        "ci",
        produce_seconds=20,
        sigkills=4,
        http_producers=2,
        drain_deadline=60,
        poison_rate=0.005,
        timeout=150,
    ),
    "long": Plan(
        "long",
        produce_seconds=300,
        sigkills=40,
        http_producers=3,
        drain_deadline=300,
        poison_rate=0.003,
        pause=0.3,
        timeout=900,
    ),
}
PLAN = PLANS.get(MODE, PLANS["ci"])

FAULTS: dict[str, Any] = {
    "error_rates": {"500": 0.08, "502": 0.02, "503": 0.04, "429": 0.05},
    "timeout_rate": 0.03,
    "drop_rate": 0.03,
    "ack_lost_rate": 0.05,
    "retry_after_seconds": 1,
    "timeout_sleep_seconds": 2.5,  # longer than the agent's 1 s request timeout
}


@dataclass
class Ledger:
    """What the producers offered and what the agent acknowledged. Thread-safe."""

    sent: set[str] = field(default_factory=set)
    acked: dict[str, str] = field(default_factory=dict)  # event_id -> channel
    answers: Counter[str] = field(default_factory=Counter)  # HTTP answers the producers got
    unexpected: list[str] = field(default_factory=list)
    in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def offer(self, ids: list[str]) -> None:
        with self.lock:
            self.sent.update(ids)

    def ack(self, ids: list[str], channel: str) -> None:
        with self.lock:
            for event_id in ids:
                self.acked.setdefault(event_id, channel)

    def answer(self, what: str) -> None:
        with self.lock:
            self.answers[what] += 1


def make_event(event_id: str, rng: random.Random) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_id": event_id,
        "customer_id": f"cus_{rng.randint(1, 20)}",
        "event_name": rng.choice(["api.call", "llm.chat_completion"]),
        "metadata": {"tokens": rng.randint(1, 5000), "model": "m-1", "ok": rng.random() < 0.9},
    }
    if rng.random() < 0.7:  # the rest are stamped by the agent at enqueue
        event["timestamp"] = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    return event


def event_ids(prefix: str, rng: random.Random, count: int, start: int, poison_rate: float) -> list[str]:
    return [
        f"{POISON_PREFIX if rng.random() < poison_rate else ''}{prefix}-{start + i:06d}" for i in range(count)
    ]


def http_producer(
    index: int, url: str, ledger: Ledger, stop: threading.Event, give_up: threading.Event, seed: int
) -> None:
    """Post batches of 1-20 events; resend the same body until it is acknowledged (as the SDK retries)."""
    rng = random.Random(seed)
    n = 0
    with httpx.Client(timeout=5) as client:
        while not stop.is_set():
            ids = event_ids(f"http{index}", rng, rng.randint(1, 20), n, PLAN.poison_rate)
            n += len(ids)
            body = orjson.dumps({"events": [make_event(i, rng) for i in ids]})
            ledger.offer(ids)
            while not give_up.is_set():
                with ledger.lock:
                    ledger.in_flight += 1
                try:
                    response = client.post(
                        f"{url}/events/ingest", content=body, headers={"Content-Type": "application/json"}
                    )
                except httpx.HTTPError as exc:
                    ledger.answer(type(exc).__name__)  # the agent is down or was killed mid-request
                    time.sleep(0.05)
                    continue
                finally:
                    with ledger.lock:
                        ledger.in_flight -= 1
                ledger.answer(str(response.status_code))
                if response.status_code == 200:
                    ledger.ack(ids, "http")
                    break
                if response.status_code in (429, 503):  # outbox full / shutting down: retry later
                    time.sleep(min(0.5, float(response.headers.get("Retry-After", "0.2"))))
                    continue
                with ledger.lock:
                    ledger.unexpected.append(f"{response.status_code} {response.text[:300]}")
                break
            time.sleep(rng.uniform(0.05, 0.2) * PLAN.pause)


def drop_producer(spool: Path, ledger: Ledger, stop: threading.Event, seed: int) -> None:
    """Write files of 1-40 events into tmp/, fsync, rename into new/ (the handoff), fsync new/."""
    rng = random.Random(seed)
    n = 0
    new_dir = os.open(spool / "new", os.O_RDONLY)
    try:
        while not stop.is_set():
            ids = event_ids("drop", rng, rng.randint(1, 40), n, PLAN.poison_rate)
            n += len(ids)
            events = [make_event(i, rng) for i in ids]
            if rng.random() < 0.5:
                name, data = f"f{n:07d}.ndjson", b"".join(orjson.dumps(e) + b"\n" for e in events)
            else:
                name, data = f"f{n:07d}.json", orjson.dumps(events, option=orjson.OPT_INDENT_2)
            ledger.offer(ids)
            staged = spool / "tmp" / name
            with staged.open("wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.rename(staged, spool / "new" / name)
            os.fsync(new_dir)
            ledger.ack(ids, "dropdir")
            time.sleep(rng.uniform(0.1, 0.5) * PLAN.pause)
    finally:
        os.close(new_dir)


LIBRARY_PRODUCER = """
import os, random, sys, time
from datetime import UTC, datetime
from agent.errors import OutboxError
from agent.outbox import Outbox

path, ack_path, stop_path, seed, poison_rate, pause = sys.argv[1:7]
rng = random.Random(int(seed))
outbox = Outbox(path)
n = 0
with open(ack_path, "a") as ack:
    while not os.path.exists(stop_path):
        poison = rng.random() < float(poison_rate)
        event_id = ("poison-" if poison else "") + f"lib-{n:06d}"
        event = {"event_id": event_id, "customer_id": "cus_lib", "event_name": "api.call",
                 "metadata": {"tokens": rng.randint(1, 100)}}
        if n % 2:
            event["timestamp"] = datetime.now(UTC).isoformat()
        while True:
            try:
                outbox.enqueue(event)
                break
            except OutboxError as exc:  # locked for too long, or full: the same event again
                print("retry:", exc, file=sys.stderr, flush=True)
                time.sleep(0.05)
        ack.write(event_id + "\\n")
        ack.flush()
        n += 1
        time.sleep(rng.uniform(0.01, 0.04) * float(pause))
outbox.close()
"""


@dataclass
class Kill:
    signal: str
    point: str
    reached: bool
    exit_code: int


def reach_point(point: str, agent: AgentProcess, emulator: EmulatorProcess, ledger: Ledger) -> bool:
    """Wait (briefly) until the agent is at `point`; True when it was seen there."""
    deadline = time.monotonic() + 3.0
    if point == "intake":  # a producer's request is being handled
        while time.monotonic() < deadline:
            if ledger.in_flight > 0:
                return True
            time.sleep(0.001)
        return False
    if point == "batch":  # Dodo holds a request (stored, answer delayed): killed mid-send
        emulator.set_faults(**FAULTS, latency_ms=400)
    try:
        before = emulator.stats()["requests"]
        while time.monotonic() < deadline:
            if emulator.stats()["requests"] > before:
                # "settle": Dodo just answered, the agent is settling the rows
                return True
            time.sleep(0.001)
        return False
    finally:
        if point == "batch":
            time.sleep(0.05)  # the delayed answer is on its way when the agent dies
            emulator.set_faults(**FAULTS)


def read_acked_library(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [line for line in path.read_text().splitlines() if line]


def outbox_rows(path: Path) -> dict[str, tuple[str, str | None, int | None, str | None]]:
    """event_id -> (state, reason, http_status, response), read from the file directly."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {
            row[0]: (row[1], row[2], row[3], row[4])
            for row in conn.execute(
                "SELECT event_id, state, reason, http_status, response FROM dodo_outbox_events"
            )
        }
    finally:
        conn.close()


@pytest.mark.timeout(PLAN.timeout)
def test_chaos_nothing_acknowledged_is_lost(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    seed = int(os.environ.get("DODO_OUTBOX_CHAOS_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    spool = tmp_path / "spool"
    for sub in ("tmp", "new"):
        (spool / sub).mkdir(parents=True)
    port = free_port()
    emulator = EmulatorProcess(
        reject_event_ids=f"^{POISON_PREFIX}", rate_per_second=25, rate_per_minute=1_000_000, seed=seed
    ).start()
    config = write_config(
        tmp_path / "agent.toml",
        base_sections(
            tmp_path,
            emulator.url,
            port,
            intake_dropdir={"enabled": True, "path": str(spool), "scan_interval_seconds": 0.5},
        ),
    )
    agent = AgentProcess(config, tmp_path / "agent.log", port, {"DODO_PAYMENTS_API_KEY": KEY})
    ledger = Ledger()
    stop, give_up = threading.Event(), threading.Event()
    library_acks, library_stop = tmp_path / "library.acked", tmp_path / "library.stop"
    library: subprocess.Popen[bytes] | None = None
    threads: list[threading.Thread] = []
    kills: list[Kill] = []
    try:
        emulator.set_faults(**FAULTS, seed=seed)
        agent.start()
        library = subprocess.Popen(
            [
                sys.executable,
                "-c",
                LIBRARY_PRODUCER,
                str(tmp_path / "outbox.db"),
                str(library_acks),
                str(library_stop),
                str(seed),
                str(PLAN.poison_rate),
                str(PLAN.pause),
            ],
            cwd=ROOT,
            env=child_env(),
            stderr=subprocess.DEVNULL,
        )
        threads = [
            threading.Thread(target=http_producer, args=(i, agent.url, ledger, stop, give_up, seed + i))
            for i in range(PLAN.http_producers)
        ]
        threads.append(threading.Thread(target=drop_producer, args=(spool, ledger, stop, seed)))
        for thread in threads:
            thread.start()

        # -- kill the agent at chosen points, restart it ------------------------------------------
        schedule = ["SIGKILL"] * PLAN.sigkills
        schedule.insert(rng.randrange(len(schedule) + 1), "SIGTERM")
        started = time.monotonic()
        gap = PLAN.produce_seconds / (len(schedule) + 1)
        for number, kind in enumerate(schedule):
            time.sleep(
                max(0.2, min(rng.uniform(0.5, 1.5) * gap, started + PLAN.produce_seconds - time.monotonic()))
            )
            if number % 3 == 1:  # now and then a burst of 429s with Retry-After
                emulator.set_faults(**FAULTS, script=[429] * rng.randint(4, 10))
            point = rng.choice(["intake", "batch", "settle"])
            reached = reach_point(point, agent, emulator, ledger)
            code = agent.signal(signal.SIGKILL if kind == "SIGKILL" else signal.SIGTERM)
            kills.append(Kill(kind, point, reached, code))
            if kind == "SIGTERM":
                assert code == 0, f"SIGTERM should stop the agent cleanly:\n{agent.log_tail()}"
            time.sleep(rng.uniform(0.0, 0.8))  # down for a moment: producers meet refused connections
            agent.start()
        time.sleep(max(0.0, started + PLAN.produce_seconds - time.monotonic()))

        # -- stop producing, faults off, drain until idle ----------------------------------------
        stop.set()
        library_stop.touch()
        library.wait(60)
        emulator.clear_faults()
        for thread in threads:
            thread.join(60)
        assert not any(t.is_alive() for t in threads), "a producer did not finish"

        def drained() -> bool:
            if any((spool / "new").iterdir()):
                return False
            document = httpx.get(f"{agent.url}/v1/status", timeout=5).json()
            return bool(document["pending"] == 0 and document["inflight"] == 0)

        try:
            wait_until(drained, PLAN.drain_deadline, "the agent to drain everything", poll=0.25)
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}; Dodo saw {emulator.stats()}; the agent's threads:\n{agent.dump_stacks()}"
            ) from None
        assert agent.stop() == 0, agent.log_tail()
    finally:
        stop.set()
        give_up.set()
        library_stop.touch()
        for thread in threads:
            thread.join(10)
        if library is not None and library.poll() is None:
            library.kill()
            library.wait(10)
        agent.ensure_stopped()
        stats = emulator.stats() if emulator.proc is not None else {}
        at_dodo = emulator.events() if emulator.proc is not None else {}
        emulator.stop()

    # -- the verdict --------------------------------------------------------------------------------
    library_ids = read_acked_library(library_acks)
    ledger.offer(library_ids)
    ledger.ack(library_ids, "library")
    acked = set(ledger.acked)
    poison_acked = {i for i in acked if i.startswith(POISON_PREFIX)}
    valid_acked = acked - poison_acked
    lost = sorted(valid_acked - set(at_dodo))
    rows = outbox_rows(tmp_path / "outbox.db")
    dead = {i: r for i, r in rows.items() if r[0] == "dead"}
    delivered = {i for i, r in rows.items() if r[0] == "delivered"}
    status = status_json(config)
    dlq = json.loads(cli(config, "dlq", "list", "--json", "--limit", "1000000").stdout)

    summary = (
        f"chaos: sent={len(ledger.sent)} acknowledged={len(acked)} delivered={len(at_dodo)} "
        f"dead={len(dead)} lost={len(lost)} duplicates={stats.get('duplicates_ignored', 0)}"
    )
    kinds = Counter(f"{k.signal}@{k.point}{'' if k.reached else '(missed)'}" for k in kills)
    detail = (
        f"chaos detail: mode={PLAN.mode} seed={seed} kills={dict(kinds)} agent_starts={agent.starts} "
        f"dodo_requests={stats.get('requests_by_status')} producer_answers={dict(ledger.answers)} "
        f"by_channel={dict(Counter(ledger.acked.values()))}"
    )
    report(request, summary)
    report(request, detail)

    assert not ledger.unexpected, f"the agent refused valid requests: {ledger.unexpected[:5]}"
    assert lost == [], f"{len(lost)} acknowledged events never reached Dodo: {lost[:10]}\n{detail}"
    assert len(acked) > 500 and poison_acked, "the run produced too little to prove anything"
    assert len(kills) == PLAN.sigkills + 1
    # Every acknowledged event is in the outbox, and every outbox row is settled.
    assert acked <= set(rows)
    assert {r[0] for r in rows.values()} <= {"delivered", "dead"}
    # Delivered rows are exactly what Dodo holds: nothing marked delivered that Dodo lacks.
    assert delivered == set(at_dodo)
    # Dead rows are exactly the poison events, each with Dodo's refusal.
    valid_dead = sorted(i for i in dead if not i.startswith(POISON_PREFIX))
    assert valid_dead == [], f"valid events were dead-lettered: {valid_dead[:10]}"
    assert poison_acked <= set(dead)
    for event_id, (_state, reason, http_status, response) in dead.items():
        assert (reason, http_status) == ("rejected", 400), (event_id, reason, http_status)
        assert response is not None and "reject_event_ids" in response
    assert {d["event_id"] for d in dlq} == set(dead)
    assert not any(i.startswith(POISON_PREFIX) for i in at_dodo)
    # status --json agrees with Dodo.
    counts = {k: status[k] for k in ("pending", "inflight", "delivered", "dead")}
    assert counts == {"pending": 0, "inflight": 0, "delivered": len(at_dodo), "dead": len(dead)}
    assert stats["events_stored"] == len(at_dodo)
    # Every drop file was ingested; none was rejected.
    assert not any((spool / "new").iterdir()) and not any((spool / "rejected").iterdir())
    crashes = [e for e in agent.log_lines() if e.get("event") in ("intake_crashed", "drain_failed")]
    assert crashes == [], crashes[:3]


def test_the_emulator_refuses_poison_ids_that_the_agent_accepts() -> None:
    """The poison the chaos test relies on: valid for the agent, refused by (emulated) Dodo with 400."""
    from agent.emulator import EmulatorConfig, EmulatorState
    from agent.events import validate

    state = EmulatorState(EmulatorConfig(keys={KEY}, rate_limit=False, reject_event_ids=f"^{POISON_PREFIX}"))
    poison = {"event_id": f"{POISON_PREFIX}1", "customer_id": "cus_1", "event_name": "api.call"}
    validate(poison, time.time())  # the agent accepts it
    body = orjson.dumps({"events": [dict(poison, event_id="fine-1"), poison]})
    refused = state.ingest(f"Bearer {KEY}", body)
    assert refused.status == 400 and "reject_event_ids" in refused.body["message"]
    assert (
        state.ingest(f"Bearer {KEY}", orjson.dumps({"events": [dict(poison, event_id="fine-1")]})).status
        == 200
    )
    assert set(state.events) == {"fine-1"}
    with pytest.raises(ValueError, match="reject_event_ids"):
        EmulatorConfig(reject_event_ids="(")
