"""Meters: will Dodo bill this event, what should a meter add up to, and does Dodo agree?

`rules` (pure checks of one event), `filters` (Dodo's filter shape, read and evaluated), `checker`
(the enqueue-time hook), `pull` (reading Dodo: GET /meters and paced GETs), `preview` (what each
meter adds up to over the outbox) and `reconcile` (the outbox against Dodo's own list).
"""

from agent.meters.checker import MeterChecker, build_checker, known_meters
from agent.meters.filters import ASSUMPTIONS, Filter, FilterError, parse_filter
from agent.meters.pull import MAX_PAGES, PAGE_SIZE, dodo_client, fetch_meters, paced_get
from agent.meters.rules import (
    Finding,
    Meter,
    MeterIndex,
    Reason,
    billing_findings,
    check_name,
    check_value,
    meter_from_api,
    meter_from_row,
    meter_from_spec,
    meter_to_row,
    value_finding,
)

__all__ = [
    "ASSUMPTIONS",
    "MAX_PAGES",
    "PAGE_SIZE",
    "Filter",
    "FilterError",
    "Finding",
    "Meter",
    "MeterChecker",
    "MeterIndex",
    "Reason",
    "billing_findings",
    "build_checker",
    "check_name",
    "check_value",
    "dodo_client",
    "fetch_meters",
    "known_meters",
    "meter_from_api",
    "meter_from_row",
    "meter_from_spec",
    "meter_to_row",
    "paced_get",
    "parse_filter",
    "value_finding",
]
