"""Validation of an ingest request body against Dodo's contract. Pure: no I/O, no clock of its own.

This module is the emulator's reading of docs/dodo-ingest-contract.md. It is deliberately
independent of ``agent.events`` (the agent's own validation): if both shared code, a bug in one would be
hidden by the same bug in the other.

Status mapping (the first problem found wins; its message names it, e.g. ``events[3].timestamp: ...``):

- 422 ``UNPROCESSABLE_ENTITY`` (schema violation, checked for the whole body first, the way a
  deserialiser would): body not JSON, body not an object, a top-level key other than ``events``,
  ``events`` missing or not a list, an event not an object, an unknown event field, a required field
  missing, a field of the wrong JSON type (``event_id``/``customer_id``/``event_name``/``timestamp``
  not strings, ``metadata`` not an object, a metadata value null, an object or an array).
- 400 ``BAD_REQUEST`` (validation): 0 or more than 1000 events, an empty ``event_id``/``customer_id``/
  ``event_name``, one over 255 characters or with whitespace around it (see below), a timestamp
  that is not ISO 8601 or lies outside the window, a metadata limit (more than 50 keys, a key over
  100 characters, a string value over 500 characters).
- 400 ``DUPLICATE_EVENT_ID``: the same ``event_id`` twice inside one request.
- 400 ``BAD_REQUEST`` for an ``event_id`` matching ``reject_event_ids`` (test-only poison events, see
  ``EmulatorConfig.reject_event_ids``; not a rule of Dodo's).

Any failure fails the whole request: nothing of it is stored.

Where Dodo's published schema is silent, the emulator takes the agent's documented reading (README,
"What is validated"), so the agent's validation and its emulator agree on every edge case
(tests/test_validation_agreement.py runs one corpus through both): ids are at most 255 characters
(``MAX_ID_CHARS``) and carry no whitespace around them (any character ``str.isspace`` calls whitespace:
NBSP U+00A0, U+3000, U+0085, the separators U+001C-U+001F...). Integers follow JSON parsing as
Dodo's does: exact up to 64 bits (i64 and u64), a float beyond; an empty metadata key is accepted.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from agent.emulator.meterfilter import passes

MAX_EVENTS = 1000
MAX_ID_CHARS = 255
MAX_METADATA_KEYS = 50
MAX_METADATA_KEY_CHARS = 100
MAX_METADATA_VALUE_CHARS = 500

REQUIRED_FIELDS = ("event_id", "customer_id", "event_name")
OPTIONAL_FIELDS = ("timestamp", "metadata")
KNOWN_FIELDS = frozenset(REQUIRED_FIELDS + OPTIONAL_FIELDS)

# An ISO 8601 / RFC 3339 date-time in extended form: a date alone is not a date-time.
_DATETIME_SHAPE = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}")


class ContractError(Exception):
    """A request the contract rejects: ``status`` and the ``{"code", "message"}`` body to answer with."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message

    def body(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


def _schema(message: str) -> ContractError:
    return ContractError(422, "UNPROCESSABLE_ENTITY", message)


def _invalid(message: str) -> ContractError:
    return ContractError(400, "BAD_REQUEST", message)


@dataclass(frozen=True, slots=True)
class ValidEvent:
    """One event that passed every rule. ``timestamp`` is aware UTC, or None when the sender gave none."""

    event_id: str
    customer_id: str
    event_name: str
    timestamp: datetime | None
    metadata: dict[str, str | int | float | bool] | None


def parse_timestamp(text: str) -> datetime:
    """Parse an ISO 8601 date-time (``Z``, an offset, or naive meaning UTC) into aware UTC.

    Raises ValueError when ``text`` is not a date-time.
    """
    if not _DATETIME_SHAPE.match(text):
        raise ValueError("not an ISO 8601 date-time")
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def format_timestamp(moment: datetime) -> str:
    """Render an aware datetime as ISO 8601 UTC with a ``Z``, milliseconds kept."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_body(raw: bytes) -> list[dict[str, Any]]:
    """Decode the body and check its schema (422 rules). Returns the events, still unvalidated."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise _schema(f"body: malformed JSON ({exc})") from None
    if not isinstance(body, dict):
        raise _schema("body: expected an object with an `events` list")
    for key in body:
        if key != "events":
            raise _schema(f"body.{key}: unknown field")
    events = body.get("events")
    if not isinstance(events, list):
        raise _schema("body.events: required, must be a list")
    for index, event in enumerate(events):
        _check_event_schema(index, event)
    return events


def _check_event_schema(index: int, event: Any) -> None:
    where = f"events[{index}]"
    if not isinstance(event, dict):
        raise _schema(f"{where}: expected an object")
    for key in event:
        if key not in KNOWN_FIELDS:
            raise _schema(f"{where}.{key}: unknown field")
    for name in REQUIRED_FIELDS:
        if name not in event:
            raise _schema(f"{where}.{name}: required")
        if not isinstance(event[name], str):
            raise _schema(f"{where}.{name}: must be a string")
    timestamp = event.get("timestamp")
    if timestamp is not None and not isinstance(timestamp, str):
        raise _schema(f"{where}.timestamp: must be an ISO 8601 string")
    metadata = event.get("metadata")
    if metadata is None:
        return
    if not isinstance(metadata, dict):
        raise _schema(f"{where}.metadata: must be a flat object")
    for key, value in metadata.items():
        # bool is an int subclass in Python, so it passes this check, as the contract wants.
        if not isinstance(value, str | int | float):
            kind = "null" if value is None else type(value).__name__
            raise _schema(f"{where}.metadata.{key}: values must be string, number or boolean, not {kind}")


def validate_events(
    events: list[dict[str, Any]],
    *,
    now: datetime,
    window_seconds: float,
    future_seconds: float,
    reject_event_ids: re.Pattern[str] | None = None,
) -> list[ValidEvent]:
    """Apply the 400 rules to schema-checked events, in order. ``now`` is the emulator's clock (aware).
    ``reject_event_ids``: event ids matching it are refused (test-only poison events).

    Raises ContractError on the first problem; returns every event otherwise.
    """
    if not events:
        raise _invalid("events: at least 1 event is required")
    if len(events) > MAX_EVENTS:
        raise _invalid(f"events: at most {MAX_EVENTS} events per request, got {len(events)}")
    seen: dict[str, int] = {}
    valid: list[ValidEvent] = []
    for index, event in enumerate(events):
        where = f"events[{index}]"
        for name in REQUIRED_FIELDS:
            value = event[name]
            if value == "":
                raise _invalid(f"{where}.{name}: must not be empty")
            if len(value) > MAX_ID_CHARS:
                raise _invalid(f"{where}.{name}: at most {MAX_ID_CHARS} characters, got {len(value)}")
            if value[0].isspace() or value[-1].isspace():
                raise _invalid(f"{where}.{name}: {value!r} has whitespace around it")
        event_id = event["event_id"]
        if event_id in seen:
            raise ContractError(
                400,
                "DUPLICATE_EVENT_ID",
                f"{where}.event_id: {event_id!r} duplicates events[{seen[event_id]}] in the same request",
            )
        seen[event_id] = index
        if reject_event_ids is not None and reject_event_ids.search(event_id):
            raise _invalid(f"{where}.event_id: {event_id!r} is refused (the emulator's reject_event_ids)")
        timestamp = _check_timestamp(where, event.get("timestamp"), now, window_seconds, future_seconds)
        metadata = event.get("metadata")
        if metadata is not None:
            _check_metadata_limits(where, metadata)
        valid.append(ValidEvent(event_id, event["customer_id"], event["event_name"], timestamp, metadata))
    return valid


def _check_timestamp(
    where: str, text: str | None, now: datetime, window_seconds: float, future_seconds: float
) -> datetime | None:
    if text is None:
        return None
    try:
        moment = parse_timestamp(text)
    except ValueError:
        raise _invalid(f"{where}.timestamp: {text!r} is not an ISO 8601 date-time") from None
    age = (now - moment).total_seconds()
    if age > window_seconds:
        raise _invalid(
            f"{where}.timestamp: {text!r} is more than {window_seconds:g} s in the past "
            "(historical backfill is not supported)"
        )
    if -age > future_seconds:
        raise _invalid(f"{where}.timestamp: {text!r} is more than {future_seconds:g} s in the future")
    return moment


def _check_metadata_limits(where: str, metadata: dict[str, Any]) -> None:
    if len(metadata) > MAX_METADATA_KEYS:
        raise _invalid(f"{where}.metadata: at most {MAX_METADATA_KEYS} keys, got {len(metadata)}")
    for key, value in metadata.items():
        if len(key) > MAX_METADATA_KEY_CHARS:
            raise _invalid(f"{where}.metadata: key {key[:20]!r}... is over {MAX_METADATA_KEY_CHARS} chars")
        if isinstance(value, str) and len(value) > MAX_METADATA_VALUE_CHARS:
            raise _invalid(f"{where}.metadata.{key}: value is over {MAX_METADATA_VALUE_CHARS} characters")


# -- the read-back endpoints' query parameters -------------------------------------------------------


def page(items: list[dict[str, Any]], params: Mapping[str, str]) -> list[dict[str, Any]]:
    """Slice by ``page_size`` (1-100, default 10) and ``page_number`` (from 0); past the end is empty.

    Raises ContractError (422) on a bad parameter.
    """
    try:
        size = int(params.get("page_size", "10"))
        number = int(params.get("page_number", "0"))
    except ValueError:
        raise _schema("page_size and page_number must be integers") from None
    if not 1 <= size <= 100 or number < 0:
        raise _schema("page_size must be 1-100 and page_number >= 0")
    return items[number * size : (number + 1) * size]


def filter_events(
    events: Iterable[dict[str, Any]], meters: Iterable[dict[str, Any]], params: Mapping[str, str]
) -> list[dict[str, Any]]:
    """The events matching ``customer_id``, ``event_name``, ``meter_id`` (its event name and filter),
    ``start`` and ``end`` (ISO 8601, inclusive), in the order given; not copies.

    Raises ContractError (422)."""
    names = {params["event_name"]} if "event_name" in params else None
    meter_filter: dict[str, Any] | None = None
    if "meter_id" in params:
        chosen = [m for m in meters if m["id"] == params["meter_id"]]
        meter_names = {m["event_name"] for m in chosen}
        names = meter_names if names is None else names & meter_names
        meter_filter = chosen[0].get("filter") if chosen else None
    bounds: dict[str, str] = {}
    for name in ("start", "end"):
        if name in params:
            try:
                bounds[name] = format_timestamp(parse_timestamp(params[name]))
            except ValueError:
                raise _schema(f"{name}: {params[name]!r} is not an ISO 8601 date-time") from None
    return [
        event
        for event in events
        if ("customer_id" not in params or event["customer_id"] == params["customer_id"])
        and (names is None or event["event_name"] in names)
        # Stored timestamps share one format and zone, so the strings sort as the instants do.
        and ("start" not in bounds or event["timestamp"] >= bounds["start"])
        and ("end" not in bounds or event["timestamp"] <= bounds["end"])
        and passes(meter_filter, event["metadata"])
    ]
