"""The index of the emulator's admin API, answered by ``GET /_emulator/`` and shown in the README.

One entry per route: ``method``, ``path``, ``body`` (an example request body, ``None`` when the route
takes none) and ``does``. Every admin route is keyless, never rate limited, takes and returns JSON, and
answers 400 ``{"code": "BAD_REQUEST", "message"}`` for a body it cannot use. The README's table is
checked against this list (tests/test_fake_dodo_cli.py), so keep both in step.
"""

from __future__ import annotations

from typing import Any

FAULTS_EXAMPLE: dict[str, Any] = {
    "error_rates": {"503": 0.2},
    "timeout_rate": 0.0,
    "drop_rate": 0.0,
    "ack_lost_rate": 0.0,
    "latency_ms": 0,
    "script": [503, "drop", "timeout", "ack_lost", 200],
    "outage_seconds": 0,
    "retry_after_seconds": 1,
    "timeout_sleep_seconds": 30,
    "seed": 1,
}

ADMIN_ROUTES: tuple[dict[str, Any], ...] = (
    {"method": "GET", "path": "/_emulator/", "body": None, "does": "this index"},
    {
        "method": "GET",
        "path": "/_emulator/stats",
        "body": None,
        "does": "counters: requests, requests_by_status, events_received, events_stored, "
        "duplicates_ignored, rejected_requests, faults_injected",
    },
    {
        "method": "GET",
        "path": "/_emulator/events",
        "body": None,
        "does": 'every stored event: {"items": [...], "count": N}',
    },
    {
        "method": "GET",
        "path": "/_emulator/log",
        "body": None,
        "does": 'one entry per ingest request: {"items": [...]}',
    },
    {"method": "GET", "path": "/_emulator/faults", "body": None, "does": "the fault plan in force"},
    {
        "method": "POST",
        "path": "/_emulator/faults",
        "body": FAULTS_EXAMPLE,
        "does": "replace the fault plan whole (every field optional; rates sum to at most 1); "
        "answers the new plan",
    },
    {"method": "DELETE", "path": "/_emulator/faults", "body": None, "does": "clear the fault plan"},
    {
        "method": "POST",
        "path": "/_emulator/reset",
        "body": None,
        "does": "back to the start: no events, stats or faults; the configured keys, meters and clock",
    },
    {
        "method": "POST",
        "path": "/_emulator/keys",
        "body": {"keys": ["test_key"], "read_only_keys": ["read_key"]},
        "does": "replace the keys (read_only_keys optional: they read, and get 403 on ingest)",
    },
    {
        "method": "GET",
        "path": "/_emulator/clock",
        "body": None,
        "does": 'the clock: {"offset_seconds", "now"}',
    },
    {
        "method": "POST",
        "path": "/_emulator/clock",
        "body": {"offset_seconds": 3600},
        "does": "shift the clock of the timestamp window (0 undoes it)",
    },
    {
        "method": "POST",
        "path": "/_emulator/meters",
        "body": {"meters": [{"event_name": "api.call", "aggregation": {"type": "count"}}]},
        "does": "replace the meters (each as in a --meters file)",
    },
)


def index() -> dict[str, Any]:
    """The document of ``GET /_emulator/``: ``{"routes": [...]}``."""
    return {"routes": [dict(route) for route in ADMIN_ROUTES]}
