"""Durations and points in time as operators type them: `7d`, `12h`, `30m`, `1h30m`, or ISO 8601.

Shared by the CLI (`dlq purge --older-than 7d`, `dlq list --since 2h`) and the HTTP `/v1/dlq` routes.
No I/O, no clock: callers pass `now`.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from agent.timestamps import to_us

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_SECONDS = re.compile(r"\d+(?:\.\d+)?")


def parse_duration(text: str) -> float:
    """`45s`, `30m`, `12h`, `7d`, `2w` or a sequence such as `1h30m`, in seconds.

    Raises ValueError naming the accepted forms.
    """
    compact = re.sub(r"\s+", "", text).lower()
    parts = _PART.findall(compact)
    if not parts or "".join(n + u for n, u in parts) != compact:
        raise ValueError(f"{text!r} is not a duration; use e.g. 7d, 12h, 30m or 1h30m")
    return sum(float(n) * _UNITS[u] for n, u in parts)


def parse_since(text: str, now: float) -> int:
    """A duration ago (`2h`: since two hours before `now`; a bare number is seconds) or an ISO 8601
    date-time (naive = UTC), as microseconds since the epoch. Raises ValueError naming the forms.

    The one reading of `--since` for every command (`dlq`, `meters check`, `verify`, `billing`) and
    for `/v1/dlq?since=`; a caller wanting seconds converts with `timestamps.from_us`.
    """
    if _SECONDS.fullmatch(text.strip()):
        return to_us(now - float(text))
    try:
        return to_us(now - parse_duration(text))
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a duration (90s, 30m, 2h, 7d, 1h30m) "
            "nor an ISO 8601 date-time (2026-01-31T12:00:00Z)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return to_us(moment.timestamp())
