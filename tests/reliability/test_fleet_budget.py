"""The fleet's shared budget and pause with real processes, and a fleet behind PgBouncer.

- Three `run` processes with a small `[delivery] requests_per_minute` / `burst` against an emulator
  whose rate limiter is set to that same budget: in no window does the fleet send more than the budget
  lets through (the emulator's request log), and Dodo never answers 429.
- A 401 seen by one agent pauses all three (each one's `GET /v1/status` says so), only about one probe
  per `auth_retry_seconds` reaches Dodo for the whole fleet, and accepting the key again resumes all.
- Three agents drain through a PgBouncer in transaction pooling (`pool_mode = transaction`).

The first two need the fleet's shared budget and pause (issue 14), so they are expected to fail
(strict) until that is merged; the third needs `[outbox] prepared_statements = false`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.bench.pgcluster import REQUIRE_ENV, Unavailable
from tests.reliability.fleet import Fleet, over_budget, request_times
from tests.reliability.helpers import KEY, EmulatorProcess, wait_until

RPM, BURST = 60, 2
"""The fleet's budget: two at once, then one request a second for the three agents together."""


def enqueue(url: str, schema: str, prefix: str, count: int) -> list[str]:
    """`count` events committed to the outbox by an app (the library), as one call."""
    from agent.outbox import Outbox

    ids = [f"{prefix}-{i:05d}" for i in range(count)]
    with Outbox(url, schema=schema) as outbox:
        outbox.enqueue_many([{"event_id": i, "customer_id": "cus_1", "event_name": "api.call"} for i in ids])
    return ids


def agent_status(url: str) -> dict[str, Any]:
    document: dict[str, Any] = httpx.get(f"{url}/v1/status", timeout=10).json()
    return document


def paused(url: str, expected: bool) -> bool:
    return bool(agent_status(url)["paused"]) is expected


@pytest.fixture
def fleet_env(tmp_path: Path) -> Iterator[list[Any]]:
    """What a test starts, stopped afterwards whatever happens: [emulator, fleet, ...]."""
    started: list[Any] = []
    yield started
    for thing in reversed(started):
        if isinstance(thing, Fleet):
            thing.ensure_stopped()
        else:
            thing.stop()


def test_three_agents_keep_to_one_budget_and_get_no_429(
    tmp_path: Path, postgres_url: str, pg_schema: str, fleet_env: list[Any]
) -> None:
    # Dodo's limiter at the same budget: a burst of BURST, then BURST/s (the fleet asks for 1/s).
    emulator = EmulatorProcess(rate_limit=True, rate_per_second=BURST, rate_per_minute=RPM).start()
    fleet_env.append(emulator)
    enqueue(postgres_url, pg_schema, "b", 3000)  # far more than the budget lets out during the test
    fleet = Fleet.build(
        tmp_path,
        3,
        emulator.url,
        postgres_url,
        pg_schema,
        delivery={"batch_max_events": 10, "requests_per_minute": RPM, "burst": BURST},
    )
    fleet_env.append(fleet)
    fleet.start()
    wait_until(lambda: emulator.stats()["requests"] >= 20, 90, "20 requests from the fleet")
    log = emulator.admin("GET", "log")["items"]
    times = request_times(log)
    assert over_budget(times, RPM, BURST, widths=(1, 2, 5, 10, 15)) == [], times
    assert {e["outcome"] for e in log} == {"200"}, emulator.stats()["requests_by_status"]


def test_a_401_seen_by_one_agent_pauses_all_with_one_probe_for_the_fleet_and_a_fixed_key_resumes_all(
    tmp_path: Path, postgres_url: str, pg_schema: str, fleet_env: list[Any]
) -> None:
    emulator = EmulatorProcess(rate_limit=False).start()
    fleet_env.append(emulator)
    retry = 1.0
    fleet = Fleet.build(
        tmp_path,
        3,
        emulator.url,
        postgres_url,
        pg_schema,
        # A budget (2 requests/s) makes the drain after the fix outlast an idle agent's polling
        # backoff, so each of the three has work to show that it resumed.
        delivery={"batch_max_events": 5, "auth_retry_seconds": retry, "requests_per_minute": 120, "burst": 1},
    )
    fleet_env.append(fleet)
    fleet.start()
    emulator.set_keys(["a-key-that-is-not-ours"])  # Dodo revoked the agents' key
    enqueue(postgres_url, pg_schema, "first", 1)  # one batch: one agent meets the 401
    wait_until(lambda: "401" in emulator.stats()["requests_by_status"], what="the first 401")
    for agent in fleet.agents:
        wait_until(partial(paused, agent.url, True), what=f"{agent.log_path.name} to show the pause")
        assert "401" in agent_status(agent.url)["paused_reason"]
    # Work for everyone now: a paused fleet still sends only its one probe per auth_retry_seconds.
    enqueue(postgres_url, pg_schema, "later", 100)
    seen = len(emulator.admin("GET", "log")["items"])
    probes = 6
    wait_until(lambda: len(emulator.admin("GET", "log")["items"]) >= seen + probes, 60, f"{probes} probes")
    log = emulator.admin("GET", "log")["items"][seen:]
    assert {e["outcome"] for e in log} == {"401"}
    # One probe per `retry` seconds for the fleet (one of slack for timing); three agents probing on
    # their own would send about three times as many.
    assert over_budget(request_times(log), 60 / retry, 1, widths=(2, 3, 4)) == [], request_times(log)

    emulator.set_keys([KEY])  # the key is accepted again: the next probe goes through
    wait_until(lambda: emulator.stats()["events_stored"] == 101, 90, "the fleet to resume and deliver all")
    for agent in fleet.agents:
        wait_until(partial(paused, agent.url, False), what=f"{agent.log_path.name} to resume")
    # All three deliver again, not only the one whose probe went through.
    marks = [agent.log_path.stat().st_size for agent in fleet.agents]
    enqueue(postgres_url, pg_schema, "after", 240)  # 48 requests: some 24 s at the budget

    def delivered_since(n: int) -> bool:
        with fleet.agents[n].log_path.open("rb") as log_file:
            log_file.seek(marks[n])
            return b'"batch_delivered"' in log_file.read()

    for n in range(3):
        wait_until(partial(delivered_since, n), 90, f"agent{n} to deliver after the key was fixed")


@pytest.fixture
def bouncer(postgres_url: str) -> Iterator[Any]:
    """A PgBouncer in transaction pooling in front of the test server; skips (or fails under
    DODO_OUTBOX_REQUIRE_POSTGRES) where pgbouncer is not installed."""
    from agent.bench.pgbouncer import Bouncer

    try:
        running = Bouncer(postgres_url)
    except Unavailable as exc:
        if os.environ.get(REQUIRE_ENV):
            pytest.fail(f"{REQUIRE_ENV} is set but the PgBouncer tests cannot run: {exc}")
        pytest.skip(f"no PgBouncer for the tests: {exc}")
    yield running
    running.stop()


def test_three_agents_drain_through_pgbouncer_in_transaction_pooling(
    tmp_path: Path, postgres_url: str, pg_schema: str, bouncer: Any, fleet_env: list[Any]
) -> None:
    emulator = EmulatorProcess(rate_limit=False).start()
    fleet_env.append(emulator)
    ids = enqueue(bouncer.url, pg_schema, "pgb", 2000)  # the schema is created through the bouncer too
    fleet = Fleet.build(
        tmp_path,
        3,
        emulator.url,
        bouncer.url,
        pg_schema,
        delivery={"batch_max_events": 20},
        outbox={"prepared_statements": False},
    )
    fleet_env.append(fleet)
    fleet.start()
    wait_until(
        lambda: emulator.stats()["events_stored"] == len(ids), 120, "the fleet to drain through PgBouncer"
    )
    assert set(emulator.events()) == set(ids)
    errors = [
        (agent.log_path.name, e.get("event"), e.get("error"))
        for agent in fleet.agents
        for e in agent.log_lines()
        if e.get("level") in ("error", "critical")
    ]
    assert errors == []
    for agent in fleet.agents:
        assert agent.stop() == 0, agent.log_tail()
