"""Long outages and a long authentication failure, with the agent as a real process.

Dodo's window (1 hour) is shrunk to seconds in both the emulator and the agent (`[delivery]
window_seconds` and `late_margin_seconds`), so "down for longer than the window" takes seconds:
- `late_events = "restamp"`: every event is delivered once Dodo is back (the late ones without their
  timestamp, so Dodo stamps them on receipt);
- `late_events = "dead_letter"`: every late event is parked as `expired`, and
  `dodo-outbox dlq replay --all --restamp` then delivers them all;
- 401 for a long stretch: nothing is dead-lettered, delivery pauses, and it resumes by itself once the
  key file holds a key Dodo accepts.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.emulator import EmulatorServer
from tests.emulator_fixture import FakeDodoFactory
from tests.reliability.helpers import (
    AgentProcess,
    base_sections,
    cli,
    free_port,
    status_json,
    wait_until,
    write_config,
)

WINDOW = 5.0  # Dodo's window, shrunk from 3600 s
MARGIN = 1.0
OUTAGE = WINDOW + 3.0
KEY = "outage_key_0123456"


def batch(prefix: str, count: int, stamped: bool) -> list[dict[str, Any]]:
    now = datetime.now(UTC).isoformat()
    return [
        {
            "event_id": f"{prefix}-{i}",
            "customer_id": "cus_1",
            "event_name": "api.call",
            **({} if stamped else {"timestamp": now}),
        }
        for i in range(count)
    ]


@pytest.fixture
def agent_factory(tmp_path: Path) -> Iterator[Any]:
    agents: list[AgentProcess] = []

    def start(url: str, env: dict[str, str] | None = None, **overrides: Any) -> tuple[AgentProcess, Path]:
        port = free_port()
        sections = base_sections(tmp_path, url, port, **overrides)
        config = write_config(tmp_path / "agent.toml", sections)
        agent = AgentProcess(config, tmp_path / "agent.log", port, env or {"DODO_PAYMENTS_API_KEY": KEY})
        agents.append(agent.start())
        return agent, config

    yield start
    for agent in agents:
        agent.ensure_stopped()
        # Shown by pytest only when the test failed: what the agent did while the test waited.
        print(f"--- the agent's log (last lines):\n{agent.log_tail(120)}")


def send(agent: AgentProcess, events: list[dict[str, Any]]) -> set[str]:
    response = httpx.post(f"{agent.url}/events/ingest", json={"events": events}, timeout=10)
    assert response.status_code == 200, response.text
    return {e["event_id"] for e in events}


def outbox_rows(tmp_path: Path) -> dict[str, dict[str, Any]]:
    import sqlite3

    conn = sqlite3.connect(tmp_path / "outbox.db")
    conn.row_factory = sqlite3.Row
    try:
        return {
            r["event_id"]: dict(r)
            for r in conn.execute(
                "SELECT event_id, state, reason, restamped, attempts FROM dodo_outbox_events"
            )
        }
    finally:
        conn.close()


def window_fake(factory: FakeDodoFactory) -> EmulatorServer:
    return factory(keys={KEY}, rate_limit=False, window_seconds=WINDOW)


def window_settings(policy: str) -> dict[str, Any]:
    return {"late_events": policy, "window_seconds": WINDOW, "late_margin_seconds": MARGIN}


def test_an_outage_longer_than_the_window_with_restamp_delivers_everything(
    tmp_path: Path, fake_dodo_factory: FakeDodoFactory, agent_factory: Any
) -> None:
    fake = window_fake(fake_dodo_factory)
    agent, config = agent_factory(fake.url, delivery=window_settings("restamp"))
    # The outage starts once the agent is up: the events sent next are then older than the window
    # when it ends, however long a busy machine took to start the agent.
    fake.set_faults(outage_seconds=OUTAGE)
    acked = send(agent, batch("early", 30, stamped=False)) | send(
        agent, batch("early-stamped", 10, stamped=True)
    )
    # Re-armed once they are acknowledged: the outage outlasts the window measured from their enqueue,
    # however long a loaded machine took to accept them (a slow intake made them young at the end).
    fake.set_faults(outage_seconds=OUTAGE)
    wait_until(lambda: fake.stats()["requests_by_status"].get("503", 0) >= 2, 60, "Dodo to refuse (outage)")
    acked |= send(agent, batch("mid", 20, stamped=False))
    wait_until(lambda: acked <= set(fake.events), OUTAGE + 60, "every event to be delivered after the outage")
    wait_until(
        lambda: {r["state"] for r in outbox_rows(tmp_path).values()} == {"delivered"}, 60, "the settle"
    )
    rows = outbox_rows(tmp_path)
    assert all(rows[i]["restamped"] for i in acked if i.startswith("early-"))  # sent without their old time
    status = status_json(config)
    assert (status["delivered"], status["dead"], status["pending"]) == (len(acked), 0, 0)
    assert agent.stop() == 0


def test_an_outage_longer_than_the_window_with_dead_letter_parks_then_replay_delivers(
    tmp_path: Path, fake_dodo_factory: FakeDodoFactory, agent_factory: Any
) -> None:
    fake = window_fake(fake_dodo_factory)
    agent, config = agent_factory(fake.url, delivery=window_settings("dead_letter"))
    # The outage starts once the agent is up: the events sent next are then older than the window
    # when it ends, however long a busy machine took to start the agent.
    fake.set_faults(outage_seconds=OUTAGE)
    acked = send(agent, batch("late", 40, stamped=False)) | send(
        agent, batch("late-stamped", 10, stamped=True)
    )
    # Re-armed once they are acknowledged: the outage outlasts the window measured from their enqueue,
    # however long a loaded machine took to accept them (a slow intake made them young at the end).
    fake.set_faults(outage_seconds=OUTAGE)

    def all_dead() -> bool:
        return {i for i, r in outbox_rows(tmp_path).items() if r["state"] == "dead"} == acked

    wait_until(all_dead, OUTAGE + 60, "every late event to be parked as expired")
    assert not fake.events
    parked = json.loads(cli(config, "dlq", "list", "--json", "--reason", "expired", "--limit", "1000").stdout)
    assert {d["event_id"] for d in parked} == acked and {d["reason"] for d in parked} == {"expired"}
    wait_until(lambda: fake.faults()["outage_remaining_seconds"] == 0, OUTAGE + 60, "Dodo to be back")

    replay = cli(config, "dlq", "replay", "--all", "--restamp", "--json")
    assert replay.returncode == 0, replay.stderr
    result = json.loads(replay.stdout)
    assert result["replayed"] == len(acked) and result["restamped"] == len(acked)
    wait_until(lambda: acked <= set(fake.events), 60, "the replayed events to be delivered")
    # Dodo stores a batch before the agent reads the answer and settles it: wait for the settle.
    wait_until(
        lambda: {r["state"] for r in outbox_rows(tmp_path).values()} == {"delivered"}, 60, "the settle"
    )
    status = status_json(config)
    assert (status["delivered"], status["dead"]) == (len(acked), 0)
    assert agent.stop() == 0


def test_401_for_a_long_stretch_dead_letters_nothing_and_resumes_when_the_key_file_is_fixed(
    tmp_path: Path, fake_dodo_factory: FakeDodoFactory, agent_factory: Any
) -> None:
    fake = fake_dodo_factory(keys={"the_new_key_0123"}, rate_limit=False)
    key_file = tmp_path / "dodo_api_key"
    key_file.write_text("the_old_key_0123\n")  # rotated at Dodo, not yet here
    agent, config = agent_factory(
        fake.url,
        env={},
        dodo={"api_key_file": str(key_file)},
        delivery={"auth_retry_seconds": 0.3},
    )
    acked: set[str] = set()
    for n in range(10):  # events keep coming while Dodo refuses the key
        acked |= send(agent, batch(f"auth{n}", 10, stamped=False))

        def probed(n: int = n) -> bool:
            return int(fake.stats()["requests_by_status"].get("401", 0)) > n

        wait_until(probed, 60, "another 401 probe")
    status = status_json(config)
    assert status["paused"] and "401" in (status["paused_reason"] or "")
    assert (status["dead"], status["delivered"], status["pending"] + status["inflight"]) == (0, 0, len(acked))
    assert max(r["attempts"] for r in outbox_rows(tmp_path).values()) <= 1  # a 401 costs no attempt

    staged = tmp_path / "dodo_api_key.new"
    staged.write_text("the_new_key_0123\n")
    os.replace(staged, key_file)  # fixed: no restart, no signal
    wait_until(lambda: acked <= set(fake.events), 60, "delivery to resume by itself")
    wait_until(lambda: status_json(config)["delivered"] == len(acked), 60, "the settle")
    status = status_json(config)
    assert not status["paused"] and (status["delivered"], status["dead"]) == (len(acked), 0)
    resumed = [e for e in agent.log_lines() if e.get("event") == "delivery_resumed"]
    assert resumed and "the_new_key" not in (tmp_path / "agent.log").read_text()
    assert agent.stop() == 0
