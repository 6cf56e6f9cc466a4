"""The emulator's settings and meter definitions. Pure: reading ``meters_file`` is ``server.py``'s job."""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.emulator.meterfilter import check_filter

AGGREGATIONS = ("count", "sum", "max", "last")
BUSINESS_ID = "bus_emulator"  # the one business every event and meter of the emulator belongs to
EPOCH = "2025-01-01T00:00:00.000Z"  # created_at / updated_at of configured meters


@dataclass(frozen=True, slots=True)
class EmulatorConfig:
    """How the emulator starts. ``keys`` may write and read; ``read_only_keys`` read, and get 403 on ingest.

    ``meters`` (dicts with ``event_name`` and ``aggregation {type, key}``; ``id``, ``name``, ``filter``
    (Dodo's shape, checked by ``meterfilter.py`` and applied by ``GET /events?meter_id=``),
    ``archived`` get defaults) and ``meters_file`` (a JSON list of the same, loaded by ``server.py``)
    are combined. ``seed`` seeds the random fault draws.

    ``reject_event_ids`` (test-only, not part of Dodo's contract) is a regular expression: an event whose
    ``event_id`` matches it (``re.search``) is refused with 400, as Dodo refuses an event it finds
    invalid. It makes "poison" events that the agent's own validation accepts, for dead-letter tests.
    ``reject_customer_ids`` (test-only too) refuses, the same way, every event of those customers.
    """

    keys: Collection[str] = ("test_key",)
    read_only_keys: Collection[str] = ()
    window_seconds: float = 3600.0
    future_seconds: float = 300.0
    max_body_bytes: int = 5_000_000
    rate_limit: bool = True
    rate_per_second: float = 40.0
    rate_per_minute: float = 240.0
    meters: Collection[Mapping[str, Any]] = ()
    meters_file: str | Path | None = None
    timeout_sleep_seconds: float = 30.0
    seed: int | None = None
    reject_event_ids: str | None = None
    reject_customer_ids: Collection[str] = ()

    def __post_init__(self) -> None:
        for name in ("keys", "read_only_keys", "reject_customer_ids"):
            if isinstance(getattr(self, name), str):
                raise TypeError(f"{name}: expected a collection of strings, got a single string")
        for name in ("window_seconds", "future_seconds", "timeout_sleep_seconds"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be >= 0")
        if self.max_body_bytes <= 0:
            raise ValueError("max_body_bytes: must be > 0")
        if self.reject_event_ids is not None:
            try:
                re.compile(self.reject_event_ids)
            except re.error as exc:
                raise ValueError(f"reject_event_ids: not a regular expression ({exc})") from None


def normalize_meters(meters: Collection[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Check meter definitions and fill defaults. Raises ValueError naming the first bad meter."""
    result: list[dict[str, Any]] = []
    for index, spec in enumerate(meters):
        where = f"meters[{index}]"
        if not isinstance(spec, Mapping):
            raise ValueError(f"{where}: must be an object")
        meter = dict(spec)
        if not isinstance(meter.get("event_name"), str) or not meter["event_name"]:
            raise ValueError(f"{where}.event_name: required, a non-empty string")
        aggregation = meter.get("aggregation")
        if not isinstance(aggregation, Mapping) or aggregation.get("type") not in AGGREGATIONS:
            raise ValueError(f"{where}.aggregation.type: one of {', '.join(AGGREGATIONS)}")
        if aggregation["type"] != "count" and not isinstance(aggregation.get("key"), str):
            raise ValueError(f"{where}.aggregation.key: required for {aggregation['type']}")
        meter["aggregation"] = {"type": aggregation["type"], "key": aggregation.get("key")}
        if meter.get("filter") is not None:
            check_filter(meter["filter"], f"{where}.filter")
        # The fields the official SDK's Meter model requires, so it parses what GET /meters returns.
        defaults = {
            "id": f"mtr_emulator_{index}",
            "business_id": BUSINESS_ID,
            "name": meter["event_name"],
            "description": None,
            "measurement_unit": "units",
            "filter": None,
            "created_at": EPOCH,
            "updated_at": EPOCH,
            "archived": False,
        }
        meter = defaults | meter
        result.append(meter)
    return result
