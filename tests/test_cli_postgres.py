"""Every command on a PostgreSQL outbox, as a user runs it: `--outbox URL` or `[outbox] url`.

The URL carries a password (the test server trusts every local connection, so any password works):
no command may print it. `doctor` and `migrate` have tests of their own.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result

from agent.cli import cli
from agent.emulator import EmulatorServer
from agent.store import OutboxStore, State, StoreOptions, open_store, outbox_exists
from tests.emulator_fixture import FakeDodoFactory
from tests.reliability.helpers import AgentProcess, free_port, pg_sections, write_config
from tests.waiting import wait_until

pytest.importorskip("psycopg")

KEY = "pg_cli_key_0123"
SECRET = "hunter2"
METER = {"id": "m_calls", "name": "calls", "event_name": "api.call", "aggregation": {"type": "count"}}


def with_password(url: str) -> str:
    """`postgresql://postgres@…` → `postgresql://postgres:hunter2@…`."""
    return url.replace("postgresql://postgres@", f"postgresql://postgres:{SECRET}@", 1)


def line(event_id: str, **extra: Any) -> str:
    return json.dumps({"event_id": event_id, "customer_id": "cus_1", "event_name": "api.call", **extra})


@pytest.fixture
def fake(fake_dodo_factory: FakeDodoFactory) -> EmulatorServer:
    return fake_dodo_factory(keys={KEY}, rate_limit=False, reject_event_ids="^poison", meters=[METER])


@pytest.fixture
def url(postgres_url: str) -> str:
    return with_password(postgres_url)


@pytest.fixture
def config(tmp_path: Path, url: str, pg_schema: str, fake: EmulatorServer) -> Path:
    return write_config(tmp_path / "agent.toml", pg_sections(tmp_path, fake.url, None, url, pg_schema))


@pytest.fixture
def store(url: str, pg_schema: str) -> Iterator[OutboxStore]:
    with open_store(url, StoreOptions(schema=pg_schema)) as opened:
        yield opened


def invoke(*args: str, code: int = 0) -> Result:
    result = CliRunner().invoke(cli, list(args), env={"DODO_PAYMENTS_API_KEY": KEY})
    assert result.exit_code == code, result.output
    assert SECRET not in result.output, result.output
    assert "Traceback" not in result.output, result.output
    return result


def as_json(*args: str, code: int = 0) -> Any:
    return json.loads(invoke(*args, "--json", code=code).stdout)


def test_the_commands_of_an_outbox_life_work_on_postgres(
    tmp_path: Path, config: Path, store: OutboxStore, fake: EmulatorServer, pg_schema: str
) -> None:
    c = ("--config", str(config))
    shown = as_json("config", "check", *c)["outbox"]
    assert shown["url"].startswith("postgresql://postgres:***@") and shown["schema"] == pg_schema

    events = tmp_path / "events.ndjson"
    events.write_text("\n".join([line("e1"), line("e2"), line("poison_1")]) + "\n")
    assert as_json("enqueue", str(events), *c)["stored"] == 3
    assert as_json("status", *c)["pending"] == 3
    assert as_json("events", "show", "e1", *c)["state"] == State.PENDING

    drained = as_json("drain", "--once", *c)
    assert (drained["delivered"], drained["dead"]) == (2, 1), drained
    assert set(fake.events) == {"e1", "e2"}
    assert store.counts()[State.DELIVERED] == 2

    listed = as_json("dlq", "list", *c)
    assert [row["event_id"] for row in listed] == ["poison_1"]
    assert as_json("dlq", "show", "poison_1", *c)["http_status"] == 400
    exported = invoke("dlq", "export", *c).stdout.splitlines()
    assert [json.loads(text)["event_id"] for text in exported] == ["poison_1"]
    assert as_json("dlq", "replay", "--all", *c)["replayed"] == 1
    assert store.counts()[State.PENDING] == 1
    assert as_json("drain", "--once", *c)["dead"] == 1

    assert [m["id"] for m in as_json("meters", "pull", *c)] == ["m_calls"]
    checked = as_json("meters", "check", *c)
    assert any(row["event_name"] == "api.call" for row in checked["names"]), checked
    preview = as_json("meters", "preview", *c)
    assert preview["meters"][0]["customers"]["cus_1"]["value"] == 2, preview
    assert as_json("verify", *c)["found"] == 2
    assert as_json("reconcile", *c)["agree"] is True

    kept = invoke("dlq", "purge", "--older-than", "0s", "--reason", "no such reason", "--yes", *c)
    assert store.counts()[State.DEAD] == 1, kept.output
    invoke("dlq", "purge", "--older-than", "0s", "--reason", "rejected", "--yes", *c)
    assert store.counts()[State.DEAD] == 0


def test_outbox_url_overrides_the_config_and_guards_typos(
    tmp_path: Path, url: str, pg_schema: str, store: OutboxStore
) -> None:
    plain = write_config(tmp_path / "plain.toml", {"outbox": {"schema": pg_schema}})
    c = ("--config", str(plain), "--outbox", url)
    store.insert_groups([], 0)  # the schema exists: `store` created it
    result = CliRunner().invoke(cli, ["enqueue", "-", *c, "--json"], input=line("o1"))
    assert result.exit_code == 0, result.output
    assert store.get("o1") is not None

    other = write_config(tmp_path / "other.toml", {"outbox": {"schema": "nobody_here"}})
    missing = invoke("status", "--config", str(other), "--outbox", url, code=2)
    assert "no outbox at postgresql://postgres:***@" in missing.output
    assert "(schema nobody_here)" in missing.output
    refused = CliRunner().invoke(
        cli, ["enqueue", "-", "--config", str(other), "--outbox", url], input=line("x")
    )
    assert refused.exit_code == 2 and "--create" in refused.output, refused.output
    assert SECRET not in refused.output
    assert not outbox_exists(url, StoreOptions(schema="nobody_here"))


def test_an_unreachable_database_is_one_plain_error_with_the_password_masked(tmp_path: Path) -> None:
    dead = f"postgresql://postgres:{SECRET}@127.0.0.1:{free_port()}/postgres?connect_timeout=2"
    config = write_config(tmp_path / "agent.toml", {"outbox": {"url": dead}})
    result = invoke("status", "--config", str(config), code=75)
    assert "cannot open the outbox postgresql://postgres:***@127.0.0.1" in result.output


def test_run_on_postgres_accepts_delivers_and_stops_and_two_agents_may_share_the_outbox(
    tmp_path: Path, url: str, pg_schema: str, store: OutboxStore, fake: EmulatorServer
) -> None:
    agents = []
    for n in (1, 2):
        port = free_port()
        config = write_config(
            tmp_path / f"agent{n}.toml", pg_sections(tmp_path, fake.url, port, url, pg_schema)
        )
        agents.append(AgentProcess(config, tmp_path / f"agent{n}.log", port, {"DODO_PAYMENTS_API_KEY": KEY}))
    try:
        for agent in agents:
            agent.start()  # the second is not refused: a PostgreSQL outbox takes no lock
        ready = next(e for e in agents[0].log_lines() if e.get("event") == "agent_ready")
        assert ready["outbox"].startswith("postgresql://postgres:***@")
        for n, agent in enumerate(agents):
            body = {"events": [json.loads(line(f"h{n}_{i}")) for i in range(5)]}
            answer = httpx.post(f"{agent.url}/events/ingest", json=body, timeout=10)
            assert answer.json() == {"ingested_count": 5}
        wait_until(lambda: store.counts()[State.DELIVERED] == 10, what="both agents' events to be delivered")
        assert sorted(fake.events) == sorted(f"h{n}_{i}" for n in (0, 1) for i in range(5))
        for agent in agents:
            assert agent.signal(signal.SIGTERM) == 0
            assert SECRET not in agent.log_path.read_text()
    finally:
        for agent in agents:
            agent.ensure_stopped()


def test_a_dry_run_on_postgres_uses_its_own_schema(
    tmp_path: Path, url: str, pg_schema: str, fake: EmulatorServer
) -> None:
    port = free_port()
    config = write_config(tmp_path / "agent.toml", pg_sections(tmp_path, fake.url, port, url, pg_schema))
    agent = AgentProcess(config, tmp_path / "agent.log", port, {}, args=["--dry-run"])
    try:
        agent.start()
        answer = httpx.post(
            f"{agent.url}/events/ingest", json={"events": [json.loads(line("d1"))]}, timeout=10
        )
        assert answer.json() == {"ingested_count": 1}
        dry = StoreOptions(schema=f"{pg_schema}_dry_run")
        with open_store(url, dry) as store:
            wait_until(lambda: store.counts()[State.DELIVERED] == 1, what="the dry run to deliver")
        assert agent.stop() == 0
    finally:
        agent.ensure_stopped()
    assert not outbox_exists(url, StoreOptions(schema=pg_schema))
    assert fake.events == {}  # the dry run's own emulator got it, not the configured Dodo
