"""The fake Dodo's meters with filters: GET /meters returns them, GET /events?meter_id= applies them.

The emulator's filter code is its own; the hand-computed table of tests/test_meter_filters.py is run
through it too, so both readings are held to the same hand-worked answers.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from agent.emulator import EmulatorConfig, EmulatorServer
from agent.emulator.meterfilter import passes
from tests.test_meter_filters import CASES

AUTH = {"Authorization": "Bearer test_key"}
TOKENS = {
    "id": "mtr_tokens",
    "name": "tokens",
    "event_name": "llm.chat",
    "aggregation": {"type": "sum", "key": "totalTokens"},
    "filter": {
        "conjunction": "and",
        "clauses": [
            {"key": "model", "operator": "equals", "value": "gpt-4o"},
            {
                "conjunction": "or",
                "clauses": [
                    {"key": "region", "operator": "equals", "value": "eu"},
                    {"key": "region", "operator": "equals", "value": "us"},
                ],
            },
        ],
    },
}
CALLS = {"id": "mtr_calls", "event_name": "api.call", "aggregation": {"type": "count"}}


@pytest.mark.parametrize(("spec", "metadata", "expected"), CASES)
def test_the_emulators_own_filter_reading_agrees_with_the_hand_computed_table(
    spec: dict[str, Any], metadata: dict[str, Any], expected: bool
) -> None:
    assert passes(spec, metadata) is expected


def at(seconds_ago: float) -> str:
    return (datetime.now(UTC) - timedelta(seconds=seconds_ago)).isoformat()


def test_get_events_by_meter_applies_name_filter_time_customer_and_paging(
    fake_dodo_factory: Callable[..., EmulatorServer],
) -> None:
    dodo = fake_dodo_factory(meters=[TOKENS, CALLS], rate_limit=False)

    def chat(event_id: str, customer: str, ago: float, **metadata: Any) -> dict[str, Any]:
        return {"event_id": event_id, "customer_id": customer, "event_name": "llm.chat"} | {
            "timestamp": at(ago),
            "metadata": metadata,
        }

    events = [
        chat("t1", "cus_a", 600, model="gpt-4o", region="eu", totalTokens=1),
        chat("t2", "cus_b", 500, model="gpt-4o", region="us", totalTokens=2),
        chat("t3", "cus_a", 400, model="gpt-4o", region="apac", totalTokens=3),  # filter excludes
        chat("t4", "cus_a", 300, model="gpt-3.5", region="eu", totalTokens=4),  # filter excludes
        chat("t5", "cus_a", 200, region="eu"),  # no model: excluded
        chat("t6", "cus_a", 100, model="gpt-4o", region="eu"),  # counted (a sum skips it, the list has it)
        {"event_id": "a1", "customer_id": "cus_a", "event_name": "api.call", "timestamp": at(50)},
    ]
    with httpx.Client(base_url=dodo.url, headers=AUTH, timeout=10) as http:
        assert http.post("/events/ingest", json={"events": events}).json() == {"ingested_count": 7}

        def ids(**params: Any) -> list[str]:
            return [e["event_id"] for e in http.get("/events", params=params).json()["items"]]

        assert ids(meter_id="mtr_tokens", page_size=100) == ["t1", "t2", "t6"]
        assert ids(meter_id="mtr_tokens", customer_id="cus_a", page_size=100) == ["t1", "t6"]
        assert ids(meter_id="mtr_tokens", start=at(550), end=at(150), page_size=100) == ["t2"]
        assert ids(meter_id="mtr_calls") == ["a1"]
        assert ids(meter_id="mtr_tokens", event_name="api.call") == []
        assert ids(meter_id="mtr_unknown") == []
        pages = [ids(meter_id="mtr_tokens", page_size=2, page_number=n) for n in range(3)]
        assert pages == [["t1", "t2"], ["t6"], []]
        listed = http.get("/meters").json()["items"]
    assert {m["id"]: m["filter"] for m in listed} == {"mtr_tokens": TOKENS["filter"], "mtr_calls": None}


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (
            {"conjunction": "and", "clauses": [{"key": "a", "operator": "eq", "value": 1}]},
            r"clauses\[0\]\.operator",
        ),
        ({"conjunction": "and", "clauses": []}, r"filter\.clauses"),
        ({"conjunction": "nor", "clauses": [{"key": "a", "operator": "equals", "value": 1}]}, "conjunction"),
    ],
)
def test_a_bad_filter_is_refused_at_start(bad: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EmulatorServer(EmulatorConfig(meters=[CALLS | {"filter": bad}]))
