"""The validated event and its canonical JSON. No I/O.

The canonical JSON of an event is compact with sorted keys, so `timestamp` is always the last key. The
delivery engine builds request bodies by splicing these stored strings, and can drop the timestamp of a
late event by cutting a known suffix instead of decoding and re-encoding it (`agent.timestamps`).
Validation (`agent.events`) decides what is valid; this module builds the `Event` it returns.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from agent.errors import Problem
from agent.timestamps import US, canonical_timestamp


@dataclass(frozen=True, slots=True)
class Event:
    """A validated event, ready to store.

    `payload` is the canonical JSON sent to Dodo; `ts_us` the event time in microseconds since the epoch
    (UTC); `stamped` is true when the producer gave no timestamp and the enqueue time was used; `late` is
    true when the timestamp is already outside Dodo's 1-hour window; `warnings` are accepted oddities.
    """

    event_id: str
    customer_id: str
    event_name: str
    timestamp: str
    ts_us: int
    metadata: Mapping[str, str | int | float | bool]
    payload: str
    stamped: bool
    late: bool
    warnings: tuple[Problem, ...] = ()


_EVENT_FIELDS = (
    "event_id",
    "customer_id",
    "event_name",
    "timestamp",
    "ts_us",
    "metadata",
    "payload",
    "stamped",
    "late",
    "warnings",
)


def _slot_setters() -> tuple[Any, ...]:
    # Fails at import, not at run time, if Event gains or loses a field that _new_event must set.
    if set(Event.__slots__) != set(_EVENT_FIELDS):
        raise RuntimeError("agent.canonical: update _EVENT_FIELDS and _new_event to Event's fields")
    return tuple(getattr(Event, name).__set__ for name in _EVENT_FIELDS)


(
    _set_event_id,
    _set_customer_id,
    _set_event_name,
    _set_timestamp,
    _set_ts_us,
    _set_metadata,
    _set_payload,
    _set_stamped,
    _set_late,
    _set_warnings,
) = _slot_setters()


def _new_event(
    event_id: str,
    customer_id: str,
    event_name: str,
    timestamp: str,
    ts_us: int,
    metadata: Mapping[str, str | int | float | bool],
    payload: str,
    stamped: bool,
    late: bool,
    warnings: tuple[Problem, ...],
) -> Event:
    """`Event(...)` at half the cost, for validation's hot path (an equal, equally frozen Event).

    A frozen dataclass's __init__ routes every field through object.__setattr__ (1.5 us for ten
    fields, a tenth of validating an event); the slots' own setters do the same job directly.
    """
    event = object.__new__(Event)
    _set_event_id(event, event_id)
    _set_customer_id(event, customer_id)
    _set_event_name(event, event_name)
    _set_timestamp(event, timestamp)
    _set_ts_us(event, ts_us)
    _set_metadata(event, metadata)
    _set_payload(event, payload)
    _set_stamped(event, stamped)
    _set_late(event, late)
    _set_warnings(event, warnings)
    return event


def canonical_event(
    path: str,
    event_id: str,
    customer_id: str,
    event_name: str,
    moment: datetime,
    seconds: float,
    metadata: Mapping[str, str | int | float | bool],
    stamped: bool,
    late: bool,
    warnings: list[Problem],
) -> tuple[Event | None, list[Problem]]:
    """The Event of valid fields, its payload the canonical JSON; or None and a problem for each
    string that cannot be encoded (`path` names the event). `seconds` is the event time, epoch."""
    ts_us = round(seconds * US)
    timestamp = canonical_timestamp(moment, ts_us)
    document: dict[str, object] = {
        "customer_id": customer_id,
        "event_id": event_id,
        "event_name": event_name,
        "timestamp": timestamp,
    }
    if metadata:
        document["metadata"] = metadata
    try:
        payload = orjson.dumps(document, option=orjson.OPT_SORT_KEYS).decode()
    except orjson.JSONEncodeError:
        # A lone surrogate (a "\ud800" escape, or bytes that were not UTF-8) is not text and cannot be
        # sent as JSON. Looked for only when encoding fails, so valid events pay nothing for it.
        # (Before: a TypeError escaped from enqueue instead of a refusal naming the field.)
        return None, _unencodable(document, path)
    event = _new_event(
        event_id,
        customer_id,
        event_name,
        timestamp,
        ts_us,
        metadata,
        payload,
        stamped,
        late,
        tuple(warnings) if warnings else (),
    )
    return event, []


def _is_text(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _unencodable(document: Mapping[str, object], path: str) -> list[Problem]:
    """A problem for each string of `document` that is not valid Unicode (holds a lone surrogate)."""
    why = (
        "is not valid Unicode text (it holds a lone surrogate: a \\ud800-\\udfff escape, or bytes "
        "that are not UTF-8); send UTF-8 text"
    )
    problems: list[Problem] = []
    for name, value in document.items():
        if isinstance(value, Mapping):  # metadata
            for key, item in value.items():
                if not _is_text(key):
                    problems.append(Problem(f"{path}.{name}[{key!r}]", f"key {why}"))
                elif isinstance(item, str) and not _is_text(item):
                    problems.append(Problem(f"{path}.{name}.{key}", why))
        elif isinstance(value, str) and not _is_text(value):
            problems.append(Problem(f"{path}.{name}", why))
    return problems or [Problem(path, "cannot be encoded as JSON")]
