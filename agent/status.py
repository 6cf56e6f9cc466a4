"""The status document: one dict that `dodo-outbox status --json` prints and `GET /v1/status` serves.

It reads only the outbox file, so it works whether or not the agent is running.
"""

from __future__ import annotations

import json
import time
from typing import Any

from agent.store import Store

PAUSE_KEY = "delivery_paused"


def build(store: Store, now: float | None = None) -> dict[str, Any]:
    """Counts by state, the age of the oldest undelivered event and whether delivery is paused."""
    now = time.time() if now is None else now
    counts = store.counts()
    oldest = store.oldest_pending_ts_us()
    waiting = store.oldest_pending_enqueued_us()
    paused = read_pause(store)
    return {
        "outbox": str(store.path),
        **counts,
        "total": sum(counts.values()),
        "oldest_pending_age_seconds": None if oldest is None else round(max(0.0, now - oldest / 1e6), 3),
        "oldest_pending_wait_seconds": None if waiting is None else round(max(0.0, now - waiting / 1e6), 3),
        "paused": paused is not None,
        "paused_reason": None if paused is None else paused.get("reason"),
        "paused_since": None if paused is None else paused.get("since"),
        "generated_at": round(now, 3),
    }


def read_pause(store: Store) -> dict[str, Any] | None:
    """The delivery pause the worker recorded (reason, since), or None when delivery runs."""
    found = store.kv_get(PAUSE_KEY)
    if found is None or not found[0]:
        return None
    value: dict[str, Any] = json.loads(found[0])
    return value or None


def write_pause(store: Store, reason: str | None, now: float) -> None:
    """Record (reason) or clear (None) the delivery pause, for `status` in any process."""
    value = "" if reason is None else json.dumps({"reason": reason, "since": round(now, 3)})
    store.kv_set(PAUSE_KEY, value, int(now * 1_000_000))
