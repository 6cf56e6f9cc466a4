"""`meters check` examples and `verify` failures, through the real CLI on real outbox files."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from agent.cli import cli
from agent.emulator import EmulatorServer
from agent.outbox import Outbox
from agent.store import Store

KEY = "test_key"
METERS = """
[[meters]]
event_name = "llm.chat_completion"
aggregation = "sum"
key = "totalTokens"
name = "Tokens"
"""


def write_config(tmp_path: Path, base_url: str, extra: str = "") -> Path:
    key_file = tmp_path / "key"
    key_file.write_text(KEY)
    path = tmp_path / "agent.toml"
    path.write_text(
        f'[dodo]\nbase_url = "{base_url}"\napi_key_file = "{key_file}"\n'
        f'[outbox]\npath = "{tmp_path / "o.db"}"\n{extra}'
    )
    return path


def llm(event_id: str, **metadata: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"event_id": event_id, "customer_id": "cus_1", "event_name": "llm.chat_completion"}
    return body | ({"metadata": metadata} if metadata else {})


def test_each_reason_names_an_example_event_with_that_reason(tmp_path: Path) -> None:
    path = write_config(tmp_path, "http://127.0.0.1:9", METERS)
    with Outbox(tmp_path / "o.db") as outbox:
        # The ids sort so that one shared "first bad event" would be the string-key one for every reason.
        outbox.enqueue_many(
            [
                llm("a_string", totalTokens="12"),
                llm("b_bool", totalTokens=True),
                llm("c_missing", inputTokens=3),
                llm("d_fine", totalTokens=5),
            ]
        )
    runner = CliRunner()
    result = runner.invoke(cli, ["meters", "check", "--config", str(path), "--json"])
    assert result.exit_code == 1, result.output
    [entry] = json.loads(result.output)["names"]
    examples = {p["reason"]: p["example_event_id"] for p in entry["problems"]}
    assert examples == {"missing_key": "c_missing", "string_key": "a_string", "not_a_number": "b_bool"}
    text = runner.invoke(cli, ["meters", "check", "--config", str(path)]).output
    assert "1 missing_key (e.g. c_missing)" in text
    assert "1 string_key (e.g. a_string)" in text
    assert "1 not_a_number (e.g. b_bool)" in text


def deliver(tmp_path: Path, count: int) -> None:
    with Outbox(tmp_path / "o.db") as outbox:
        outbox.enqueue_many(
            [{"event_id": f"v{i}", "customer_id": "cus_1", "event_name": "api.call"} for i in range(count)]
        )
    with Store(tmp_path / "o.db") as store:
        now_us = int(time.time() * 1_000_000)
        claimed = store.claim(
            now_us=now_us, limit=count, max_bytes=10_000_000, lease_us=60_000_000, owner="test"
        )
        assert store.mark_delivered([c.id for c in claimed], owner="test", now_us=now_us) == count


def test_verify_exits_75_with_json_when_dodo_cannot_be_reached(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = write_config(tmp_path, f"http://127.0.0.1:{port}")
    deliver(tmp_path, 3)
    result = CliRunner().invoke(cli, ["verify", "--config", str(path), "--json"])
    assert result.exit_code == 75, result.output
    document = json.loads(result.stdout)
    assert (document["checked"], document["found"], document["unread"]) == (3, 0, 3)
    assert "ConnectError" in document["error"] and f"127.0.0.1:{port}" in document["error"]
    text = CliRunner().invoke(cli, ["verify", "--config", str(path)])
    assert text.exit_code == 75 and "could not read" in text.output


def test_verify_exits_75_with_json_when_dodo_refuses_the_key(
    fake_dodo: EmulatorServer, tmp_path: Path
) -> None:
    path = write_config(tmp_path, fake_dodo.url)
    (tmp_path / "key").write_text("wrong_key")
    deliver(tmp_path, 2)
    result = CliRunner().invoke(cli, ["verify", "--config", str(path), "--json"])
    assert result.exit_code == 75, result.output
    document = json.loads(result.stdout)
    assert document["unread"] == 2 and "refused the API key (401)" in document["error"]


def test_verify_json_without_a_key_is_json_and_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(f'[dodo]\nbase_url = "http://127.0.0.1:9"\n[outbox]\npath = "{tmp_path / "o.db"}"\n')
    deliver(tmp_path, 1)
    result = CliRunner(env={"DODO_PAYMENTS_API_KEY": ""}).invoke(
        cli, ["verify", "--config", str(path), "--json"]
    )
    assert result.exit_code == 2, result.output
    document = json.loads(result.stdout)
    assert "no API key" in document["error"] and document["checked"] == 1


def test_verify_json_without_an_outbox_is_json_and_exit_2(tmp_path: Path) -> None:
    path = write_config(tmp_path, "http://127.0.0.1:9")
    result = CliRunner().invoke(cli, ["verify", "--config", str(path), "--json"])
    assert result.exit_code == 2, result.output
    assert "no outbox at" in json.loads(result.stdout)["error"]
    plain = CliRunner().invoke(cli, ["verify", "--config", str(path)])
    assert plain.exit_code == 2 and "no outbox at" in plain.stderr
