"""`dodo-outbox drain --once` and `dodo-outbox fake-dodo`, end to end over loopback HTTP."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner, Result

from agent import logs
from agent.cli import cli
from agent.cli.drain import EXIT_PAUSED
from agent.emulator import EmulatorServer
from agent.outbox import Outbox
from agent.store import Store

KEY = "test_key"


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    # The command points logging at the CliRunner's stderr, which is closed after the run.
    yield
    logs.configure("console", "warning", stream=sys.__stderr__)


def write_config(tmp_path: Path, base_url: str) -> Path:
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[dodo]\nbase_url = "{base_url}"\n\n[outbox]\npath = "{tmp_path / "outbox.db"}"\n\n'
        "[delivery]\nbackoff_initial_seconds = 0.01\nbackoff_max_seconds = 0.05\nrequests_per_minute = 0\n"
        '\n[log]\nformat = "json"\n'
    )
    return config


def enqueue(tmp_path: Path, count: int) -> None:
    with Outbox(tmp_path / "outbox.db") as outbox:
        outbox.enqueue_many(
            {"event_id": f"cli_{i}", "customer_id": "cus_1", "event_name": "api.call"} for i in range(count)
        )


def drain(config: Path, *args: str, key: str | None = KEY) -> Result:
    env = {"DODO_PAYMENTS_API_KEY": key or "", "CREDENTIALS_DIRECTORY": "", "DODO_OUTBOX_CONFIG": ""}
    return CliRunner().invoke(cli, ["drain", "--once", "--config", str(config), *args], env=env)


def test_drain_once_delivers_everything_and_exits_0(fake_dodo: EmulatorServer, tmp_path: Path) -> None:
    enqueue(tmp_path, 25)
    result = drain(write_config(tmp_path, fake_dodo.url))
    assert result.exit_code == 0, result.output
    assert "delivered 25, dead-lettered 0" in result.stdout
    assert "0 still pending" in result.stdout
    assert len(fake_dodo.events) == 25


def test_drain_once_json_summary(fake_dodo: EmulatorServer, tmp_path: Path) -> None:
    enqueue(tmp_path, 3)
    result = drain(write_config(tmp_path, fake_dodo.url), "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["delivered"], summary["sent"], summary["pending"], summary["paused"]) == (3, 1, 0, None)


def test_drain_once_with_retries_left_exits_0_and_says_when(
    fake_dodo: EmulatorServer, tmp_path: Path
) -> None:
    enqueue(tmp_path, 2)
    fake_dodo.set_faults(script=[429], retry_after_seconds=60)
    result = drain(write_config(tmp_path, fake_dodo.url))
    assert result.exit_code == 0, result.output
    assert "scheduled for retry 2" in result.stdout and "2 still pending, next due in" in result.stdout


def test_drain_once_exits_3_when_the_key_is_refused(fake_dodo: EmulatorServer, tmp_path: Path) -> None:
    enqueue(tmp_path, 4)
    result = drain(write_config(tmp_path, fake_dodo.url), key="sk_not_the_key")
    assert result.exit_code == EXIT_PAUSED, result.output
    assert "delivery paused" in result.stderr and "HTTP 401" in result.stderr
    assert "sk_not_the_key" not in result.output
    with Store(tmp_path / "outbox.db") as store:
        assert store.counts() == {"pending": 4, "inflight": 0, "delivered": 0, "dead": 0}


def test_drain_once_exits_3_without_a_key(fake_dodo: EmulatorServer, tmp_path: Path) -> None:
    enqueue(tmp_path, 1)
    result = drain(write_config(tmp_path, fake_dodo.url), "--json", key=None)
    assert result.exit_code == EXIT_PAUSED
    assert "no API key" in json.loads(result.stdout)["paused"]
    assert fake_dodo.stats()["requests"] == 0


def test_drain_once_exits_3_on_a_wrong_base_url(fake_dodo: EmulatorServer, tmp_path: Path) -> None:
    enqueue(tmp_path, 1)
    result = drain(write_config(tmp_path, fake_dodo.url + "/v0"))
    assert result.exit_code == EXIT_PAUSED
    assert "404" in result.stderr and "[dodo] base_url" in result.stderr


def test_drain_without_an_outbox_is_a_usage_error(tmp_path: Path) -> None:
    result = drain(write_config(tmp_path, "http://127.0.0.1:9"))
    assert result.exit_code == 2 and "no outbox" in result.output


@pytest.mark.parametrize("command", ["drain", "fake-dodo"])
def test_help_has_an_example(command: str) -> None:
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0 and "Example:" in result.output


def test_fake_dodo_serves_in_the_foreground_with_faults() -> None:
    # Port 0: the kernel picks a free port (no race with parallel tests); the banner says which.
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "fake-dodo", "--port", "0", "--key", "k1", "--fault-script", "503"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    assert proc.stderr is not None
    body = b'{"events":[{"event_id":"f1","customer_id":"cus_1","event_name":"api.call"}]}'
    try:
        seen = []
        for line in proc.stderr:  # ends when the process does: then the assertion below says why
            seen.append(line)
            match = re.search(r"fake Dodo on (http://127\.0\.0\.1:\d+)", line)
            if match:
                url = match.group(1)
                break
        else:
            raise AssertionError("fake-dodo did not start:\n" + "".join(seen))
        headers = {"Authorization": "Bearer k1"}
        assert httpx.post(f"{url}/events/ingest", content=body, headers=headers).status_code == 503
        answer = httpx.post(f"{url}/events/ingest", content=body, headers=headers)
        assert (answer.status_code, answer.json()) == (200, {"ingested_count": 1})
    finally:
        proc.terminate()
        proc.wait(10)
