"""`dodo-outbox run` end to end: a real subprocess, a real emulator, real signals and a real notify socket."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from agent import Outbox
from agent.emulator import EmulatorServer
from agent.store import Store
from tests.waiting import PATIENCE

KEY = "sk_test_e2e_secret_value"
TOKEN = "intake-token-e2e-value"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate, timeout: float = 30.0, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Running:
    def __init__(
        self, proc: subprocess.Popen[str], url: str, db: Path, log: Path, notify: socket.socket
    ) -> None:
        self.proc, self.url, self.db, self.log, self.notify = proc, url, db, log, notify

    def wait_notification(self, wanted: str, timeout: float = PATIENCE) -> list[str]:
        """Read sd_notify messages until `wanted` is among them; fail after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        got: list[str] = []
        while wanted not in got:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {wanted} notification in {timeout:g} s; got {got}")
            self.notify.settimeout(left)
            try:
                got.extend(self.notify.recv(4096).decode().splitlines())
            except TimeoutError:
                continue
        return got

    def notifications(self, timeout: float = 0.5) -> list[str]:
        self.notify.settimeout(timeout)
        got: list[str] = []
        try:
            while True:
                got.extend(self.notify.recv(4096).decode().splitlines())
                self.notify.settimeout(0.05)
        except (TimeoutError, BlockingIOError):
            return got


@pytest.fixture
def agent(tmp_path: Path, fake_dodo_factory) -> Iterator[tuple[Running, EmulatorServer]]:  # type: ignore[no-untyped-def]
    dodo = fake_dodo_factory(keys={KEY}, rate_limit=False)
    port = free_port()
    keyfile = tmp_path / "api_key"
    keyfile.write_text(KEY + "\n")
    spool = tmp_path / "spool"
    config = tmp_path / "agent.toml"
    config.write_text(
        f"""
[dodo]
base_url = "{dodo.url}"
api_key_file = "{keyfile}"
[outbox]
path = "{tmp_path / "outbox.db"}"
[delivery]
interval_seconds = 0.2
backoff_initial_seconds = 0.05
backoff_max_seconds = 0.5
auth_retry_seconds = 0.3
timeout_seconds = 10
[intake.http]
listen = "127.0.0.1:{port}"
token = "{TOKEN}"
[intake.dropdir]
enabled = true
path = "{spool}"
scan_interval_seconds = 0.2
[log]
format = "json"
level = "debug"
"""
    )
    notify_path = tmp_path / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    log = tmp_path / "agent.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DODO_", "NOTIFY_", "WATCHDOG_"))}
    env |= {"NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "2000000"}
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
    running = Running(proc, f"http://127.0.0.1:{port}", tmp_path / "outbox.db", log, notify)
    try:
        wait_for(lambda: "agent_ready" in log.read_text() or proc.poll() is not None, what="agent_ready")
        assert proc.poll() is None, log.read_text()
        yield running, dodo
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        notify.close()


def test_events_from_every_intake_arrive_and_sigterm_is_clean(
    agent: tuple[Running, EmulatorServer], tmp_path: Path
) -> None:
    run, dodo = agent
    assert "READY=1" in run.wait_notification("READY=1")

    # 1. The official SDK, pointed at the agent by base_url only (its key is the agent's token).
    from dodopayments import DodoPayments

    client = DodoPayments(bearer_token=TOKEN, base_url=run.url)
    answer = client.usage_events.ingest(
        events=[{"event_id": f"sdk-{i}", "customer_id": "cus_1", "event_name": "api.call"} for i in range(5)]
    )
    assert answer.ingested_count == 5
    # 2. The drop directory.
    spool = tmp_path / "spool"
    wait_for(lambda: (spool / "new").is_dir(), what="spool dirs")
    (spool / "tmp" / "batch.ndjson").write_text(
        "\n".join(
            json.dumps({"event_id": f"drop-{i}", "customer_id": "cus_2", "event_name": "job.run"})
            for i in range(5)
        )
    )
    (spool / "tmp" / "batch.ndjson").rename(spool / "new" / "batch.ndjson")
    # 3. The library, from this process, into the file the agent drains.
    with Outbox(run.db) as outbox:
        outbox.enqueue_many(
            [{"event_id": f"lib-{i}", "customer_id": "cus_3", "event_name": "x"} for i in range(5)]
        )

    wait_for(lambda: len(dodo.events) == 15, what="all 15 events at the emulator")
    assert set(dodo.events) == {f"{p}-{i}" for p in ("sdk", "drop", "lib") for i in range(5)}
    assert (spool / "done" / "batch.ndjson").exists()
    status = httpx.get(f"{run.url}/v1/status", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert status["delivered"] == 15 and status["pending"] == 0
    # The running agent is in the fleet's registry, under its own pid.
    assert [(a["state"], a["pid"]) for a in status["agents"]] == [("active", run.proc.pid)]

    # A slow Dodo, a batch in flight, then SIGTERM: the batch finishes, exit 0, nothing lost.
    dodo.set_faults(latency_ms=1500)
    with Outbox(run.db) as outbox:
        outbox.enqueue_many(
            [{"event_id": f"late-{i}", "customer_id": "c", "event_name": "x"} for i in range(50)]
        )

    def in_flight() -> bool:
        with Store(run.db) as store:
            return store.counts()["inflight"] > 0

    wait_for(in_flight, timeout=PATIENCE, what="a batch in flight")
    run.proc.send_signal(signal.SIGTERM)
    assert run.proc.wait(30) == 0, run.log.read_text()
    notes = run.notifications(timeout=1)
    assert "STOPPING=1" in notes
    assert "WATCHDOG=1" in notes  # fed every second while the drain loop ticked
    with Store(run.db) as store:
        counts = store.counts()
        assert counts["inflight"] == 0 and counts["dead"] == 0
        assert counts["delivered"] + counts["pending"] == 65
        # Its last beat on the way out: stopped, with every event it delivered counted.
        (agent_row,) = store.agents()
        assert agent_row.stopped and agent_row.delivered == counts["delivered"]
    delivered_ids = {e for e in dodo.events}
    # Whatever was not delivered before the stop is still pending in the outbox: nothing lost.
    with Store(run.db) as store:
        for i in range(50):
            record = store.get(f"late-{i}")
            assert record is not None
            assert record.state == ("delivered" if f"late-{i}" in delivered_ids else "pending")

    log = run.log.read_text()
    assert KEY not in log and TOKEN not in log, "a secret reached the log"
    for line in log.splitlines():
        json.loads(line)  # JSON lines off a terminal


def test_sighup_rereads_a_fixed_key_and_delivery_resumes(
    agent: tuple[Running, EmulatorServer], tmp_path: Path
) -> None:
    run, dodo = agent
    dodo.set_keys({"sk_rotated"})
    with Outbox(run.db) as outbox:
        outbox.enqueue({"event_id": "k-1", "customer_id": "c", "event_name": "x"})
    wait_for(lambda: "delivery_paused" in run.log.read_text(), what="the pause")
    ready = httpx.get(f"{run.url}/readyz").json()
    assert ready.get("delivery_paused") is True
    (tmp_path / "api_key").write_text("sk_rotated")
    run.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "k-1" in dodo.events, what="delivery after the key was fixed")

    def settled() -> bool:  # Dodo stores the batch before the agent has read the answer and settled it
        with Store(run.db) as store:
            record = store.get("k-1")
            return record is not None and record.state != "inflight"

    wait_for(settled, what="the delivery to be settled")
    with Store(run.db) as store:
        record = store.get("k-1")
        assert record is not None and record.state == "delivered" and record.attempts == 1
    assert "agent_reloaded" in run.log.read_text()
    run.proc.send_signal(signal.SIGTERM)
    assert run.proc.wait(30) == 0
    assert "sk_rotated" not in run.log.read_text()


def test_bad_bodies_never_get_a_500(agent: tuple[Running, EmulatorServer]) -> None:
    run, _ = agent
    auth = {"Authorization": f"Bearer {TOKEN}", "content-type": "application/json"}
    bodies = [
        b"",
        b"{",
        b"[]",
        b'{"events": 5}',
        b'{"events": []}',
        b"\xff\xfe",
        b'{"events": [null]}',
        b"{}" * 1000,
    ]
    for body in bodies:
        response = httpx.post(f"{run.url}/events/ingest", content=body, headers=auth)
        assert 400 <= response.status_code < 500, (body, response.status_code, response.text)
        assert "code" in response.json()
    assert httpx.post(f"{run.url}/events/ingest", json={"events": []}).status_code == 401
