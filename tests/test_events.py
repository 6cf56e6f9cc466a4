"""Every validation rule of agent.events, with its message and path."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from agent.errors import InvalidEventError
from agent.events import MAX_ID_LENGTH, check_event, validate, validate_many
from agent.repeats import CONFLICT, RETIMED, SAME, compare_content, duplicate_ids, same_content
from agent.timestamps import strip_timestamp

NOW = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC).timestamp()


def ev(**overrides: object) -> dict[str, object]:
    base: dict[str, object] = {"event_id": "e1", "customer_id": "cus_1", "event_name": "api.call"}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not ...}


def problems(raw: object) -> dict[str, str]:
    event, found = check_event(raw, NOW, "events[0]")
    assert event is None, "expected the event to be refused"
    return {p.path: p.message for p in found}


def test_minimal_event_is_stamped_with_enqueue_time() -> None:
    event = validate(ev(), NOW)
    assert event.stamped is True
    assert event.timestamp == "2026-11-26T12:00:00Z"
    assert json.loads(event.payload) == {
        "customer_id": "cus_1",
        "event_id": "e1",
        "event_name": "api.call",
        "timestamp": "2026-11-26T12:00:00Z",
    }


@pytest.mark.parametrize("key", ["event_id", "customer_id", "event_name"])
def test_required_fields(key: str) -> None:
    assert "is required" in problems(ev(**{key: ...}))[f"events[0].{key}"]
    assert "must not be empty" in problems(ev(**{key: ""}))[f"events[0].{key}"]
    assert "must not be empty" in problems(ev(**{key: "   "}))[f"events[0].{key}"]
    assert "spaces around" in problems(ev(**{key: " x"}))[f"events[0].{key}"]
    assert "must be a string" in problems(ev(**{key: 5}))[f"events[0].{key}"]
    assert f"limit is {MAX_ID_LENGTH}" in problems(ev(**{key: "x" * (MAX_ID_LENGTH + 1)}))[f"events[0].{key}"]
    validate(ev(**{key: "x" * MAX_ID_LENGTH}), NOW)


def test_not_an_object() -> None:
    assert "must be a JSON object" in problems([1, 2])["events[0]"]
    assert "got null" in problems(None)["events[0]"]


def test_unknown_top_level_field_is_refused_with_advice() -> None:
    message = problems(ev(tokens=5))["events[0].tokens"]
    assert "would be lost" in message and "metadata" in message


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-11-26T11:30:00Z", "2026-11-26T11:30:00Z"),
        ("2026-11-26T11:30:00", "2026-11-26T11:30:00Z"),  # naive = UTC, as the SDK sends
        ("2026-11-26T13:30:00+02:00", "2026-11-26T11:30:00Z"),
        ("2026-11-26T11:30:00.250000+00:00", "2026-11-26T11:30:00.250000Z"),
        ("2026-11-26 11:30:00z", "2026-11-26T11:30:00Z"),
    ],
)
def test_timestamps_are_normalised_to_utc(value: str, expected: str) -> None:
    event = validate(ev(timestamp=value), NOW)
    assert event.timestamp == expected
    assert event.stamped is False
    assert json.loads(event.payload)["timestamp"] == expected


def test_datetime_objects_are_accepted() -> None:
    moment = datetime(2026, 11, 26, 13, 0, tzinfo=timezone(timedelta(hours=2)))
    assert validate(ev(timestamp=moment), NOW).timestamp == "2026-11-26T11:00:00Z"


@pytest.mark.parametrize(
    "value", ["yesterday", "2026-13-01T00:00:00Z", "2026-11-26", 1700000000, " 2026-11-26T11:30:00Z"]
)
def test_bad_timestamps(value: object) -> None:
    assert "events[0].timestamp" in problems(ev(timestamp=value))


def test_future_beyond_five_minutes_is_refused_and_within_is_accepted() -> None:
    assert "in the future" in problems(ev(timestamp="2026-11-26T12:06:00Z"))["events[0].timestamp"]
    validate(ev(timestamp="2026-11-26T12:04:59Z"), NOW)


def test_older_than_an_hour_is_accepted_and_flagged_late() -> None:
    assert validate(ev(timestamp="2026-11-26T10:59:00Z"), NOW).late is True
    assert validate(ev(timestamp="2026-11-26T11:01:00Z"), NOW).late is False


def test_metadata_rules() -> None:
    found = problems(
        ev(
            metadata={
                "n": None,
                "nested": {"a": 1},
                "list": [1],
                "nan": float("nan"),
                "inf": float("inf"),
                "long": "x" * 501,
                "k" * 101: 1,
            }
        )
    )
    assert "is null" in found["events[0].metadata.n"]
    assert "flat" in found["events[0].metadata.nested"]
    assert "flat" in found["events[0].metadata.list"]
    assert "finite" in found["events[0].metadata.nan"]
    assert "finite" in found["events[0].metadata.inf"]
    assert "at most 500" in found["events[0].metadata.long"]
    assert "at most 100" in found["events[0].metadata." + "k" * 101]
    assert "at most 50" in problems(ev(metadata={f"k{i}": i for i in range(51)}))["events[0].metadata"]
    assert "flat JSON object" in problems(ev(metadata=[1]))["events[0].metadata"]
    ok = validate(ev(metadata={f"k{i}": i for i in range(49)} | {"s": "x" * 500}), NOW)
    assert len(ok.metadata) == 50


def test_metadata_value_types_kept() -> None:
    event = validate(ev(metadata={"i": 3, "f": 1.5, "b": True, "s": "gpt"}), NOW)
    assert json.loads(event.payload)["metadata"] == {"b": True, "f": 1.5, "i": 3, "s": "gpt"}


def test_numeric_string_is_accepted_with_a_warning() -> None:
    event = validate(ev(metadata={"tokens": "150"}), NOW)
    assert [w.path for w in event.warnings] == ["event.metadata.tokens"]
    assert "cannot sum" in event.warnings[0].message


def test_every_problem_of_every_event_is_reported_at_once() -> None:
    with pytest.raises(InvalidEventError) as info:
        validate_many([ev(), ev(event_id=""), ev(customer_id=None, metadata={"x": None}), "junk"], NOW)
    paths = [p.path for p in info.value.problems]
    assert paths == [
        "events[1].event_id",
        "events[2].customer_id",
        "events[2].metadata.x",
        "events[3]",
    ]
    assert "4 problems" in str(info.value)


def test_payload_is_canonical_and_timestamp_last() -> None:
    a = validate({"metadata": {"b": 1, "a": 2}, "event_name": "x", "customer_id": "c", "event_id": "i"}, NOW)
    b = validate({"event_id": "i", "customer_id": "c", "event_name": "x", "metadata": {"a": 2, "b": 1}}, NOW)
    assert a.payload == b.payload
    assert a.payload.endswith('"timestamp":"2026-11-26T12:00:00Z"}')
    assert json.loads(strip_timestamp(a.payload)) == {
        "customer_id": "c",
        "event_id": "i",
        "event_name": "x",
        "metadata": {"a": 2, "b": 1},
    }


def test_strip_timestamp_ignores_lookalikes_in_metadata() -> None:
    event = validate(ev(metadata={"note": ',"timestamp":"fake'}), NOW)
    assert json.loads(strip_timestamp(event.payload))["metadata"] == {"note": ',"timestamp":"fake'}


def test_same_content_ignores_a_stamped_timestamp() -> None:
    first = validate(ev(), NOW)
    retry = validate(ev(), NOW + 30)
    assert first.payload != retry.payload
    assert same_content(first.payload, True, retry.payload, True)
    changed = validate(ev(metadata={"n": 2}), NOW + 30)
    assert not same_content(first.payload, True, changed.payload, True)
    explicit = validate(ev(timestamp="2026-11-26T11:00:00Z"), NOW)
    other = validate(ev(timestamp="2026-11-26T11:00:01Z"), NOW)
    # A producer that rebuilt the event in a retry loop: the same event, retimed (issue 11).
    assert compare_content(explicit.payload, False, other.payload, False) == RETIMED
    assert compare_content(explicit.payload, False, explicit.payload, False) == SAME
    assert compare_content(explicit.payload, False, changed.payload, False) == CONFLICT


def test_duplicate_ids_in_one_request() -> None:
    events = validate_many([ev(), ev(event_id="e2"), ev()], NOW)
    found = duplicate_ids(events)
    assert [p.path for p in found] == ["events[2].event_id", "events[0].event_id"]
    assert "repeats events[0]" in found[0].message
    assert "also the event_id of events[2]" in found[1].message


def test_extreme_values_are_problems_not_crashes() -> None:
    assert "outside the range" in problems(ev(timestamp="0001-01-01T00:00:00+01:00"))["events[0].timestamp"]
    assert "64-bit" in problems(ev(metadata={"n": 2**64}))["events[0].metadata.n"]
    validate(ev(metadata={"n": 2**63 - 1}), NOW)
