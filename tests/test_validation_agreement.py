"""The agent's validation and its Dodo emulator agree on every edge case (issue 11).

One corpus of events goes through both: the validator (`agent.events.check_event`, on the event as the
HTTP intake parses it) and the emulator's independent reading of the contract
(`agent.emulator.contract`, on the same request body). Each case is accepted by both or refused by both.
Rules where Dodo's schema is silent are documented in the README ("What is validated").
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from agent.emulator import contract
from agent.events import check_event

NOW = time.time()
"""The clock of the corpus the parametrised tests compare at (they pass it to both sides)."""


def stamp(now: float, delta_seconds: float, fmt: str = "%Y-%m-%dT%H:%M:%SZ") -> str:
    return (datetime.fromtimestamp(now, UTC) + timedelta(seconds=delta_seconds)).strftime(fmt)


def base(**changes: Any) -> dict[str, Any]:
    event: dict[str, Any] = {"event_id": "e1", "customer_id": "cus_1", "event_name": "api.call"}
    event.update(changes)
    return {k: v for k, v in event.items() if v is not _DROP}


_DROP = object()
RAW_U64 = b'{"events":[{"event_id":"e1","customer_id":"cus_1","event_name":"api.call","metadata":{"n":%s}}]}'


def corpus(now: float) -> dict[str, dict[str, Any] | bytes]:
    """The edge cases, their timestamps relative to `now`: a test that talks to a server on the real
    clock builds it again when it starts, so a long run cannot turn "10 min ahead" into 3."""

    def iso(delta_seconds: float, fmt: str = "%Y-%m-%dT%H:%M:%SZ") -> str:
        return stamp(now, delta_seconds, fmt)

    return {
        "plain": base(),
        "metadata of every kind": base(metadata={"s": "x", "i": 3, "f": 1.5, "b": True, "neg": -7}),
        "timestamp 10 min ago": base(timestamp=iso(-600)),
        "timestamp with offset": base(timestamp=iso(-600, "%Y-%m-%dT%H:%M:%S+00:00")),
        "naive timestamp": base(timestamp=iso(-600, "%Y-%m-%dT%H:%M:%S")),
        "timestamp with milliseconds": base(timestamp=iso(-600, "%Y-%m-%dT%H:%M:%S.123Z")),
        "timestamp 4 min ahead": base(timestamp=iso(240)),
        "timestamp 10 min ahead": base(timestamp=iso(600)),
        "a date without a time": base(timestamp=iso(0, "%Y-%m-%d")),
        "not a date": base(timestamp="yesterday"),
        "timestamp not a string": base(timestamp=1_700_000_000),
        "missing event_id": base(event_id=_DROP),
        "missing customer_id": base(customer_id=_DROP),
        "event_name not a string": base(event_name=5),
        "empty event_id": base(event_id=""),
        "blank customer_id": base(customer_id="   "),
        "id of 255 characters": base(event_id="x" * 255),
        "id of 256 characters": base(event_id="x" * 256),
        "customer_id of 256 characters": base(customer_id="c" * 256),
        "event_name of 256 characters": base(event_name="n" * 256),
        "space inside an id": base(event_id="req 1"),
        "leading space": base(event_id=" req_1"),
        "trailing tab": base(customer_id="cus_1\t"),
        "trailing NBSP U+00A0": base(event_id="req_1\u00a0"),
        "leading ideographic space U+3000": base(event_name="\u3000api.call"),
        "trailing record separator \\x1e": base(event_id="req_1\x1e"),
        "trailing next line \\x85": base(customer_id="cus_1\x85"),
        "zero-width space (not whitespace)": base(event_id="req_1\u200b"),
        "unknown field": base(colour="red"),
        "metadata not an object": base(metadata=[1, 2]),
        "metadata null value": base(metadata={"n": None}),
        "metadata nested object": base(metadata={"n": {"a": 1}}),
        "metadata array value": base(metadata={"n": [1]}),
        "metadata empty key": base(metadata={"": 1}),
        "metadata 50 keys": base(metadata={f"k{i}": i for i in range(50)}),
        "metadata 51 keys": base(metadata={f"k{i}": i for i in range(51)}),
        "metadata key of 100 characters": base(metadata={"k" * 100: 1}),
        "metadata key of 101 characters": base(metadata={"k" * 101: 1}),
        "metadata value of 500 characters": base(metadata={"v": "x" * 500}),
        "metadata value of 501 characters": base(metadata={"v": "x" * 501}),
        "integer 2**63 - 1": base(metadata={"n": 2**63 - 1}),
        "integer 2**63": base(metadata={"n": 2**63}),
        "integer 2**64 - 1": base(metadata={"n": 2**64 - 1}),
        "integer -2**63": base(metadata={"n": -(2**63)}),
        # Beyond 64 bits a JSON integer is parsed as a float, by Dodo's parser and by ours.
        "integer 2**64 (a float once parsed)": RAW_U64 % str(2**64).encode(),
        "integer -2**63 - 1 (a float once parsed)": RAW_U64 % str(-(2**63) - 1).encode(),
        "integer 10**30 (a float once parsed)": RAW_U64 % b"1000000000000000000000000000000",
    }


CORPUS = corpus(NOW)


def body_of(case: dict[str, Any] | bytes) -> bytes:
    return case if isinstance(case, bytes) else orjson.dumps({"events": [case]})


def validator_accepts(body: bytes, now: float = NOW) -> bool:
    [raw] = orjson.loads(body)["events"]  # as the HTTP intake reads it
    event, _problems = check_event(raw, now, "events[0]")
    return event is not None


def emulator_accepts(body: bytes) -> bool:
    try:
        events = contract.parse_body(body)
        contract.validate_events(
            events, now=datetime.fromtimestamp(NOW, UTC), window_seconds=3600, future_seconds=300
        )
    except contract.ContractError:
        return False
    return True


@pytest.mark.parametrize("name", list(CORPUS))
def test_validator_and_emulator_agree(name: str) -> None:
    body = body_of(CORPUS[name])
    validator, emulator = validator_accepts(body), emulator_accepts(body)
    verdict = {True: "accepts", False: "refuses"}
    assert validator == emulator, f"{name}: validator {verdict[validator]}, emulator {verdict[emulator]}"


def test_the_corpus_holds_both_outcomes() -> None:
    outcomes = {name: validator_accepts(body_of(case)) for name, case in CORPUS.items()}
    assert outcomes["plain"] and outcomes["integer 2**64 - 1"] and outcomes["metadata empty key"]
    assert outcomes["integer 2**64 (a float once parsed)"]
    refused = [name for name, ok in outcomes.items() if not ok]
    assert {"id of 256 characters", "trailing NBSP U+00A0", "trailing record separator \\x1e"} <= set(refused)


def test_fake_dodo_over_http_agrees_with_the_validator(fake_dodo_factory: Any) -> None:
    """The same corpus, one request each, through a real fake-dodo on 127.0.0.1 (its whole stack)."""
    import httpx

    server = fake_dodo_factory(rate_limit=False)
    headers = {"Authorization": "Bearer test_key", "Content-Type": "application/json"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=30) as client:
        now = time.time()  # the server's clock, not the one the module was imported at
        for name, case in corpus(now).items():
            body = body_of(case)
            answer = client.post("/events/ingest", content=body)
            assert answer.status_code in (200, 400, 422), f"{name}: {answer.status_code} {answer.text}"
            assert (answer.status_code == 200) == validator_accepts(body, now), f"{name}: {answer.text}"
