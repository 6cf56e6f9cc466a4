"""Meter rules: will Dodo bill this event? Pure functions over meters and one event's fields.

Dodo accepts an event whose name matches no meter, or whose aggregated key is missing or a string,
and never bills it. The rules here flag each case, naming the meter and the fix:

- `no_meter`: no meter has this event_name (names are case-sensitive);
- `case_mismatch`: a meter matches only case-insensitively (the message names the one it probably meant);
- `missing_key`: a sum/max/last meter's key is absent from the metadata;
- `string_key`: the key is there as a string (`"150"`), which a meter cannot aggregate;
- `not_a_number`: the key is there as a boolean.

An event its meter's filter excludes is not flagged: the filter excludes it on purpose.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import orjson

from agent.config import MeterSpec
from agent.errors import DeliveryError
from agent.meters.filters import Filter, FilterError, parse_filter
from agent.store import MeterRow


class Reason(StrEnum):
    """Why an event would not be billed (by one meter, or by any)."""

    NO_METER = "no_meter"
    CASE_MISMATCH = "case_mismatch"
    MISSING_KEY = "missing_key"
    STRING_KEY = "string_key"
    NOT_A_NUMBER = "not_a_number"


@dataclass(frozen=True, slots=True)
class Meter:
    """A meter as the checks need it. `key` is the aggregated metadata key (None for count)."""

    event_name: str
    aggregation: str
    key: str | None = None
    name: str | None = None
    meter_id: str | None = None
    filter: Any = None
    """The filter in Dodo's shape (JSON-ready), or None; `compiled` is it parsed, set from it."""
    compiled: Filter | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.filter is not None and self.compiled is None:
            object.__setattr__(self, "compiled", parse_filter(self.filter, strict=False))

    def passes(self, metadata: Mapping[str, object]) -> bool:
        """Whether the meter's filter lets this metadata through (True without a filter)."""
        return self.compiled is None or self.compiled.matches(metadata)

    @property
    def label(self) -> str:
        return self.name or self.meter_id or self.event_name

    @property
    def aggregated_key(self) -> str | None:
        """The key whose value must be a number, or None (count meters need no key)."""
        return None if self.aggregation == "count" else self.key


@dataclass(frozen=True, slots=True)
class Finding:
    """One reason an event (or a name) would not be billed, with the meter concerned and the fix."""

    reason: Reason
    event_name: str
    message: str
    meter: str | None = None
    key: str | None = None
    suggestion: str | None = None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def meter_from_api(item: object) -> Meter:
    """A meter from one `GET /meters` item. Raises DeliveryError when it has no event_name."""
    if not isinstance(item, Mapping) or not isinstance(item.get("event_name"), str):
        raise DeliveryError(f"GET /meters returned a meter without an event_name: {item!r}")
    aggregation = item.get("aggregation") or {}
    if not isinstance(aggregation, Mapping):
        raise DeliveryError(f"GET /meters returned a meter without an aggregation: {item!r}")
    kind, key = _text(aggregation.get("type")) or "count", _text(aggregation.get("key"))
    name, meter_id = _text(item.get("name")), _text(item.get("id"))
    try:
        return Meter(item["event_name"], kind, key, name, meter_id, item.get("filter"))
    except FilterError as exc:
        raise DeliveryError(
            f"GET /meters returned meter {name or meter_id!r} with a filter we cannot read: {exc}"
        ) from None


def meter_from_row(row: MeterRow) -> Meter:
    filter_value = orjson.loads(row.filter) if row.filter else None
    aggregation = row.aggregation or "count"
    return Meter(row.event_name, aggregation, row.aggregation_key, row.name, row.meter_id, filter_value)


def meter_to_row(meter: Meter, index: int, now_us: int) -> MeterRow:
    meter_id = meter.meter_id or f"unnamed_{index}"
    filter_text = None if meter.filter is None else orjson.dumps(meter.filter).decode()
    return MeterRow(meter_id, meter.event_name, meter.name, meter.aggregation, meter.key, filter_text, now_us)


def meter_from_spec(spec: MeterSpec, index: int) -> Meter:
    return Meter(spec.event_name, spec.aggregation, spec.key, spec.name, f"config:{index + 1}", spec.filter)


class MeterIndex:
    """Meters by exact event_name and by lower-cased name, for per-event lookups."""

    def __init__(self, meters: Iterable[Meter]) -> None:
        self.meters = tuple(meters)
        self.by_name: dict[str, list[Meter]] = {}
        self.by_lower: dict[str, list[str]] = {}
        for meter in self.meters:
            self.by_name.setdefault(meter.event_name, []).append(meter)
            names = self.by_lower.setdefault(meter.event_name.lower(), [])
            if meter.event_name not in names:
                names.append(meter.event_name)


def check_name(index: MeterIndex, event_name: str) -> Finding | None:
    """`no_meter` or `case_mismatch` for a name no meter matches exactly; None when one does."""
    if event_name in index.by_name:
        return None
    meant = index.by_lower.get(event_name.lower())
    if meant:
        return Finding(
            Reason.CASE_MISMATCH,
            event_name,
            f"event_name {event_name!r} matches no meter exactly (Dodo compares names case-sensitively); "
            f"it probably meant {meant[0]!r}",
            suggestion=meant[0],
        )
    close = difflib.get_close_matches(event_name, list(index.by_name), n=1)
    hint = f"; the closest meter's event name is {close[0]!r}" if close else ""
    return Finding(
        Reason.NO_METER,
        event_name,
        f"no meter counts event_name {event_name!r}: Dodo accepts it but never bills it{hint}. "
        "Create a meter for it in Dodo (then `dodo-outbox meters pull`) or fix the name",
        suggestion=close[0] if close else None,
    )


def value_finding(meter: Meter, event_name: str, reason: Reason, value: object = None) -> Finding:
    """The finding for a key problem of `meter`; `value` (the offending value) is shown when given."""
    key = meter.aggregated_key
    what = f"meter {meter.label!r} ({meter.aggregation} over {key!r})"
    shown = "" if value is None else f" = {value!r}"
    message = {
        Reason.MISSING_KEY: f"{what} ignores events without metadata.{key}; add it as a number",
        Reason.STRING_KEY: f"{what} cannot aggregate metadata.{key}{shown}, a string; send the number "
        f"itself ('{key}': 150, not '150')",
        Reason.NOT_A_NUMBER: f"{what} cannot aggregate metadata.{key}{shown}, not a number; send a number",
    }[reason]
    return Finding(reason, event_name, message, meter.label, key)


def check_value(meter: Meter, event_name: str, metadata: Mapping[str, object]) -> Finding | None:
    """Whether `meter` can aggregate this metadata: None, or missing_key / string_key / not_a_number."""
    key = meter.aggregated_key
    if key is None:
        return None
    if key not in metadata:
        return value_finding(meter, event_name, Reason.MISSING_KEY)
    value = metadata[key]
    if isinstance(value, str):
        return value_finding(meter, event_name, Reason.STRING_KEY, value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return value_finding(meter, event_name, Reason.NOT_A_NUMBER, value)
    return None


def billing_findings(index: MeterIndex, event_name: str, metadata: Mapping[str, object]) -> list[Finding]:
    """Every reason one event would not be billed, by any meter of its name whose filter lets it
    through; empty when all of those count it (or every filter excludes it, on purpose)."""
    name_finding = check_name(index, event_name)
    if name_finding is not None:
        return [name_finding]
    meters = (meter for meter in index.by_name[event_name] if meter.passes(metadata))
    found = (check_value(meter, event_name, metadata) for meter in meters)
    return [f for f in found if f is not None]
