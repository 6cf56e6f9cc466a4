"""The status document: one dict that `dodo-outbox status --json` prints and `GET /v1/status` serves.

It reads only the outbox file, so it works whether or not the agent is running.

Public contract (monitoring scripts read these; add keys, never rename): `pending`, `inflight`,
`delivered`, `dead`, `oldest_pending_age_seconds`, `paused`, `paused_reason`, and since 0.1
`rates` (per window `5m` / `1h`), `top_dead_reasons` and `delivered_per_minute`; `meter_checks`
(with `meter_warnings` and `unmatched_by_name`) when built with the settings; `database` (dead
tuples and the oldest open transaction on PostgreSQL, null on SQLite) and `warnings` (sentences,
see agent/ops/dbhealth.py); since issue 14 `paused_kind` (`auth`, `not_found`, `no_key`), `paused_by`
(the agent that saw it) and `agents` (the fleet working on the outbox: agent/ops/fleet.py).
"""

from __future__ import annotations

import json
import time
from typing import Any

from agent.config import Settings
from agent.meters.report import status_section
from agent.ops import dbhealth
from agent.ops.fleet import agents_document
from agent.store import OutboxStore, WindowRates
from agent.timestamps import from_us, to_us

PAUSE_KEY = "delivery_paused"
WINDOWS: dict[str, int] = {"5m": 300, "1h": 3600}
"""The trailing windows rates are reported over: name → seconds."""
SPARKLINE_MINUTES = 60
DEFAULT_MAX_BACKLOG_AGE = 1800.0
"""`status --check` fails past 30 minutes: well before Dodo refuses events older than 1 hour."""


def _age_seconds(now: float, since_us: int | None) -> float | None:
    """Seconds from `since_us` to `now`, to the millisecond; None when there is no such row."""
    return None if since_us is None else round(max(0.0, now - from_us(since_us)), 3)


def build(
    store: OutboxStore,
    now: float | None = None,
    settings: Settings | None = None,
    limits: dbhealth.Limits = dbhealth.DEFAULT_LIMITS,
) -> dict[str, Any]:
    """Counts by state, the age of the oldest undelivered event, whether delivery is paused, delivery
    and success rates over the last 5 minutes and hour, the top dead-letter reasons and events
    delivered per minute over the last hour (oldest minute first). With `settings`, also
    `meter_checks`: the last hour's events that would not be billed, by reason and, for those no
    meter counts, by event name (see agent/meters/report.py). `database` and `warnings`: what
    threatens the claim on PostgreSQL, past `limits`."""
    now = time.time() if now is None else now
    now_us = to_us(now)
    counts = store.counts()
    oldest = store.oldest_pending_ts_us()
    waiting = store.oldest_pending_enqueued_us()
    paused = read_pause(store)
    rates = store.window_rates(now_us, tuple(WINDOWS.values()))
    vacuum = store.vacuum_health()
    return {
        "outbox": store.location,
        **counts,
        "total": sum(counts.values()),
        "oldest_pending_age_seconds": _age_seconds(now, oldest),
        "oldest_pending_wait_seconds": _age_seconds(now, waiting),
        "paused": paused is not None,
        "paused_reason": None if paused is None else paused.get("reason"),
        "paused_since": None if paused is None else paused.get("since"),
        "paused_kind": None if paused is None else paused.get("kind"),
        "paused_by": None if paused is None else paused.get("by"),
        "agents": agents_document(store),
        "rates": {name: rate_document(r) for name, r in zip(WINDOWS, rates, strict=True)},
        "top_dead_reasons": [{"reason": r, "count": n} for r, n in store.top_dead_reasons(5)],
        "delivered_per_minute": store.delivered_per_minute(now_us, minutes=SPARKLINE_MINUTES),
        "database": dbhealth.document(vacuum),
        "warnings": dbhealth.warnings(vacuum, limits),
        "generated_at": round(now, 3),
    } | ({} if settings is None else {"meter_checks": status_section(settings, store, now)})


def rate_document(rates: WindowRates) -> dict[str, Any]:
    """One window as JSON-ready data; ratios are None when nothing happened in the window."""
    return {
        "window_seconds": rates.seconds,
        "delivered": rates.delivered,
        "dead": rates.dead,
        "requests": rates.requests,
        "requests_ok": rates.requests_ok,
        "delivered_per_minute": round(rates.delivered * 60 / rates.seconds, 3),
        "delivery_success_ratio": _ratio(rates.delivery_success_ratio),
        "request_success_ratio": _ratio(rates.request_success_ratio),
    }


def _ratio(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def check(
    document: dict[str, Any],
    *,
    max_backlog_age: float | None = DEFAULT_MAX_BACKLOG_AGE,
    max_dead: int | None = None,
    min_success_rate: float | None = None,
    window: str = "1h",
) -> list[str]:
    """The thresholds a status document crosses, one sentence each; empty when all is well.

    A paused delivery always fails, and so does every database warning (dead tuples piling up, an
    old open transaction: see agent/ops/dbhealth.py). `min_success_rate` applies to the delivery
    success ratio of `window`; a window in which nothing settled passes (no evidence of failure).
    """
    failures: list[str] = []
    age = document.get("oldest_pending_age_seconds")
    if max_backlog_age is not None and age is not None and age > max_backlog_age:
        failures.append(
            f"oldest undelivered event is {age:.0f}s old, above --max-backlog-age {max_backlog_age:g}s "
            "(Dodo refuses timestamps older than 1 hour)"
        )
    if max_dead is not None and document["dead"] > max_dead:
        failures.append(f"{document['dead']} dead-lettered events, above --max-dead {max_dead}")
    ratio = document["rates"][window]["delivery_success_ratio"]
    if min_success_rate is not None and ratio is not None and ratio < min_success_rate:
        failures.append(
            f"delivery success rate over {window} is {ratio:.2%}, below --min-success-rate "
            f"{min_success_rate:g}"
        )
    if document["paused"]:
        failures.append(f"delivery is paused: {document['paused_reason']}")
    failures.extend(document.get("warnings", ()))
    return failures


def read_pause(store: OutboxStore) -> dict[str, Any] | None:
    """The delivery pause the worker recorded (reason, since), or None when delivery runs."""
    found = store.kv_get(PAUSE_KEY)
    if found is None or not found[0]:
        return None
    value: dict[str, Any] = json.loads(found[0])
    return value or None


def write_pause(
    store: OutboxStore, reason: str | None, now: float, kind: str | None = None, by: str | None = None
) -> None:
    """Record (reason) or clear (None) the delivery pause, for `status` in any process and for every
    agent of the fleet (agent/delivery/pause.py reads it on each tick).

    `kind` is a short code (`auth`, `not_found`, `no_key`) that becomes the `reason` label of the
    `dodo_outbox_delivery_paused` metric; `reason` is the sentence shown to people; `by` is the
    agent that saw it (its lease owner, `host:pid:random`).
    """
    record: dict[str, Any] = {"reason": reason, "since": round(now, 3)}
    if kind is not None:
        record["kind"] = kind
    if by is not None:
        record["by"] = by
    value = "" if reason is None else json.dumps(record)
    store.kv_set(PAUSE_KEY, value, to_us(now))
