"""What each meter should add up to, per customer, over the outbox's events: `meters preview`.

Pure: rows come in (event name, event time, payload), totals go out as the JSON document of the
issue's contract. The store streams the rows (`OutboxStore.billable_rows`); nothing here does I/O.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from agent.meters.filters import ASSUMPTIONS as FILTER_ASSUMPTIONS
from agent.meters.rules import Meter, MeterIndex, check_name

AGGREGATION_ASSUMPTIONS = (
    "count counts the events its event name and filter let through",
    'sum and max skip events whose key is missing or not a number (a string "150" or a boolean); '
    "they are counted under skipped, by reason",
    "last is the value of the counted event with the latest event timestamp, not the latest to arrive "
    "(on a tie, the later arrival)",
    "the range is by event time (the event's timestamp), from inclusive, until exclusive; dead events "
    "are not billed and not counted",
)
ASSUMPTIONS = (*FILTER_ASSUMPTIONS, *AGGREGATION_ASSUMPTIONS)

Number = int | float
_MISSING = object()
_EMPTY: Mapping[str, object] = {}


def is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(slots=True)
class CustomerTotal:
    """One customer's total under one meter. `value` is None until a value is counted (max, last)."""

    events: int = 0
    value: Number | None = None
    last_ts_us: int = -1


@dataclass(slots=True)
class MeterTotals:
    meter: Meter
    customers: dict[str, CustomerTotal] = field(default_factory=dict)
    excluded_by_filter: int = 0
    skipped: Counter[str] = field(default_factory=Counter)

    def add(self, customer_id: str, ts_us: int, metadata: Mapping[str, object]) -> bool:
        """Count one event of this meter's name; True when it was counted (not excluded, not skipped).

        The preview's inner loop: it runs once per event and meter, so it reads plain attributes."""
        meter = self.meter
        compiled = meter.compiled
        if compiled is not None and not compiled.predicate(metadata):
            self.excluded_by_filter += 1
            return False
        total = self.customers.get(customer_id)
        kind = meter.aggregation
        if kind == "count":
            if total is None:
                total = self.customers[customer_id] = CustomerTotal(value=0)
            total.events += 1
            total.value = total.events
            return True
        value = metadata.get(meter.key or "", _MISSING)
        if type(value) is not int and type(value) is not float:  # a bool is not a number here
            self.skipped["missing_key" if value is _MISSING else "not_a_number"] += 1
            return False
        number: Number = value
        if total is None:
            total = self.customers[customer_id] = CustomerTotal()
        total.events += 1
        current = total.value
        if kind == "sum":
            total.value = number if current is None else current + number
        elif kind == "max":
            if current is None or number > current:
                total.value = number
        elif ts_us >= total.last_ts_us:  # last: rows arrive in event-time order, ties by arrival
            total.value, total.last_ts_us = number, ts_us
        return True

    def document(self) -> dict[str, Any]:
        meter = self.meter
        customers = {c: {"events": t.events, "value": t.value} for c, t in sorted(self.customers.items())}
        skipped = {"missing_key": self.skipped["missing_key"], "not_a_number": self.skipped["not_a_number"]}
        return {
            "name": meter.label,
            "event_name": meter.event_name,
            "aggregation": meter.aggregation,
            "key": meter.aggregated_key,
            "customers": customers,
            "excluded_by_filter": self.excluded_by_filter,
            "skipped": skipped,
        }


class Preview:
    """Totals over events fed with `add_row` (or `add`), for `meters` (all shown when `shown` is None).

    Unmatched names are judged against every meter in `meters`: with `--meter`, an event another
    meter counts is not "unmatched". `customer` keeps one customer's events only.
    """

    def __init__(
        self, meters: Sequence[Meter], *, shown: Sequence[Meter] | None = None, customer: str | None = None
    ) -> None:
        self.index = MeterIndex(meters)
        self.customer = customer
        self.totals = [MeterTotals(m) for m in (meters if shown is None else shown)]
        self._by_name: dict[str, list[MeterTotals]] = {}
        for totals in self.totals:
            self._by_name.setdefault(totals.meter.event_name, []).append(totals)
        self.unmatched: Counter[str] = Counter()

    def add_row(self, event_name: str, ts_us: int, payload: str) -> None:
        """One stored row. Only rows a shown meter (or the customer filter) needs are decoded."""
        targets = self._by_name.get(event_name)
        if targets is None:
            if event_name in self.index.by_name:
                return  # a meter that is not shown counts it
            if self.customer is None:
                self.unmatched[event_name] += 1
                return
        event = orjson.loads(payload)
        customer_id = event.get("customer_id", "")
        if self.customer is not None and customer_id != self.customer:
            return
        if targets is None:
            self.unmatched[event_name] += 1
            return
        metadata = event.get("metadata") or _EMPTY
        for totals in targets:
            totals.add(customer_id, ts_us, metadata)

    def add(self, event_name: str, ts_us: int, customer_id: str, metadata: Mapping[str, object]) -> None:
        if self.customer is not None and customer_id != self.customer:
            return
        targets = self._by_name.get(event_name)
        if targets is None:
            if event_name not in self.index.by_name:
                self.unmatched[event_name] += 1
            return
        for totals in targets:
            totals.add(customer_id, ts_us, metadata)

    def add_rows(self, rows: Iterable[tuple[str, str, int, str, int, str]]) -> None:
        """Rows as `OutboxStore.billable_rows` yields them."""
        for _event_id, event_name, ts_us, _state, _restamped, payload in rows:
            self.add_row(event_name, ts_us, payload)

    def document(self, from_iso: str, until_iso: str) -> dict[str, Any]:
        """The `meters preview --json` document."""
        return {
            "from": from_iso,
            "until": until_iso,
            "meters": [totals.document() for totals in self.totals],
            "unmatched": dict(sorted(self.unmatched.items(), key=lambda item: (-item[1], item[0]))),
            "assumptions": list(ASSUMPTIONS),
        }

    def hints(self) -> dict[str, str]:
        """For each unmatched name, why no meter counts it and the closest meter's name."""
        hints: dict[str, str] = {}
        for name in self.unmatched:
            finding = check_name(self.index, name)
            if finding is not None:
                hints[name] = finding.message
        return hints
