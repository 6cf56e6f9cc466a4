"""CLI defects a new user hit: config check output, typos in --outbox, a damaged outbox's exit code."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import click
from click.testing import CliRunner

from agent.cli import cli
from agent.emulator import EmulatorServer
from agent.store import Store

EVENT = json.dumps({"event_id": "e1", "customer_id": "cus_1", "event_name": "api.call"})


def invoke(*args: str, env: dict[str, str] | None = None, input: str | None = None) -> click.testing.Result:
    base = {"DODO_OUTBOX_CONFIG": "", "DODO_PAYMENTS_API_KEY": "", "CREDENTIALS_DIRECTORY": ""}
    return CliRunner().invoke(cli, list(args), env=base | (env or {}), input=input)


def test_config_check_prints_toml_that_parses_back_to_the_json_document(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    odd = str(tmp_path / 'my "spool" \\ dir')
    config.write_text(
        f"[intake.dropdir]\nenabled = true\npath = {json.dumps(odd)}\n"
        "[delivery]\nlate_margin_seconds = 0.00001\n"
    )
    as_json = invoke("config", "check", "--config", str(config), "--json")
    assert as_json.exit_code == 0, as_json.output
    document = json.loads(as_json.stdout)
    document.pop("source")
    as_toml = invoke("config", "check", "--config", str(config))
    assert as_toml.exit_code == 0, as_toml.output
    parsed = tomllib.loads(as_toml.stdout)
    flat = {f"{outer}.{inner}": v for outer, table in parsed.items() for inner, v in table.items()}
    for name, table in document.items():
        if "." in name:
            parts = flat.get(name)
        else:  # [intake] holds its own keys and, nested, the [intake.http] / [intake.dropdir] tables
            parts = {k: v for k, v in parsed.get(name, {}).items() if not isinstance(v, dict)}
        assert parts == table, name
    assert "enabled = true" in as_toml.stdout and "True" not in as_toml.stdout


def test_an_unknown_environment_variable_is_a_warning_with_a_suggestion() -> None:
    env = {"DODO_OUTBOX_DELIVERY_BATCH_MAX_EVENT": "5", "DODO_OUTBOX_CHAOS": "ci"}
    result = invoke("config", "check", "--json", env=env)
    assert result.exit_code == 0, result.output
    assert (
        "warning: environment variable DODO_OUTBOX_DELIVERY_BATCH_MAX_EVENT: unknown, it is ignored; "
        "did you mean DODO_OUTBOX_DELIVERY_BATCH_MAX_EVENTS?" in result.stderr
    )
    assert "DODO_OUTBOX_CHAOS" not in result.stderr  # read by the test suite: known
    assert json.loads(result.stdout)["delivery"]["batch_max_events"] == 1000


def test_enqueue_refuses_a_missing_outbox_unless_asked_to_create_it(tmp_path: Path) -> None:
    typo = tmp_path / "outbx.db"
    refused = invoke("enqueue", "--outbox", str(typo), input=EVENT)
    assert refused.exit_code == 2
    assert f"no outbox at {typo} (--outbox)" in refused.stderr and "--create" in refused.stderr
    assert not typo.exists()
    created = invoke("enqueue", "--outbox", str(typo), "--create", input=EVENT)
    assert created.exit_code == 0, created.output
    with Store(typo) as store:
        assert store.get("e1") is not None
    # The configured outbox is created without --create, named by --outbox or not.
    configured = tmp_path / "state" / "outbox.db"
    config = tmp_path / "agent.toml"
    config.write_text(f"[outbox]\npath = {json.dumps(str(configured))}\n")
    named = invoke("enqueue", "--config", str(config), "--outbox", str(configured), input=EVENT)
    assert named.exit_code == 0, named.output
    assert configured.exists()


def test_meters_pull_refuses_a_missing_outbox_before_asking_dodo(
    tmp_path: Path, fake_dodo: EmulatorServer
) -> None:
    typo = tmp_path / "outbx.db"
    env = {"DODO_PAYMENTS_API_KEY": "test_key", "DODO_OUTBOX_DODO_BASE_URL": fake_dodo.url}
    result = invoke("meters", "pull", "--outbox", str(typo), env=env)
    assert result.exit_code == 2, result.output
    assert f"no outbox at {typo} (--outbox)" in result.stderr and not typo.exists()
    created = invoke("meters", "pull", "--outbox", str(typo), "--create", env=env)
    assert created.exit_code == 0, created.output
    assert typo.exists()


def test_a_damaged_outbox_exits_65_not_75(tmp_path: Path) -> None:
    damaged = tmp_path / "o.db"
    damaged.write_bytes(b"this is not an SQLite database" * 100)
    for args in (["status"], ["enqueue"], ["dlq", "list"]):
        result = invoke(*args, "--outbox", str(damaged), input=EVENT)
        assert result.exit_code == 65, (args, result.output)
        assert f"the outbox {damaged} is damaged" in result.stderr and "doctor" in result.stderr


def test_every_option_of_every_command_has_help() -> None:
    def missing(command: click.Command, name: str) -> list[str]:
        if isinstance(command, click.Group):
            return [m for sub, c in command.commands.items() for m in missing(c, f"{name} {sub}")]
        return [f"{name} --{p.name}" for p in command.params if isinstance(p, click.Option) and not p.help]

    assert missing(cli, "dodo-outbox") == []


def test_a_base_url_without_a_scheme_is_refused_by_every_command(tmp_path: Path) -> None:
    """Before: every batch failed with UnsupportedProtocol as a retryable error, forever, and
    `drain --once` exited 0."""
    db = tmp_path / "o.db"
    assert invoke("enqueue", "--outbox", str(db), "--create", input=EVENT).exit_code == 0
    env = {"DODO_OUTBOX_DODO_BASE_URL": "127.0.0.1:18791", "DODO_PAYMENTS_API_KEY": "k"}
    for args in (["drain", "--once"], ["status"], ["enqueue"]):
        result = invoke(*args, "--outbox", str(db), env=env, input=EVENT)
        assert result.exit_code == 2, (args, result.output)
        assert (
            "DODO_OUTBOX_DODO_BASE_URL = '127.0.0.1:18791' is not an http:// or https:// URL" in result.stderr
        )
    with Store(db) as store:
        assert store.counts()["pending"] == 1
