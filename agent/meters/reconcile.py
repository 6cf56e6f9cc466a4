"""The outbox against Dodo's own list of what each meter counts: `dodo-outbox reconcile`.

Per pulled meter (it needs Dodo's meter id): the delivered events whose event time falls in the range
and that the meter's event name and filter let through (our reading), against
`GET /events?meter_id=…&start=…&end=…` (Dodo's reading), paged by hand from 0 until an empty page.
Each id on one side only gets its likely reason.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx
import orjson

from agent.delivery.pacing import TokenBucket
from agent.errors import DeliveryError
from agent.meters.pull import MAX_PAGES, PAGE_SIZE, paced_get
from agent.meters.rules import Meter
from agent.store import RangeRow
from agent.timestamps import format_timestamp, parse_timestamp, to_us

MAX_LOOKUPS = 50
"""Ids delivered here that Dodo's meter does not list are each read back (GET /events/{id}) to tell
the reasons apart; beyond this many the rest are reported as `unchecked`, to spare the rate budget."""

ASSUMPTIONS = (
    "Dodo's start/end are read as event time; the request's end is one microsecond before --until, "
    "so both sides use the same range (Dodo does not document it)",
    "only delivered events are compared: pending ones are not at Dodo yet",
)

REASONS = {
    "not_in_outbox": "Dodo has it, the outbox never had it (sent by another sender, or pruned by retention)",
    "not_delivered": "the outbox has it but not as delivered (still pending or in flight, or dead)",
    "filter": "the meter's filter is read differently here and at Dodo (see the assumptions)",
    "late": "sent without its timestamp (over an hour old when sent), so Dodo filed it at its arrival time",
    "time": "its event time at Dodo differs from the outbox's, outside this range on one side",
    "unknown_customer": "Dodo does not have it: most likely its customer_id is not a customer in Dodo",
    "different_event": "Dodo has this event_id for another customer or event name (the id was used before)",
    "unchecked": f"not read back (only the first {MAX_LOOKUPS} are, to spare the rate budget)",
}


def dodo_meters(meters: Iterable[Meter]) -> list[Meter]:
    """The meters that have a Dodo id (pulled ones); config-only meters cannot be asked about."""
    return [m for m in meters if m.meter_id and not m.meter_id.startswith(("config:", "unnamed_"))]


def dodo_time(us: int) -> str:
    return format_timestamp(datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us))


def fetch_meter_events(
    client: httpx.Client,
    bucket: TokenBucket,
    meter_id: str,
    window: tuple[int, int],
    customer: str | None = None,
    page_size: int = PAGE_SIZE,
) -> dict[str, dict[str, Any]]:
    """Dodo's events for a meter in [from_us, until_us) by event_id. Raises DeliveryError when Dodo
    cannot be read (an error status, a body without `items`, more than MAX_PAGES pages)."""
    params: dict[str, str | int] = {
        "meter_id": meter_id,
        "start": dodo_time(window[0]),
        "end": dodo_time(window[1] - 1),
        "page_size": page_size,
    }
    if customer is not None:
        params["customer_id"] = customer
    found: dict[str, dict[str, Any]] = {}
    for number in range(MAX_PAGES):
        response = paced_get(client, "/events", bucket, params | {"page_number": number})
        if response.status_code != 200:
            raise DeliveryError(
                f"GET /events?meter_id={meter_id} answered {response.status_code}: {response.text[:300]}"
            )
        try:
            items = response.json().get("items")
        except (ValueError, AttributeError):
            items = None
        if not isinstance(items, list):
            raise DeliveryError(f"GET /events?meter_id={meter_id} answered without an `items` list")
        if not items:
            return found
        for item in items:
            if isinstance(item, Mapping) and isinstance(item.get("event_id"), str):
                found[item["event_id"]] = dict(item)
    raise DeliveryError(
        f"GET /events?meter_id={meter_id} still returned events after {MAX_PAGES} pages; stopped"
    )


@dataclass
class Comparison:
    """One meter: what the outbox counts, what Dodo lists, and each id on one side only."""

    meter: Meter
    outbox: dict[str, bool] = field(default_factory=dict)
    """Delivered event ids our reading counts, with whether each was restamped."""
    dodo: dict[str, dict[str, Any]] = field(default_factory=dict)
    only_in_dodo: list[dict[str, str]] = field(default_factory=list)
    only_in_outbox: list[dict[str, str]] = field(default_factory=list)

    @property
    def agree(self) -> bool:
        return not self.only_in_dodo and not self.only_in_outbox

    def document(self) -> dict[str, Any]:
        meter = self.meter
        return {
            "name": meter.label,
            "id": meter.meter_id,
            "event_name": meter.event_name,
            "outbox": len(self.outbox),
            "dodo": len(self.dodo),
            "matched": len(self.outbox.keys() & self.dodo.keys()),
            "agree": self.agree,
            "only_in_dodo": self.only_in_dodo,
            "only_in_outbox": self.only_in_outbox,
        }


def _item(event_id: str, reason: str) -> dict[str, str]:
    return {"event_id": event_id, "reason": reason, "detail": REASONS[reason]}


class Reconciler:
    """Collects our reading from the outbox's rows (`add_rows`), then compares with Dodo's (`compare`)."""

    def __init__(self, meters: Sequence[Meter], window: tuple[int, int], customer: str | None = None) -> None:
        self.window = window
        self.customer = customer
        self.comparisons = [Comparison(m) for m in meters]
        self._by_name: dict[str, list[Comparison]] = {}
        for comparison in self.comparisons:
            self._by_name.setdefault(comparison.meter.event_name, []).append(comparison)

    def add_rows(self, rows: Iterable[tuple[str, str, int, str, int, str]]) -> None:
        """Rows as `OutboxStore.billable_rows` yields them; only delivered ones of a meter's name count."""
        for event_id, event_name, _ts, state, restamped, payload in rows:
            targets = self._by_name.get(event_name)
            if targets is None or state != "delivered":
                continue
            event = orjson.loads(payload)
            if self.customer is not None and event.get("customer_id") != self.customer:
                continue
            metadata = event.get("metadata") or {}
            for comparison in targets:
                if comparison.meter.passes(metadata):
                    comparison.outbox[event_id] = bool(restamped)

    def compare(
        self,
        comparison: Comparison,
        dodo: dict[str, dict[str, Any]],
        lookup_rows: Callable[[Sequence[str]], dict[str, RangeRow]],
        read_back: Callable[[str], dict[str, Any] | None],
    ) -> None:
        """Fill `comparison` from Dodo's list; `lookup_rows` reads outbox rows by id, `read_back`
        reads one event from Dodo (None for 404; raises DeliveryError when Dodo cannot be read)."""
        comparison.dodo = dodo
        extra = sorted(dodo.keys() - comparison.outbox.keys())
        rows = lookup_rows(extra) if extra else {}
        for event_id in extra:
            comparison.only_in_dodo.append(
                _item(event_id, self._why_dodo_only(comparison, rows.get(event_id)))
            )
        lookups = 0
        for event_id in sorted(comparison.outbox.keys() - dodo.keys()):
            if comparison.outbox[event_id]:
                reason = "late"
            elif lookups >= MAX_LOOKUPS:
                reason = "unchecked"
            else:
                lookups += 1
                reason = self._why_outbox_only(comparison, read_back(event_id))
            comparison.only_in_outbox.append(_item(event_id, reason))

    def _why_dodo_only(self, comparison: Comparison, row: RangeRow | None) -> str:
        if row is None:
            return "not_in_outbox"
        if row.state != "delivered":
            return "not_delivered"
        if row.restamped:
            return "late"
        if not self.window[0] <= row.ts_us < self.window[1]:
            return "time"
        event = orjson.loads(row.payload)
        if not comparison.meter.passes(event.get("metadata") or {}):
            return "filter"
        return "different_event"

    def _why_outbox_only(self, comparison: Comparison, theirs: dict[str, Any] | None) -> str:
        if theirs is None:
            return "unknown_customer"
        meter = comparison.meter
        if theirs.get("event_name") != meter.event_name:
            return "different_event"
        try:
            us = to_us(parse_timestamp(theirs.get("timestamp")).timestamp())
        except ValueError:
            us = self.window[0]
        if not self.window[0] <= us < self.window[1]:
            return "time"
        return "filter"


def read_back_event(client: httpx.Client, bucket: TokenBucket) -> Callable[[str], dict[str, Any] | None]:
    """`GET /events/{id}` as the reconciler's `read_back`: the event, None for 404, DeliveryError else."""

    def read(event_id: str) -> dict[str, Any] | None:
        response = paced_get(client, f"/events/{quote(event_id, safe='')}", bucket)
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise DeliveryError(f"GET /events/{event_id} answered {response.status_code}")
        body = response.json()
        return body if isinstance(body, dict) else {}

    return read
