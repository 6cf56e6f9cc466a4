"""`dodo-outbox reconcile` against a real fake Dodo on 127.0.0.1: events delivered by `drain`,
meters pulled with their filters, and Dodo's list read page by page."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result

from agent.cli import cli
from agent.emulator import EmulatorServer
from agent.outbox import Outbox
from tests.test_emulator_meters import CALLS, TOKENS

KEY = "test_key"
AUTH = {"Authorization": f"Bearer {KEY}"}


def chat(event_id: str, customer: str = "cus_a", **metadata: Any) -> dict[str, Any]:
    return {"event_id": event_id, "customer_id": customer, "event_name": "llm.chat", "metadata": metadata}


EVENTS = [
    chat("t1", model="gpt-4o", region="eu", totalTokens=10),
    chat("t2", "cus_b", model="gpt-4o", region="us", totalTokens=20),
    chat("t3", model="gpt-4o", region="apac", totalTokens=30),  # both filters exclude it
    chat("t4", model="gpt-4o", region="eu", totalTokens=40),
    chat("t5", model="gpt-4o", region="us", totalTokens=50),
    {"event_id": "a1", "customer_id": "cus_a", "event_name": "api.call"},
]


def run(config_path: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, [*args, "--config", str(config_path)])


def reconcile(config_path: Path, *args: str) -> tuple[int, dict[str, Any]]:
    result = run(config_path, "reconcile", "--json", *args)
    assert result.exit_code in (0, 1), result.output
    return result.exit_code, {m["id"]: m for m in json.loads(result.output)["meters"]}


@pytest.fixture
def setup(fake_dodo_factory: Callable[..., EmulatorServer], tmp_path: Path) -> tuple[EmulatorServer, Path]:
    dodo = fake_dodo_factory(meters=[TOKENS, CALLS])
    (tmp_path / "key").write_text(KEY)
    path = tmp_path / "agent.toml"
    path.write_text(
        f'[dodo]\nbase_url = "{dodo.url}"\napi_key_file = "{tmp_path / "key"}"\n'
        f'[outbox]\npath = "{tmp_path / "o.db"}"\n'
    )
    with Outbox(tmp_path / "o.db") as outbox:
        outbox.enqueue_many(EVENTS)
    assert run(path, "drain", "--once").exit_code == 0
    assert run(path, "meters", "pull").exit_code == 0
    assert set(dodo.events) == {e["event_id"] for e in EVENTS}
    return dodo, path


def test_agreement_with_the_filter_applied_on_both_sides_and_paging(
    setup: tuple[EmulatorServer, Path],
) -> None:
    _dodo, path = setup
    # page_size 2: Dodo's four tokens events take pages 0 and 1, page 2 is the empty one.
    code, meters = reconcile(path, "--page-size", "2")
    assert code == 0
    tokens = meters["mtr_tokens"]
    assert (tokens["outbox"], tokens["dodo"], tokens["matched"], tokens["agree"]) == (4, 4, 4, True)
    assert (meters["mtr_calls"]["outbox"], meters["mtr_calls"]["dodo"]) == (1, 1)
    code, meters = reconcile(path, "--customer", "cus_b", "--meter", "tokens")
    assert code == 0 and list(meters) == ["mtr_tokens"] and meters["mtr_tokens"]["matched"] == 1
    text = run(path, "reconcile")
    assert text.exit_code == 0 and "ok   tokens [mtr_tokens]: outbox 4, Dodo 4, both 4" in text.output


def test_an_event_dodo_has_that_the_outbox_lacks(setup: tuple[EmulatorServer, Path]) -> None:
    dodo, path = setup
    extra = chat("x1", model="gpt-4o", region="eu", totalTokens=1)
    assert httpx.post(f"{dodo.url}/events/ingest", headers=AUTH, json={"events": [extra]}).status_code == 200
    code, meters = reconcile(path)
    assert code == 1
    tokens = meters["mtr_tokens"]
    assert [(i["event_id"], i["reason"]) for i in tokens["only_in_dodo"]] == [("x1", "not_in_outbox")]
    assert tokens["only_in_outbox"] == [] and meters["mtr_calls"]["agree"]
    text = run(path, "reconcile")
    assert text.exit_code == 1 and "Dodo only   x1: not_in_outbox" in text.output


def test_delivered_events_dodo_does_not_count_get_their_reason(setup: tuple[EmulatorServer, Path]) -> None:
    dodo, path = setup
    # Dodo's meter now reads its filter differently from the pulled copy: t5 (region us) drops out.
    eu_only = {"conjunction": "and", "clauses": [{"key": "region", "operator": "equals", "value": "eu"}]}
    dodo.set_meters([TOKENS | {"filter": eu_only}, CALLS])
    code, meters = reconcile(path, "--meter", "mtr_tokens")
    assert code == 1
    # t2 (cus_b, us) and t5 (us): Dodo has them, its meter does not count them.
    assert [(i["event_id"], i["reason"]) for i in meters["mtr_tokens"]["only_in_outbox"]] == [
        ("t2", "filter"),
        ("t5", "filter"),
    ]
    # An event Dodo never stored (most likely an unknown customer): read back, 404.
    dodo.reset()
    kept = [e for e in EVENTS if e["event_id"] != "t4"]
    stored = [dict(e, timestamp=json.loads(_payload(path, e["event_id"]))["timestamp"]) for e in kept]
    httpx.post(f"{dodo.url}/events/ingest", headers=AUTH, json={"events": stored})
    code, meters = reconcile(path)
    assert code == 1
    assert [(i["event_id"], i["reason"]) for i in meters["mtr_tokens"]["only_in_outbox"]] == [
        ("t4", "unknown_customer")
    ]


def _payload(path: Path, event_id: str) -> str:
    with Outbox(path.parent / "o.db") as outbox:
        record = outbox.store.get(event_id)
        assert record is not None
        return record.payload


def test_dodo_unreadable_exits_75(setup: tuple[EmulatorServer, Path]) -> None:
    dodo, path = setup
    dodo.stop()
    result = run(path, "reconcile")
    assert result.exit_code == 75 and "Dodo could not be read" in result.output


def test_reconcile_needs_pulled_meters(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(
        f'[outbox]\npath = "{tmp_path / "o.db"}"\n'
        '[[meters]]\nevent_name = "api.call"\naggregation = "count"\n'
    )
    with Outbox(tmp_path / "o.db"):
        pass
    result = run(path, "reconcile")
    assert result.exit_code == 2 and "no pulled meters to reconcile" in result.output


def test_each_reason_for_an_id_on_one_side_only() -> None:
    import orjson

    from agent.meters import Meter
    from agent.meters.reconcile import MAX_LOOKUPS, Comparison, Reconciler
    from agent.store import RangeRow

    meter = Meter("llm.chat", "sum", "n", "tokens", "mtr_t", TOKENS["filter"])
    window = (1_000_000, 2_000_000)
    ok: dict[str, Any] = {"model": "gpt-4o", "region": "eu", "n": 1}

    def row(
        event_id: str, state: str = "delivered", ts: int = 1_500_000, restamped: bool = False, **md: Any
    ) -> RangeRow:
        payload = orjson.dumps(
            {"event_id": event_id, "customer_id": "c", "event_name": "llm.chat", "metadata": md}
        )
        return RangeRow(event_id, "llm.chat", ts, state, restamped, payload.decode())

    rows = {
        "pending": row("pending", "pending", **ok),
        "stamped": row("stamped", restamped=True, **ok),
        "outside": row("outside", ts=2_500_000, **ok),
        "excluded": row("excluded", model="claude", region="eu"),
    }
    comparison = Comparison(meter)
    comparison.outbox = {"late": True, "gone": False, "b_moved": False, "elsewhere": False}
    comparison.outbox |= {f"many{i:03d}": False for i in range(MAX_LOOKUPS + 1)}
    dodo_copies = {"b_moved": {"event_name": "llm.chat", "timestamp": "1970-01-01T00:00:05Z"}}
    dodo_copies |= {"elsewhere": {"event_name": "other"}}
    dodo_copies |= {
        f"many{i:03d}": {"event_name": "llm.chat", "timestamp": "1970-01-01T00:00:01.5Z"}
        for i in range(MAX_LOOKUPS + 1)
    }
    listed: dict[str, dict[str, Any]] = {k: {} for k in (*rows, "foreign")}
    Reconciler([meter], window).compare(
        comparison, listed, lambda ids: {i: rows[i] for i in ids if i in rows}, dodo_copies.get
    )
    assert {i["event_id"]: i["reason"] for i in comparison.only_in_dodo} == {
        "pending": "not_delivered",
        "stamped": "late",
        "outside": "time",
        "excluded": "filter",
        "foreign": "not_in_outbox",
    }
    reasons = {i["event_id"]: i["reason"] for i in comparison.only_in_outbox}
    assert (reasons["late"], reasons["gone"], reasons["b_moved"], reasons["elsewhere"]) == (
        "late",
        "unknown_customer",
        "time",
        "different_event",
    )
    # Read back at most MAX_LOOKUPS ids; the rest are named as unchecked, not guessed.
    manies = [r for i, r in reasons.items() if i.startswith("many")]
    assert manies.count("unchecked") == 4 and manies.count("filter") == MAX_LOOKUPS + 1 - 4
