"""A `run` on a PostgreSQL outbox killed with SIGKILL while a batch is in flight loses nothing.

A real `python -m agent run` on a PostgreSQL outbox delivers HTTP-acknowledged events to the emulator.
Then the emulator holds every ingest request without answering (a `timeout` fault: it stores nothing
and would answer 504 much later), the agent claims and sends the next events, and is killed with
SIGKILL while Dodo holds its requests: its claimed rows stay leased to a process that is gone. Dodo is
healthy again, the agent is started again (a new process, a new lease owner) and more events arrive.

Then every acknowledged event reaches Dodo; the rows the dead agent held are delivered by the new
one, and only once their lease passed (each settles after the lease it had at the kill: the new
agent never takes a row still leased); the outbox ends with every row delivered.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.reliability.conftest import report
from tests.reliability.helpers import (
    KEY,
    AgentProcess,
    EmulatorProcess,
    free_port,
    pg_sections,
    wait_until,
    write_config,
)
from tests.reliability.pg_agent import pg_store, states

LEASE_SECONDS = 6
"""Long enough that the agent is up again before the dead one's leases pass, even on a busy machine."""


def send(agent: AgentProcess, prefix: str, count: int) -> set[str]:
    """POST `count` events in requests of 50; every one must be acknowledged."""
    ids = [f"{prefix}-{i}" for i in range(count)]
    for start in range(0, count, 50):
        chunk = ids[start : start + 50]
        body = {"events": [{"event_id": i, "customer_id": "cus_1", "event_name": "api.call"} for i in chunk]}
        answer = httpx.post(f"{agent.url}/events/ingest", json=body, timeout=30)
        assert answer.status_code == 200, answer.text
    return set(ids)


def test_sigkill_mid_batch_loses_nothing_and_the_leased_rows_go_once_the_lease_passes(
    tmp_path: Path, postgres_url: str, pg_schema: str, request: pytest.FixtureRequest
) -> None:
    with EmulatorProcess(rate_limit=False) as emulator:
        port = free_port()
        sections = pg_sections(
            tmp_path,
            emulator.url,
            port,
            postgres_url,
            pg_schema,
            # The request must still be in flight at the kill: the agent waits far longer than that.
            delivery={"lease_seconds": LEASE_SECONDS, "timeout_seconds": 60, "batch_max_events": 100},
        )
        config = write_config(tmp_path / "agent.toml", sections)
        agent = AgentProcess(config, tmp_path / "agent.log", port, {"DODO_PAYMENTS_API_KEY": KEY})
        try:
            agent.start()
            acked = send(agent, "before", 120)
            wait_until(lambda: acked <= set(emulator.events()), 60, "the first events at Dodo")

            emulator.set_faults(timeout_rate=1.0, timeout_sleep_seconds=300)  # Dodo holds every request
            held = send(agent, "held", 250)
            acked |= held
            held_by_dodo = emulator.stats
            wait_until(
                lambda: held_by_dodo()["requests_by_status"].get("timeout"), 60, "a batch held by Dodo"
            )
            with pg_store(postgres_url, pg_schema) as store:  # the agent's claim is in place: a batch is out
                wait_until(lambda: store.counts().get("inflight", 0) > 0, 60, "rows leased by the agent")
            assert agent.kill() == -9
            killed_pid = agent.pid

            with pg_store(postgres_url, pg_schema) as store:
                records = {i: store.get(i) for i in sorted(held)}
            leased = {i: r for i, r in records.items() if r is not None and r.state == "inflight"}
            assert leased, "no row was in flight at the kill: the test proves nothing"
            assert not set(leased) & set(emulator.events()), "Dodo stored a batch it was holding"
            lease_until = {i: r.lease_until_us for i, r in leased.items()}
            assert all(until is not None for until in lease_until.values())

            emulator.clear_faults()
            agent.start()
            assert agent.pid != killed_pid
            acked |= send(agent, "after", 80)
            wait_until(lambda: acked <= set(emulator.events()), 90, "every acknowledged event at Dodo")
            wait_until(
                lambda: set(states(postgres_url, pg_schema, sorted(acked)).values()) == {"delivered"},
                60,
                "every row delivered in the outbox",
            )
            with pg_store(postgres_url, pg_schema) as store:
                settled = {i: store.get(i) for i in leased}
                counts = store.counts()
            assert agent.stop() == 0
        finally:
            agent.ensure_stopped()
        received = emulator.events()
        stats = emulator.stats()

    # Delivered by the new agent only after the dead one's lease passed, and sent once more each.
    early = {
        i
        for i, r in settled.items()
        if r is None or r.settled_at_us is None or r.settled_at_us < (lease_until[i] or 0)
    }
    assert not early, f"{len(early)} leased rows settled before their lease passed, e.g. {sorted(early)[:3]}"
    assert all(r is not None and r.attempts >= 2 for r in settled.values())  # the dead agent's try counted
    assert set(received) == acked, "Dodo's events are not exactly the acknowledged ones"
    assert counts.get("delivered") == len(acked) and not counts.get("inflight") and not counts.get("pending")
    report(
        request,
        f"pg sigkill: {len(acked)} acknowledged, {len(leased)} leased by the killed agent, all delivered "
        f"after their lease; Dodo has {len(received)} unique ({stats['duplicates_ignored']} repeats dropped)",
    )
