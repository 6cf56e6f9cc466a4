"""Meter-aware checks: the rules, the enqueue hook, the config, `meters pull/check` and `verify`."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from structlog.testing import capture_logs

from agent import config
from agent.cli import cli
from agent.delivery.pacing import TokenBucket
from agent.emulator import EmulatorServer
from agent.errors import ConfigError, DeliveryError, InvalidEventError
from agent.events import validate
from agent.meters import (
    Meter,
    MeterChecker,
    MeterIndex,
    Reason,
    billing_findings,
    build_checker,
    dodo_client,
    fetch_meters,
    known_meters,
    meter_from_api,
    meter_to_row,
)
from agent.meters.report import keys_by_name, report, status_section
from agent.outbox import Outbox
from agent.store import Store

KEY = "test_key"
METERS = [
    Meter("api.call", "count", name="API calls", meter_id="m1"),
    Meter("llm.chat_completion", "sum", "totalTokens", "Tokens", "m2"),
    Meter("llm.chat_completion", "max", "inputTokens", None, "m3"),
]
EMULATOR_METERS = [
    {"event_name": "api.call", "aggregation": {"type": "count"}},
    {
        "event_name": "llm.chat_completion",
        "aggregation": {"type": "sum", "key": "totalTokens"},
        "name": "Tokens",
    },
]


def event(name: str, event_id: str = "e1", **metadata: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"event_id": event_id, "customer_id": "cus_1", "event_name": name}
    if metadata:
        body["metadata"] = metadata
    return body


def reasons(name: str, **metadata: Any) -> list[str]:
    return [str(f.reason) for f in billing_findings(MeterIndex(METERS), name, metadata)]


# -- the rules ------------------------------------------------------------------------------------


def test_rules() -> None:
    assert reasons("api.call") == []
    assert reasons("llm.chat_completion", totalTokens=10, inputTokens=4) == []
    assert reasons("llm.chat_completion", totalTokens=10.5, inputTokens=0) == []
    assert reasons("API.Call") == ["case_mismatch"]
    assert reasons("api.calls") == ["no_meter"]
    assert reasons("llm.chat_completion", totalTokens="10", inputTokens=4) == ["string_key"]
    assert reasons("llm.chat_completion", totalTokens=True) == ["not_a_number", "missing_key"]


def test_findings_say_what_was_meant_and_which_meter() -> None:
    index = MeterIndex(METERS)
    [case] = billing_findings(index, "LLM.Chat_Completion", {})
    assert case.suggestion == "llm.chat_completion" and "probably meant 'llm.chat_completion'" in case.message
    [typo] = billing_findings(index, "api.calls", {})
    assert typo.reason is Reason.NO_METER and typo.suggestion == "api.call" and "never bills" in typo.message
    [string] = billing_findings(index, "llm.chat_completion", {"totalTokens": "150", "inputTokens": 1})
    assert string.meter == "Tokens" and string.key == "totalTokens" and "'150'" in string.message


def test_meter_from_api() -> None:
    item = {"id": "mtr_1", "name": "N", "event_name": "x", "aggregation": {"type": "sum", "key": "bytes"}}
    assert meter_from_api(item) == Meter("x", "sum", "bytes", "N", "mtr_1", None)
    with pytest.raises(DeliveryError, match="event_name"):
        meter_from_api({"aggregation": {"type": "count"}})


# -- at enqueue -----------------------------------------------------------------------------------


def test_flagged_events_are_stored_warned_and_counted(tmp_path: Path) -> None:
    checker = MeterChecker(METERS, clock=lambda: 0.0)
    with Outbox(tmp_path / "o.db", checker=checker) as outbox, capture_logs() as logs:
        result = outbox.enqueue(event("Api.Call"))
        assert result.new == ["e1"]
        assert [w.path for w in result.warnings] == ["events[0].event_name"]
        outbox.enqueue_many([event("Api.Call", f"x{i}") for i in range(3)])
        outbox.enqueue(event("llm.chat_completion", "t1", totalTokens="12", inputTokens=3))
        assert outbox.store.counts()["pending"] == 5
    assert checker.counts == {"case_mismatch": 4, "string_key": 1}
    lines = [line for line in logs if line["event"] == "event_not_billable"]
    # One line per name and reason per interval: a misnamed stream of events does not flood the log.
    assert [(line["reason"], line["event_name"]) for line in lines] == [
        ("case_mismatch", "Api.Call"),
        ("string_key", "llm.chat_completion"),
    ]
    assert lines[0]["log_level"] == "warning" and "probably meant 'api.call'" in lines[0]["detail"]
    assert checker.status()["meter_warnings"] == {"case_mismatch": 4, "string_key": 1}


def test_strict_mode_refuses_and_stores_nothing(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db") as outbox:
        outbox.set_checker(MeterChecker(METERS, strict=True))
        with pytest.raises(InvalidEventError, match="strict_meters") as caught:
            outbox.enqueue_many([event("api.call", "ok"), event("llm.chat_completion", "bad")])
        assert [p.path for p in caught.value.problems] == [
            "events[1].metadata.totalTokens",
            "events[1].metadata.inputTokens",
        ]
        assert outbox.store.counts()["pending"] == 0
        assert outbox.enqueue(event("api.call", "ok")).new == ["ok"]


def test_unknown_meters_flag_nothing_and_disabled_checks_flag_nothing() -> None:
    events = [validate(event("anything"), time.time())]
    assert MeterChecker(None, strict=True)(events) == []
    assert MeterChecker(METERS, strict=True, enabled=False)(events) == []
    checker = MeterChecker(None)
    checker.set_meters(METERS)
    assert checker.known and [p.path for p in checker(events)] == ["events[0].event_name"]


def test_the_checker_rereads_its_meters(tmp_path: Path) -> None:
    now = [0.0]
    settings = config.load(None, environ={})
    with Store(tmp_path / "o.db") as store:
        checker = MeterChecker(None, clock=lambda: now[0], loader=lambda: known_meters(settings, store))
        events = [validate(event("api.calls"), time.time())]
        assert checker(events) == [] and not checker.known
        store.replace_meters([meter_to_row(m, i, 1) for i, m in enumerate(METERS)], 1)
        now[0] = 29.0
        assert checker(events) == []
        now[0] = 30.0
        assert [p.path for p in checker(events)] == ["events[0].event_name"]


# -- config ---------------------------------------------------------------------------------------

CONFIG_METERS = """
[meter_checks]
strict_meters = true

[[meters]]
event_name = "api.call"
aggregation = "count"

[[meters]]
event_name = "llm.chat_completion"
aggregation = "sum"
key = "totalTokens"
name = "Tokens"
"""


def test_config_meters_parse(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(CONFIG_METERS)
    settings = config.load(path, environ={})
    assert settings.meter_checks.strict_meters is True and settings.meter_checks.enabled is True
    assert settings.meters == (
        config.MeterSpec("api.call", "count"),
        config.MeterSpec("llm.chat_completion", "sum", "totalTokens", "Tokens"),
    )
    env = {"DODO_OUTBOX_METER_CHECKS_STRICT_METERS": "false"}
    assert config.load(path, environ=env).meter_checks.strict_meters is False
    assert [m.meter_id for m in known_meters(settings, None) or []] == ["config:1", "config:2"]
    assert build_checker(settings, None).strict


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[[meters]]\nevent_name = "a"\naggregation = "avg"\nkey = "k"\n',
            "[[meters]] #1 aggregation = 'avg'",
        ),
        (
            '[[meters]]\nevent_name = "a"\naggregation = "count"\n'
            '[[meters]]\nevent_name = "b"\naggregation = "sum"\n',
            "[[meters]] #2 key: required",
        ),
        (
            '[[meters]]\nevent_name = "a"\naggregation = "count"\nkee = "x"\n',
            "[[meters]] #1 kee: unknown key; did you mean 'key'?",
        ),
        ('[[meters]]\naggregation = "count"\n', "[[meters]] #1 event_name: required"),
        (
            '[[meters]]\nevent_name = 5\naggregation = "count"\n',
            "[[meters]] #1 event_name = 5 must be a string",
        ),
        ('meters = "x"\n', "meters must be an array of tables"),
        ("[meter_checks]\nstrict_meters = 1\n", "[meter_checks] strict_meters = 1 must be true or false"),
    ],
)
def test_config_errors_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        config.load(path, environ={})
    assert message in str(caught.value)


# -- against the emulator -------------------------------------------------------------------------


def write_config(tmp_path: Path, dodo: EmulatorServer, extra: str = "") -> Path:
    key_file = tmp_path / "key"
    key_file.write_text(KEY)
    path = tmp_path / "agent.toml"
    path.write_text(
        f'[dodo]\nbase_url = "{dodo.url}"\napi_key_file = "{key_file}"\n'
        f'[outbox]\npath = "{tmp_path / "o.db"}"\n{extra}'
    )
    return path


def test_pull_pages_through_every_meter(
    fake_dodo_factory: Callable[..., EmulatorServer], tmp_path: Path
) -> None:
    many = [{"event_name": f"m.{i:03d}", "aggregation": {"type": "sum", "key": "n"}} for i in range(150)]
    dodo = fake_dodo_factory(meters=[*EMULATOR_METERS, *many])
    path = write_config(tmp_path, dodo)
    with dodo_client(config.load(path, environ={})) as client:
        assert len(fetch_meters(client, TokenBucket(0, 1), page_size=7)) == 152
    result = CliRunner().invoke(cli, ["meters", "pull", "--config", str(path), "--json"])
    assert result.exit_code == 0, result.output
    pulled = json.loads(result.output)
    assert len(pulled) == 152 and pulled[1] == {
        "id": "mtr_emulator_1",
        "name": "Tokens",
        "event_name": "llm.chat_completion",
        "aggregation": "sum",
        "key": "totalTokens",
        "filter": None,
    }
    with Store(tmp_path / "o.db") as store:
        assert len(store.cached_meters()) == 152 and store.meters_pulled_at_us() is not None
        settings = config.load(path, environ={})
        assert build_checker(settings, store).status()["meters_known"] == 152
    # A pull replaces the cache: meters deleted in Dodo disappear here.
    dodo.set_meters(EMULATOR_METERS)
    assert CliRunner().invoke(cli, ["meters", "pull", "--config", str(path)]).exit_code == 0
    with Store(tmp_path / "o.db") as store:
        assert [m.event_name for m in store.cached_meters()] == ["api.call", "llm.chat_completion"]


def test_pull_with_a_bad_key_is_a_clean_error(fake_dodo: EmulatorServer, tmp_path: Path) -> None:
    path = write_config(tmp_path, fake_dodo)
    (tmp_path / "key").write_text("wrong")
    result = CliRunner().invoke(cli, ["meters", "pull", "--config", str(path)])
    assert result.exit_code == 1 and "refused the API key (401)" in result.output


def test_meters_check_reports_what_would_not_be_billed(
    fake_dodo_factory: Callable[..., EmulatorServer], tmp_path: Path
) -> None:
    dodo = fake_dodo_factory(meters=EMULATOR_METERS)
    path = write_config(tmp_path, dodo)
    runner = CliRunner()
    with Outbox(tmp_path / "o.db") as outbox:
        outbox.enqueue(event("api.call", "a1"))
        result = runner.invoke(cli, ["meters", "check", "--config", str(path)])
        assert result.exit_code == 2 and "no meters known" in result.output
        assert runner.invoke(cli, ["meters", "pull", "--config", str(path)]).exit_code == 0
        result = runner.invoke(cli, ["meters", "check", "--config", str(path), "--json"])
        assert result.exit_code == 0, result.output
        outbox.enqueue_many(
            [
                event("API.call", "a2"),
                event("llm.chat_completion", "l1", totalTokens=5),
                event("llm.chat_completion", "l2", totalTokens="5"),
                event("llm.chat_completion", "l3", inputTokens=5),
            ]
        )
    result = runner.invoke(cli, ["meters", "check", "--config", str(path), "--json", "--since", "10m"])
    assert result.exit_code == 1
    document = json.loads(result.output)
    by_name = {entry["event_name"]: entry for entry in document["names"]}
    assert by_name["api.call"]["billable"] and not by_name["API.call"]["billable"]
    assert [(p["reason"], p["events"], p["suggestion"]) for p in by_name["API.call"]["problems"]] == [
        ("case_mismatch", 1, "api.call")
    ]
    llm = by_name["llm.chat_completion"]
    assert llm["events"] == 3
    assert {(p["reason"], p["events"], p["meter"]) for p in llm["problems"]} == {
        ("missing_key", 1, "Tokens"),
        ("string_key", 1, "Tokens"),
    }
    assert document["not_billable"] == 2
    text = runner.invoke(cli, ["meters", "check", "--config", str(path)])
    assert (
        text.exit_code == 1 and "FAIL API.call" in text.output and "probably meant 'api.call'" in text.output
    )
    with Store(tmp_path / "o.db") as store:
        section = status_section(config.load(path, environ={}), store, time.time())
    assert section["meter_warnings"] == {"case_mismatch": 1, "missing_key": 1, "string_key": 1}


def test_report_counts_by_reason(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db") as outbox:
        outbox.enqueue_many(
            [event("llm.chat_completion", f"e{i}", totalTokens=True, inputTokens=1) for i in range(3)]
        )
        stats = outbox.store.recent_events_by_name(0, keys_by_name(METERS))
    [entry] = report(stats, METERS)
    assert entry["problems"][0] | {"message": None} == {
        "reason": "not_a_number",
        "meter": "Tokens",
        "key": "totalTokens",
        "events": 3,
        "example_event_id": "e0",
        "suggestion": None,
        "message": None,
    }


def deliver(outbox: Outbox, count: int) -> list[str]:
    """Enqueue `count` events and settle them as delivered, the way the worker does."""
    ids = [f"v{i}" for i in range(count)]
    outbox.enqueue_many([event("api.call", event_id) for event_id in ids])
    now_us = int(time.time() * 1_000_000)
    claimed = outbox.store.claim(
        now_us=now_us, limit=count, max_bytes=10_000_000, lease_us=60_000_000, owner="test"
    )
    assert outbox.store.mark_delivered([c.id for c in claimed], owner="test", now_us=now_us) == count
    return ids


def test_verify_finds_the_event_dodo_does_not_have(fake_dodo: EmulatorServer, tmp_path: Path) -> None:
    path = write_config(tmp_path, fake_dodo)
    with Outbox(tmp_path / "o.db") as outbox:
        ids = deliver(outbox, 5)
        sent = [json.loads(outbox.store.get(i).payload) for i in ids[:4]]  # type: ignore[union-attr]
    auth = {"Authorization": f"Bearer {KEY}"}
    response = httpx.post(f"{fake_dodo.url}/events/ingest", headers=auth, json={"events": sent})
    assert response.json() == {"ingested_count": 4}
    runner = CliRunner()
    result = runner.invoke(cli, ["verify", "--config", str(path), "--json"])
    assert result.exit_code == 1, result.output
    document = json.loads(result.output)
    assert (document["checked"], document["found"], document["missing"]) == (5, 4, ["v4"])
    text = runner.invoke(cli, ["verify", "--config", str(path), "--sample", "5", "--since", "1h"])
    assert text.exit_code == 1 and "missing   v4" in text.output
    fake_dodo.reset()
    other = [dict(e, customer_id="cus_other") for e in sent] + [event("api.call", "v4")]
    httpx.post(f"{fake_dodo.url}/events/ingest", headers=auth, json={"events": other})
    document = json.loads(runner.invoke(cli, ["verify", "--config", str(path), "--json"]).output)
    assert len(document["different"]) == 4 and document["missing"] == []
    fake_dodo.reset()
    httpx.post(
        f"{fake_dodo.url}/events/ingest", headers=auth, json={"events": [*sent, event("api.call", "v4")]}
    )
    result = runner.invoke(cli, ["verify", "--config", str(path)])
    assert result.exit_code == 0 and "5 found, 0 missing" in result.output


def test_since_parsing() -> None:
    from agent.cli.meters import parse_since

    assert parse_since("90s", 1000.0) == 910.0 and parse_since("2d", 200_000.0) == 27_200.0
    assert parse_since("2026-01-01T00:00:00Z", 0) == 1767225600.0
    with pytest.raises(Exception, match="neither a duration"):
        parse_since("yesterday", 0)
