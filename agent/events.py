"""The usage event's validation against Dodo's contract. No I/O.

Validation mirrors what Dodo checks (`docs/dodo-ingest-contract.md`), so a producer hears about a bad
event when it enqueues it, not an hour later from the dead-letter queue. One call reports every problem
of every event, each with its path (`events[3].metadata.tokens`) and what to do about it. A valid event
is built, with its canonical JSON, by `agent.canonical` (`Event` is importable from here too).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from agent.canonical import Event, canonical_event
from agent.errors import InvalidEventError, Problem
from agent.timestamps import parse_timestamp

__all__ = [
    "DODO_WINDOW_SECONDS",
    "FIELDS",
    "FUTURE_TOLERANCE_SECONDS",
    "MAX_EVENT_AGE_SECONDS",
    "MAX_ID_LENGTH",
    "MAX_METADATA_KEYS",
    "MAX_METADATA_KEY_LENGTH",
    "MAX_METADATA_VALUE_LENGTH",
    "Event",
    "check_event",
    "validate",
    "validate_many",
]

MAX_ID_LENGTH = 255
"""Longest `event_id`, `customer_id` and `event_name` accepted (Dodo documents no limit; this is ours)."""
MAX_METADATA_KEYS = 50
MAX_METADATA_KEY_LENGTH = 100
MAX_METADATA_VALUE_LENGTH = 500
FUTURE_TOLERANCE_SECONDS = 300.0
"""Dodo rejects timestamps more than 5 minutes in the future."""
DODO_WINDOW_SECONDS = 3600.0
"""Dodo rejects timestamps more than 1 hour in the past."""
MAX_EVENT_AGE_SECONDS = 86400.0
"""The default `[intake] max_event_age`: older events are refused, not restamped and billed today."""

FIELDS = ("event_id", "customer_id", "event_name", "timestamp", "metadata")
_REQUIRED = ("event_id", "customer_id", "event_name")
_FIELD_SET = frozenset(FIELDS)
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1
"""Integers JSON parsers such as Dodo's (serde_json) and ours (orjson) keep exact: i64 and u64. A JSON
integer beyond them arrives as a float (2**64 is accepted as 1.8446744073709552e19); only a Python int
given to the library can be beyond them, and it cannot be encoded."""
_NEVER_NUMBER_START = frozenset(
    c for c in map(chr, range(128)) if not (c in "+-." or c.isdecimal() or c.isspace())
)
"""ASCII characters no numeric string starts with: a cheap test that spares most strings the regex."""
_NUMERIC_STRING = re.compile(r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$")


def _check_id(raw: Mapping[str, Any], key: str, path: str, problems: list[Problem]) -> str:
    value = raw.get(key)
    if type(value) is str and 0 < len(value) <= MAX_ID_LENGTH and value == value.strip():
        return value  # the common case, decided without formatting the path
    where = f"{path}.{key}"
    if value is None:
        problems.append(Problem(where, f"is required; give every event a non-empty string {key}"))
    elif not isinstance(value, str):
        problems.append(Problem(where, f"must be a string, not {type(value).__name__}"))
    elif not (stripped := value.strip()):
        problems.append(Problem(where, "must not be empty"))
    elif value != stripped:
        problems.append(Problem(where, f"has spaces around it ({value!r}); remove them"))
    elif len(value) > MAX_ID_LENGTH:
        problems.append(Problem(where, f"is {len(value)} characters; the limit is {MAX_ID_LENGTH}"))
    else:
        return value
    return ""


def _check_metadata(
    value: object, path: str, problems: list[Problem], warnings: list[Problem]
) -> dict[str, str | int | float | bool]:
    where = f"{path}.metadata"
    if type(value) is not dict and not isinstance(value, Mapping):
        problems.append(
            Problem(where, f"must be a flat JSON object of key/value pairs, not {type(value).__name__}")
        )
        return {}
    if len(value) > MAX_METADATA_KEYS:
        problems.append(Problem(where, f"has {len(value)} keys; Dodo allows at most {MAX_METADATA_KEYS}"))
    for key, item in value.items():
        # The item's path is formatted only when there is a problem to report (the common case has none).
        if not isinstance(key, str):
            problems.append(Problem(f"{where}[{key!r}]", "keys must be strings"))
            continue
        if not key:  # Dodo's schema allows it (any JSON object key); no meter can name it
            warnings.append(
                Problem(
                    f"{where}['']",
                    "is an empty key: Dodo stores it, but no meter or filter can name it; "
                    "give it a name if it is meant to be aggregated",
                )
            )
        if len(key) > MAX_METADATA_KEY_LENGTH:
            problems.append(
                Problem(
                    f"{where}.{key}",
                    f"key is {len(key)} characters; Dodo allows at most {MAX_METADATA_KEY_LENGTH}",
                )
            )
        # One type, not a `bool | int` union: isinstance against a union is several times slower.
        if isinstance(item, int):  # bool included
            pass
        elif isinstance(item, float):
            if not math.isfinite(item):
                problems.append(Problem(f"{where}.{key}", f"is {item}; use a finite number"))
                continue
        elif isinstance(item, str):
            if len(item) > MAX_METADATA_VALUE_LENGTH:
                problems.append(
                    Problem(
                        f"{where}.{key}",
                        f"value is {len(item)} characters; Dodo allows at most {MAX_METADATA_VALUE_LENGTH}",
                    )
                )
            elif item and item[0] not in _NEVER_NUMBER_START and _NUMERIC_STRING.match(item):
                warnings.append(
                    Problem(
                        f"{where}.{key}",
                        f"is the string {item!r}; a meter cannot sum or max a string, send the "
                        "number itself if this value is aggregated",
                    )
                )
        elif item is None:
            problems.append(
                Problem(f"{where}.{key}", "is null; Dodo accepts no nulls: leave the key out instead")
            )
            continue
        else:
            problems.append(
                Problem(
                    f"{where}.{key}",
                    f"is a {type(item).__name__}; metadata is flat: values must be strings, "
                    "numbers or booleans",
                )
            )
            continue
        # A float's text is at most 24 characters; only an int can be too big, and JSON consumers
        # (Dodo's included) hold integers in 64 bits (signed, or unsigned up to 2**64 - 1).
        if type(item) is int and not _INT_MIN <= item <= _INT_MAX:
            problems.append(
                Problem(
                    f"{where}.{key}",
                    "is beyond a 64-bit integer (-2**63 to 2**64 - 1); send a smaller number or a float",
                )
            )
            continue
    # Only a refused event skips items, and a refused event's metadata is never used: a plain copy is
    # the clean metadata of every accepted event (cheaper than building it item by item).
    return dict(value)


def check_event(
    raw: object, now: float, path: str = "event", max_age: float = MAX_EVENT_AGE_SECONDS
) -> tuple[Event | None, list[Problem]]:
    """Validate one event; return it (or None) and its problems. `now` is epoch seconds.

    A timestamp more than `max_age` seconds old (`[intake] max_event_age`) is refused: restamped at
    delivery it would be billed in the current period. Between Dodo's window and `max_age` the event
    is accepted and flagged `late` (the late-event policy applies at delivery).
    """
    problems: list[Problem] = []
    if type(raw) is not dict and not isinstance(raw, Mapping):
        kind = "null" if raw is None else type(raw).__name__
        return None, [
            Problem(path, f"must be a JSON object with event_id, customer_id, event_name; got {kind}")
        ]
    for key in () if _FIELD_SET.issuperset(raw) else raw:
        if key not in FIELDS:
            problems.append(
                Problem(
                    f"{path}.{key}",
                    "is not a field Dodo knows and would be lost; put it inside metadata, "
                    f"or remove it (fields: {', '.join(FIELDS)})",
                )
            )
    event_id = _check_id(raw, "event_id", path, problems)
    customer_id = _check_id(raw, "customer_id", path, problems)
    event_name = _check_id(raw, "event_name", path, problems)

    warnings: list[Problem] = []
    metadata: dict[str, str | int | float | bool] = {}
    given_metadata = raw.get("metadata")
    if given_metadata is not None:
        metadata = _check_metadata(given_metadata, path, problems, warnings)

    given_timestamp = raw.get("timestamp")
    stamped = given_timestamp is None
    moment: datetime | None = None
    if stamped:
        moment = datetime.fromtimestamp(now, UTC)
    else:
        try:
            moment = parse_timestamp(given_timestamp)
        except ValueError as exc:
            problems.append(Problem(f"{path}.timestamp", str(exc)))
    late = False
    seconds = 0.0 if moment is None else moment.timestamp()
    if moment is not None and not stamped:
        age = now - seconds
        if age < -FUTURE_TOLERANCE_SECONDS:
            problems.append(
                Problem(
                    f"{path}.timestamp",
                    f"is {-age:.0f} s in the future; Dodo allows at most {FUTURE_TOLERANCE_SECONDS:.0f} s. "
                    "Check this machine's clock (NTP) or the producer's",
                )
            )
        late = age > DODO_WINDOW_SECONDS
        if late and age > max_age:
            problems.append(Problem(f"{path}.timestamp", _too_old(given_timestamp, age, max_age)))

    if problems or moment is None:
        return None, problems
    return canonical_event(
        path, event_id, customer_id, event_name, moment, seconds, metadata, stamped, late, warnings
    )


def _age(seconds: float) -> str:
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:,.0f} days"


def _too_old(given: object, age: float, max_age: float) -> str:
    return (
        f"{given!r} is {_age(age)} old, older than [intake] max_event_age ({_age(max_age)}); Dodo "
        "refuses events more than 1 h old, and restamped they would be billed now, in the wrong "
        "period. Fix the producer's timestamp (or clock), or raise [intake] max_event_age to accept it"
    )


def validate(raw: object, now: float, path: str = "event", max_age: float = MAX_EVENT_AGE_SECONDS) -> Event:
    """Validate one event. Raises InvalidEventError listing every problem."""
    event, problems = check_event(raw, now, path, max_age)
    if event is None:
        raise InvalidEventError(problems)
    return event


def validate_many(
    raws: Iterable[object], now: float, path: str = "events", max_age: float = MAX_EVENT_AGE_SECONDS
) -> list[Event]:
    """Validate events; all or nothing. Raises InvalidEventError listing every problem of every event."""
    events: list[Event] = []
    problems: list[Problem] = []
    for index, raw in enumerate(raws):
        event, found = check_event(raw, now, f"{path}[{index}]", max_age)
        if event is None:
            problems.extend(found)
        else:
            events.append(event)
    if problems:
        raise InvalidEventError(problems)
    return events
