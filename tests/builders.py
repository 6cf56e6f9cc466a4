"""Builders the test modules share: events, worker settings and workers against the emulator.

The fixtures built on them (`store`, `outbox`, `fake`, `worker`) are in tests/conftest.py.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from agent.config import DeliverySettings, DodoSettings, Settings
from agent.delivery.client import DodoClient
from agent.delivery.worker import Worker
from agent.events import Event, validate
from agent.store import OutboxStore, Store

KEY = "test_key"
"""The API key the `fake` emulator accepts (a module may set its own KEY)."""
FAST = {
    "backoff_initial_seconds": 0.01,
    "backoff_max_seconds": 0.05,
    "requests_per_minute": 0.0,
    "auth_retry_seconds": 30.0,
    "timeout_seconds": 5.0,
}
"""Delivery settings for tests: short backoffs, pacing off."""


def raw_event(event_id: str = "e1", **fields: Any) -> dict[str, Any]:
    """An event as a producer sends it: `customer_id` cus_1, `event_name` api.call, plus `fields`."""
    return {"event_id": event_id, "customer_id": "cus_1", "event_name": "api.call", **fields}


def stored_event(i: int, ts: float | None = None, prefix: str = "e", **metadata: Any) -> Event:
    """A validated Event `{prefix}{i:05d}` (timestamp `ts`, default now), ready for Store.insert_groups."""
    now = time.time()
    raw: dict[str, Any] = {"event_id": f"{prefix}{i:05d}", "customer_id": "cus_1", "event_name": "api.call"}
    raw["timestamp"] = datetime.fromtimestamp(now if ts is None else ts, UTC)
    if metadata:
        raw["metadata"] = metadata
    return validate(raw, now)


def make_settings(url: str, **delivery: Any) -> Settings:
    return Settings(dodo=DodoSettings(base_url=url), delivery=DeliverySettings(**{**FAST, **delivery}))


def make_worker(
    store: OutboxStore, settings: Settings, environ: dict[str, str] | None = None, **kw: Any
) -> Worker:
    env = {"DODO_PAYMENTS_API_KEY": KEY} if environ is None else environ
    return Worker(store, settings, DodoClient.from_settings(settings), environ=env, **kw)


def sqlite_of(store: OutboxStore) -> Store:
    """The SQLite store behind `store`, for tests that read the outbox file's tables directly."""
    assert isinstance(store, Store), f"this test reads SQLite tables; the store is {type(store).__name__}"
    return store
