"""Builders for outbox rows in a chosen state, for the operations tests (dlq, status, metrics, retention).

Rows are made through the store's own transitions (insert → claim → mark_*), so they look exactly like
rows the worker leaves behind. Claims take every due pending row: add pending rows last.
"""

from __future__ import annotations

import time
from typing import Any

from agent.events import Event, validate_many
from agent.store import OutboxStore

US = 1_000_000
NOW = time.time()
"""The tests' "now". tests/conftest.py resets it (here and in the module that imported it) to the
wall clock before each test: the commands under test read the real clock, and a suite on a busy
machine runs minutes after this module was imported."""
OWNER = "ops-test"


def us(seconds: float) -> int:
    return int(seconds * US)


def evs(ids: list[str], ts: float, **metadata: Any) -> list[Event]:
    """Events stamped at `ts` (no timestamp given: validation stamps them `ts`)."""
    raws = [
        {"event_id": i, "customer_id": "cus_1", "event_name": "api.call", "metadata": metadata or None}
        for i in ids
    ]
    return validate_many(raws, ts)


def add_pending(
    store: OutboxStore, ids: list[str], *, now: float | None = None, ts: float | None = None, **meta: Any
) -> None:
    now = NOW if now is None else now
    store.insert_groups([(evs(ids, now if ts is None else ts, **meta), "cli")], us(now))


def _claim(store: OutboxStore, ids: list[str], now: float) -> list[int]:
    claimed = store.claim(now_us=us(now), limit=1000, max_bytes=1 << 30, lease_us=60 * US, owner=OWNER)
    assert sorted(c.event_id for c in claimed) == sorted(ids), "add pending rows last"
    return [c.id for c in claimed]


def add_dead(
    store: OutboxStore,
    ids: list[str],
    *,
    now: float | None = None,
    ts: float | None = None,
    reason: str = "rejected",
    status: int | None = 400,
    response: str = '{"code":"BAD_REQUEST","message":"metadata.note too long"}',
    **meta: Any,
) -> None:
    now = NOW if now is None else now
    add_pending(store, ids, now=now, ts=ts, **meta)
    assert store.mark_dead(
        _claim(store, ids, now),
        owner=OWNER,
        now_us=us(now),
        reason=reason,
        http_status=status,
        response=response,
    ) == len(ids)


def add_delivered(
    store: OutboxStore, ids: list[str], *, now: float | None = None, ts: float | None = None, **meta: Any
) -> None:
    now = NOW if now is None else now
    add_pending(store, ids, now=now, ts=ts, **meta)
    assert store.mark_delivered(_claim(store, ids, now), owner=OWNER, now_us=us(now)) == len(ids)


def state_of(store: OutboxStore, event_id: str) -> str:
    record = store.get(event_id)
    assert record is not None
    return record.state
