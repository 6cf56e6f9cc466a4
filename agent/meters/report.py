"""Reports over the outbox's recent events against the known meters: `meters check` and `status`.

Pure logic over the store's per-name statistics (`OutboxStore.recent_events_by_name`) and the rules of
`agent.meters`; the only I/O is the read-only query `status_section` runs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from agent.config import Settings
from agent.meters import Finding, Meter, MeterIndex, Reason, check_name, known_meters, value_finding
from agent.store import NameStats, OutboxStore
from agent.timestamps import to_us


def report(stats: Sequence[NameStats], meters: Sequence[Meter]) -> list[dict[str, Any]]:
    """`meters check`: per recent event name, how many events each problem hits. JSON-ready.

    Each entry: `event_name`, `events`, `billable` (False when any event would not be billed by some
    meter of its name), `problems` (reason, meter, key, events, example_event_id: an event with that
    very reason, message).
    """
    index = MeterIndex(meters)
    entries: list[dict[str, Any]] = []
    for name in stats:
        problems: list[dict[str, Any]] = []
        finding = check_name(index, name.event_name)
        if finding is not None:
            problems.append(_problem(finding, name.events, name.example_event_id))
        by_key = {k.key: k for k in name.keys}
        for meter in index.by_name.get(name.event_name, []):
            seen = by_key.get(meter.aggregated_key or "")
            if seen is None:
                continue
            for reason, count, example in (
                (Reason.MISSING_KEY, seen.missing, seen.example_missing),
                (Reason.STRING_KEY, seen.strings, seen.example_string),
                (Reason.NOT_A_NUMBER, seen.not_numbers, seen.example_not_number),
            ):
                if count:
                    finding = value_finding(meter, name.event_name, reason)
                    problems.append(_problem(finding, count, example))
        entries.append(
            {
                "event_name": name.event_name,
                "events": name.events,
                "billable": not problems,
                "problems": problems,
            }
        )
    return entries


def _problem(finding: Finding, events: int, example: str | None) -> dict[str, Any]:
    return {
        "reason": str(finding.reason),
        "meter": finding.meter,
        "key": finding.key,
        "events": events,
        "example_event_id": example,
        "suggestion": finding.suggestion,
        "message": finding.message,
    }


def keys_by_name(meters: Sequence[Meter]) -> dict[str, list[str]]:
    """The aggregated keys to inspect for each event name (for `OutboxStore.recent_events_by_name`)."""
    keys: dict[str, list[str]] = {}
    for meter in meters:
        key = meter.aggregated_key
        if key is not None and key not in keys.setdefault(meter.event_name, []):
            keys[meter.event_name].append(key)
    return keys


def status_section(
    settings: Settings, store: OutboxStore, now: float, window_seconds: float = 3600.0
) -> dict[str, Any]:
    """The `meter_checks` section of `status` for any process: recent events (last `window_seconds`)
    that would not be billed, by reason (`meter_warnings`), and the events no meter counts, by
    event name (`unmatched_by_name`), computed from the outbox file and the known meters."""
    meters = known_meters(settings, store)
    section: dict[str, Any] = {
        "enabled": settings.meter_checks.enabled,
        "strict_meters": settings.meter_checks.strict_meters,
        "meters_known": None if meters is None else len(meters),
        "meters_pulled_at": store.meters_pulled_at_us(),
        "meter_warnings": {},
        "unmatched_by_name": {},
    }
    if meters is None:
        return section
    since_us = to_us(now - window_seconds)
    warnings: Counter[str] = Counter()
    unmatched: dict[str, int] = {}
    for entry in report(store.recent_events_by_name(since_us, keys_by_name(meters)), meters):
        for problem in entry["problems"]:
            warnings[problem["reason"]] += problem["events"]
            if problem["reason"] in (Reason.NO_METER, Reason.CASE_MISMATCH):
                unmatched[entry["event_name"]] = problem["events"]
    section["meter_warnings"] = dict(warnings)
    section["unmatched_by_name"] = unmatched
    return section
