"""Every event the HTTP endpoint acknowledged survives SIGKILL under concurrent load.

A real `python -m agent run` (synchronous = full, delivery without an API key so nothing leaves the
outbox) takes single-event and small-batch POSTs with unique ids from many client threads; it is killed
with SIGKILL while requests are in flight; then the outbox file, opened with agent.store, holds every
event that got a 200.
"""

from __future__ import annotations

import threading
from pathlib import Path

import httpx

from agent.store import Store
from tests.reliability.helpers import AgentProcess, base_sections, free_port, wait_until, write_config

CLIENTS = 16
KILL_AFTER = 1500
"""Acknowledged requests before the kill: enough for many shared commits to have happened."""


def test_sigkill_under_load_loses_no_acknowledged_event(tmp_path: Path) -> None:
    port = free_port()
    sections = base_sections(tmp_path, "http://127.0.0.1:9", port, outbox={"synchronous": "full"})
    agent = AgentProcess(write_config(tmp_path / "agent.toml", sections), tmp_path / "agent.log", port, {})
    agent.start()
    acknowledged: list[str] = []
    failed_after_kill = [0]
    requests = [0]
    killed = threading.Event()
    lock = threading.Lock()

    def client(number: int) -> None:
        with httpx.Client(base_url=agent.url, timeout=30) as http:
            for seq in range(1_000_000):
                size = 1 + seq % 3  # 1, 2 or 3 events a request
                ids = [f"c{number}-{seq}-{i}" for i in range(size)]
                body = {
                    "events": [{"event_id": i, "customer_id": "cus_1", "event_name": "api.call"} for i in ids]
                }
                try:
                    response = http.post("/events/ingest", json=body)
                except httpx.HTTPError:
                    if killed.is_set():
                        with lock:
                            failed_after_kill[0] += 1
                        return
                    raise
                if response.status_code == 200:
                    with lock:
                        acknowledged.extend(ids)
                        requests[0] += 1
                elif killed.is_set():
                    return
                else:
                    raise AssertionError(f"{response.status_code}: {response.text}")

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(CLIENTS)]
    try:
        for thread in threads:
            thread.start()
        wait_until(lambda: requests[0] >= KILL_AFTER, what=f"{KILL_AFTER} acknowledged requests")
        killed.set()
        agent.kill()
        for thread in threads:
            thread.join(60)
    finally:
        agent.ensure_stopped()
    assert not any(thread.is_alive() for thread in threads)
    assert failed_after_kill[0] > 0, "no request was in flight at the kill: the test proves nothing"
    with lock:
        acked = set(acknowledged)
    with Store(tmp_path / "outbox.db") as store, store.read() as conn:
        present = {row[0] for row in conn.execute("SELECT event_id FROM dodo_outbox_events")}
    missing = acked - present
    assert not missing, (
        f"{len(missing)} acknowledged events are not in the outbox, e.g. {sorted(missing)[:5]}"
    )
    assert len(acked) >= KILL_AFTER
