"""Event timestamps: parsing ISO 8601 / RFC 3339, one canonical spelling per instant, and cutting the
timestamp off a canonical payload (restamping). No I/O.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime


def format_timestamp(moment: datetime) -> str:
    """ISO 8601 in UTC with a `Z`, microseconds only when non-zero: one spelling per instant."""
    text = moment.astimezone(UTC).replace(tzinfo=None).isoformat()
    return text + "Z"


_second_text: tuple[int, str] = (-1, "")
"""The last whole second formatted by `canonical_timestamp` (events come in bursts within a second)."""


def canonical_timestamp(moment: datetime, ts_us: int) -> str:
    """`format_timestamp(moment)` for an aware UTC datetime, with its epoch microseconds `ts_us`.

    Formatting a datetime costs ~2 us (astimezone, replace, isoformat), a fifth of validating an
    event; the text of the whole second is cached instead and the microseconds appended. The fast path
    is taken only when `ts_us` provably names the same instant (its microseconds match the datetime's;
    floats of epoch seconds are exact to the microsecond from 1970 to 2038), else it falls back.
    """
    global _second_text
    second, micros = divmod(ts_us, 1_000_000)
    if micros != moment.microsecond or not 0 <= second < 1 << 31:
        return format_timestamp(moment)
    cached_second, text = _second_text
    if cached_second != second:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _second_text = (second, text)  # one tuple, swapped whole: safe between threads
    return f"{text}.{micros:06d}Z" if micros else text + "Z"


def strip_timestamp(payload: str) -> str:
    """Cut the trailing `"timestamp"` member off a canonical payload (it is always the last key).

    The last occurrence is the real one: sorted keys put `timestamp` after `metadata`, and a timestamp
    contains no quote, so nothing can follow it but the closing brace.
    """
    cut = payload.rfind(',"timestamp":"')
    if cut < 0 or not payload.endswith('"}'):
        raise ValueError("payload is not canonical: timestamp is not its last member")
    return payload[:cut] + "}"


def payload_timestamp(payload: str) -> str:
    """The timestamp text of a canonical payload (its last member)."""
    cut = payload.rfind(',"timestamp":"')
    if cut < 0 or not payload.endswith('"}'):
        raise ValueError("payload is not canonical: timestamp is not its last member")
    return payload[cut + len(',"timestamp":"') : -2]


def parse_timestamp(value: object) -> datetime:
    """Read an ISO 8601 / RFC 3339 string (or a datetime) as an aware UTC datetime.

    Naive values are read as UTC, as the official SDK sends them. Raises ValueError with a reason.
    """
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        text = value.strip()
        if text != value or not text:
            raise ValueError("must be an ISO 8601 date-time without surrounding spaces")
        if text[-1] in "zZ":
            text = text[:-1] + "+00:00"
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(
                f"{value!r} is not an ISO 8601 date-time; use e.g. 2026-01-31T12:00:00Z"
            ) from None
        if "T" not in text and " " not in text:
            raise ValueError(f"{value!r} is a date without a time; use e.g. {text}T00:00:00Z")
    else:
        raise ValueError(
            f"must be an ISO 8601 string such as 2026-01-31T12:00:00Z, not {type(value).__name__}"
        )
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"{value!r} is outside the range of dates Dodo can bill") from None


US = 1_000_000
"""Microseconds per second: the outbox stores every instant as integer microseconds since the epoch."""


def to_us(seconds: float) -> int:
    """Epoch seconds (or a duration in seconds) as whole microseconds, truncated like `int()`."""
    return int(seconds * US)


def from_us(us: int) -> float:
    """Microseconds since the epoch (or a duration in microseconds) as seconds."""
    return us / US
