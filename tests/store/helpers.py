"""Events and microsecond times for the conformance suite."""

from __future__ import annotations

import time

from agent.events import Event, validate_many
from agent.timestamps import US, to_us

NOW = time.time()
NOW_US = to_us(NOW)
BIG = 10**6
"""A byte budget no test reaches."""
LEASE = 30 * US

__all__ = ["BIG", "LEASE", "NOW", "NOW_US", "US", "events"]


def events(*ids: str, now: float = NOW, **meta: object) -> list[Event]:
    """Valid events with these ids, stamped `now` (no timestamp given), metadata `meta`."""
    return validate_many(
        [
            {"event_id": i, "customer_id": "cus_1", "event_name": "api.call", "metadata": meta or None}
            for i in ids
        ],
        now,
    )
