"""`meters preview`: a hand-computed table of events and the totals each meter should show.

Every expected number was worked out by hand from the events listed here (see the comment on each
event), not produced by the code under test.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from agent.cli import cli
from agent.outbox import Outbox
from agent.store import Store
from tests.test_meter_filters import ISSUE_METER

CONFIG = """
[outbox]
path = "{outbox}"

{tokens}
[[meters]]
name = "peak"
event_name = "llm.chat"
aggregation = "max"
key = "totalTokens"

[[meters]]
name = "balance"
event_name = "storage.level"
aggregation = "last"
key = "gb"

[[meters]]
name = "calls"
event_name = "api.call"
aggregation = "count"
"""

T0 = int(time.time()) - 1800  # whole seconds, well inside Dodo's one-hour window


def iso(offset: float) -> str:
    return datetime.fromtimestamp(T0 + offset, UTC).isoformat().replace("+00:00", "Z")


def ev(event_id: str, name: str, customer: str, offset: float, **metadata: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"event_id": event_id, "customer_id": customer, "event_name": name}
    body["timestamp"] = iso(offset)
    if metadata:
        body["metadata"] = metadata
    return body


EVENTS = [
    # tokens (sum, filter model = gpt-4o and region in eu/us) | peak (max, no filter)
    ev("c1", "llm.chat", "cus_a", 0, model="gpt-4o", region="eu", totalTokens=100),  # tokens a, peak a
    ev("c2", "llm.chat", "cus_a", 1, model="gpt-4o", region="us", totalTokens=50),  # tokens a, peak a
    ev("c3", "llm.chat", "cus_a", 2, model="gpt-4o", region="apac", totalTokens=999),  # excluded; peak a
    ev("c4", "llm.chat", "cus_b", 3, model="gpt-3.5", region="eu", totalTokens=10),  # excluded; peak b
    ev("c5", "llm.chat", "cus_b", 4, model="gpt-4o", region="eu", totalTokens="20"),  # not a number, both
    ev("c6", "llm.chat", "cus_b", 5, model="gpt-4o", region="eu"),  # missing key, both
    ev("c7", "llm.chat", "cus_b", 6),  # excluded (no model); peak: missing key
    ev("c8", "llm.chat", "cus_b", 7, model="gpt-4o", region="eu", totalTokens=2.5),  # tokens b, peak b
    # balance (last): s1 arrives first but is the latest by event time
    ev("s1", "storage.level", "cus_a", 20, gb=7),
    ev("s2", "storage.level", "cus_a", 10, gb=3),
    ev("s3", "storage.level", "cus_b", 15, gb=True),  # not a number
    # calls (count)
    ev("a1", "api.call", "cus_a", 0),
    ev("a2", "api.call", "cus_a", 1),
    ev("a3", "api.call", "cus_b", 2),
    ev("a4", "api.call", "cus_a", 100),  # at --until: outside (exclusive)
    ev("a5", "api.call", "cus_a", -1),  # before --from: outside
    # no meter counts these
    ev("u1", "image.generated", "cus_a", 5),
    ev("u2", "image.generated", "cus_b", 6),
    ev("u3", "API.call", "cus_a", 7),
]

EXPECTED_ALL = {
    "tokens": {
        "customers": {"cus_a": {"events": 2, "value": 150}, "cus_b": {"events": 1, "value": 2.5}},
        "excluded_by_filter": 3,
        "skipped": {"missing_key": 1, "not_a_number": 1},
    },
    "peak": {
        "customers": {"cus_a": {"events": 3, "value": 999}, "cus_b": {"events": 2, "value": 10}},
        "excluded_by_filter": 0,
        "skipped": {"missing_key": 2, "not_a_number": 1},
    },
    "balance": {
        "customers": {"cus_a": {"events": 2, "value": 7}},
        "excluded_by_filter": 0,
        "skipped": {"missing_key": 0, "not_a_number": 1},
    },
    "calls": {
        "customers": {"cus_a": {"events": 2, "value": 2}, "cus_b": {"events": 1, "value": 1}},
        "excluded_by_filter": 0,
        "skipped": {"missing_key": 0, "not_a_number": 0},
    },
}
EXPECTED_CUS_B = {
    "tokens": {
        "customers": {"cus_b": {"events": 1, "value": 2.5}},
        "excluded_by_filter": 2,
        "skipped": {"missing_key": 1, "not_a_number": 1},
    },
    "peak": {
        "customers": {"cus_b": {"events": 2, "value": 10}},
        "excluded_by_filter": 0,
        "skipped": {"missing_key": 2, "not_a_number": 1},
    },
    "balance": {"customers": {}, "excluded_by_filter": 0, "skipped": {"missing_key": 0, "not_a_number": 1}},
    "calls": {
        "customers": {"cus_b": {"events": 1, "value": 1}},
        "excluded_by_filter": 0,
        "skipped": {"missing_key": 0, "not_a_number": 0},
    },
}


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    outbox = tmp_path / "o.db"
    with Outbox(outbox) as box:
        # A dead event is not billed: stored and dead-lettered before the others arrive.
        box.enqueue(ev("d1", "api.call", "cus_b", 3))
        claimed = box.store.claim(
            now_us=int(time.time() * 1e6), limit=10, max_bytes=10_000_000, lease_us=60_000_000, owner="test"
        )
        assert (
            box.store.mark_dead(
                [c.id for c in claimed],
                owner="test",
                now_us=0,
                reason="refused",
                http_status=400,
                response="{}",
            )
            == 1
        )
        for body in EVENTS:  # one by one: arrival order is list order
            box.enqueue(body)
    path = tmp_path / "agent.toml"
    path.write_text(CONFIG.replace("{outbox}", str(outbox)).replace("{tokens}", ISSUE_METER))
    return path


def preview(config_path: Path, *args: str) -> dict[str, Any]:
    window = ["--from", iso(0), "--until", iso(100)]
    result = CliRunner().invoke(
        cli, ["meters", "preview", "--config", str(config_path), *window, "--json", *args]
    )
    assert result.exit_code == 0, result.output
    document: dict[str, Any] = json.loads(result.output)
    return document


def by_meter(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        m["name"]: {k: m[k] for k in ("customers", "excluded_by_filter", "skipped")}
        for m in document["meters"]
    }


def test_preview_matches_the_hand_computed_totals(config_path: Path) -> None:
    document = preview(config_path)
    assert list(document) == ["from", "until", "meters", "unmatched", "assumptions"]
    assert (document["from"], document["until"]) == (iso(0), iso(100))
    assert by_meter(document) == EXPECTED_ALL
    assert document["unmatched"] == {"image.generated": 2, "API.call": 1}
    assert document["meters"][0] | {"customers": None} == {
        "name": "tokens",
        "event_name": "llm.chat",
        "aggregation": "sum",
        "key": "totalTokens",
        "customers": None,
        "excluded_by_filter": 3,
        "skipped": {"missing_key": 1, "not_a_number": 1},
    }
    assert any("latest event timestamp" in text for text in document["assumptions"])
    # Integers stay integers in the JSON text.
    value = document["meters"][0]["customers"]["cus_a"]["value"]
    assert value == 150 and isinstance(value, int)


def test_preview_for_one_customer_and_one_meter(config_path: Path) -> None:
    assert by_meter(preview(config_path, "--customer", "cus_b")) == EXPECTED_CUS_B
    assert preview(config_path, "--customer", "cus_b")["unmatched"] == {"image.generated": 1}
    one = preview(config_path, "--meter", "tokens")
    assert by_meter(one) == {"tokens": EXPECTED_ALL["tokens"]}
    # With one meter shown, the events other meters count are still not "unmatched".
    assert one["unmatched"] == {"image.generated": 2, "API.call": 1}


def test_preview_text_shows_totals_unmatched_hints_and_assumptions(config_path: Path) -> None:
    window = ["--from", iso(0), "--until", iso(100)]
    result = CliRunner().invoke(cli, ["meters", "preview", "--config", str(config_path), *window])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any(line.split() == ["cus_a", "2", "150"] for line in lines), result.output
    assert "3 excluded by the filter" in result.output
    assert "probably meant 'api.call'" in result.output
    assert "image.generated" in result.output and "assumptions:" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--meter", "nope"], "--meter 'nope': no meter has that name"),
        (["--since", "1h", "--from", iso(0)], "give --since, or --from/--until, not both"),
        (["--from", iso(10), "--until", iso(0)], "is not before --until"),
        (["--from", "yesterday"], "'yesterday' is not an ISO 8601 time"),
    ],
)
def test_preview_bad_arguments_are_clean_errors(config_path: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, ["meters", "preview", "--config", str(config_path), *args])
    assert result.exit_code == 2 and message in result.output, result.output


def test_the_range_read_uses_the_event_time_index(tmp_path: Path) -> None:
    with Store(tmp_path / "o.db") as store:
        plan = " ".join(store.explain_billable_rows())
    assert "USING INDEX dodo_outbox_event_time" in plan


def test_status_shows_the_last_hours_unmatched_events_by_name(config_path: Path) -> None:
    result = CliRunner().invoke(cli, ["status", "--config", str(config_path), "--json"])
    assert result.exit_code == 0, result.output
    section = json.loads(result.output)["meter_checks"]
    assert section["unmatched_by_name"] == {"image.generated": 2, "API.call": 1}
    text = CliRunner().invoke(cli, ["status", "--config", str(config_path)])
    assert "no meter counts (last hour)  image.generated 2, API.call 1" in text.output, text.output
