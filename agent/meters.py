"""Meter-aware checks: will Dodo bill this event? Pure rules, the enqueue-time checker, and the puller.

Dodo accepts an event whose name matches no meter, or whose aggregated key is missing or a string,
and never bills it. The rules here flag each case, naming the meter and the fix:

- `no_meter`: no meter has this event_name (names are case-sensitive);
- `case_mismatch`: a meter matches only case-insensitively (the message names the one it probably meant);
- `missing_key`: a sum/max/last meter's key is absent from the metadata;
- `string_key`: the key is there as a string (`"150"`), which a meter cannot aggregate;
- `not_a_number`: the key is there as a boolean.

Nothing is flagged until meters are known: pulled (`dodo-outbox meters pull`, cached in the outbox file)
or listed as `[[meters]]` in the config. Filters are not evaluated: what a filter excludes is on purpose.
"""

from __future__ import annotations

import difflib
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import httpx
import orjson

from agent import __version__
from agent.config import MeterSpec, Settings, read_api_key
from agent.errors import ConfigError, DeliveryError, InvalidEventError, Problem
from agent.events import Event
from agent.logs import get_logger
from agent.pacing import TokenBucket
from agent.store import Store
from agent.store.meters import MeterRow

log = get_logger(__name__)

PAGE_SIZE = 100
MAX_PAGES = 1000
"""A server that never returns an empty page must not keep the puller going for ever."""


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
    return Meter(item["event_name"], kind, key, name, meter_id, item.get("filter"))


def meter_from_row(row: MeterRow) -> Meter:
    filter_value = orjson.loads(row.filter) if row.filter else None
    aggregation = row.aggregation or "count"
    return Meter(row.event_name, aggregation, row.aggregation_key, row.name, row.meter_id, filter_value)


def meter_to_row(meter: Meter, index: int, now_us: int) -> MeterRow:
    meter_id = meter.meter_id or f"unnamed_{index}"
    filter_text = None if meter.filter is None else orjson.dumps(meter.filter).decode()
    return MeterRow(meter_id, meter.event_name, meter.name, meter.aggregation, meter.key, filter_text, now_us)


def meter_from_spec(spec: MeterSpec, index: int) -> Meter:
    return Meter(spec.event_name, spec.aggregation, spec.key, spec.name, f"config:{index + 1}")


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


def check_event(index: MeterIndex, event_name: str, metadata: Mapping[str, object]) -> list[Finding]:
    """Every reason one event would not be billed, by any meter of its name; empty when all count it."""
    name_finding = check_name(index, event_name)
    if name_finding is not None:
        return [name_finding]
    found = (check_value(meter, event_name, metadata) for meter in index.by_name[event_name])
    return [f for f in found if f is not None]


class MeterChecker:
    """The enqueue-time check (`Outbox(checker=...)` / `outbox.set_checker(...)`).

    Called with validated events before they are stored. Flags each finding with a warning log line
    (`event_not_billable`; at most one per event name and reason every `warn_interval_seconds`, with
    the number suppressed), counts it by reason (`counts`), and returns it as a Problem. With
    `strict=True` any finding refuses the whole call: InvalidEventError, nothing stored.
    `meters=None` means "unknown": nothing is flagged until meters are set. With `loader`, the meters
    are re-read every `reload_seconds` (a running agent sees a `meters pull` without a restart).
    """

    def __init__(
        self,
        meters: Iterable[Meter] | None,
        *,
        strict: bool = False,
        enabled: bool = True,
        warn_interval_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        loader: Callable[[], Iterable[Meter] | None] | None = None,
        reload_seconds: float = 30.0,
    ) -> None:
        self.strict = strict
        self.enabled = enabled
        self.warn_interval_seconds = warn_interval_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._last_logged: dict[tuple[str, str], tuple[float, int]] = {}
        self._index = None if meters is None else MeterIndex(meters)
        self._loader, self._reload_seconds, self._loaded_at = loader, reload_seconds, clock()
        # False: no `event_not_billable` log lines (a CLI that prints each warning itself sets it).
        self.log_warnings = True

    def set_meters(self, meters: Iterable[Meter] | None) -> None:
        """Replace the known meters (after a pull); None forgets them."""
        index = None if meters is None else MeterIndex(meters)
        with self._lock:
            self._index = index

    @property
    def known(self) -> bool:
        return self._index is not None

    @property
    def counts(self) -> dict[str, int]:
        """Flagged events by reason since start (refused ones included, under their reason)."""
        with self._lock:
            return dict(self._counts)

    def status(self) -> dict[str, Any]:
        """The `meter_checks` status section of a running agent."""
        index = self._index
        return {
            "enabled": self.enabled,
            "strict_meters": self.strict,
            "meters_known": None if index is None else len(index.meters),
            "meter_warnings": self.counts,
        }

    def __call__(self, events: Sequence[Event]) -> list[Problem]:
        """Findings for `events` as Problems (warnings); raises InvalidEventError in strict mode."""
        if self._loader is not None and self._clock() - self._loaded_at >= self._reload_seconds:
            self._loaded_at = self._clock()
            self.set_meters(self._loader())
        index = self._index
        if not self.enabled or index is None:
            return []
        problems: list[Problem] = []
        flagged: list[tuple[Event, Finding]] = []
        for position, event in enumerate(events):
            for finding in check_event(index, event.event_name, event.metadata):
                where = f"events[{position}]." + (f"metadata.{finding.key}" if finding.key else "event_name")
                problems.append(Problem(where, finding.message))
                flagged.append((event, finding))
        if not flagged:
            return []
        with self._lock:
            self._counts.update(str(f.reason) for _, f in flagged)
        if self.strict:
            suffix = " (refused: [meter_checks] strict_meters = true)"
            raise InvalidEventError([Problem(p.path, p.message + suffix) for p in problems])
        for event, finding in flagged:
            self._warn(event, finding)
        return problems

    def _warn(self, event: Event, finding: Finding) -> None:
        if not self.log_warnings:
            return
        now = self._clock()
        slot = (event.event_name, str(finding.reason))
        with self._lock:
            last, suppressed = self._last_logged.get(slot, (float("-inf"), 0))
            if now - last < self.warn_interval_seconds:
                self._last_logged[slot] = (last, suppressed + 1)
                return
            if len(self._last_logged) >= 1000:
                # Bounded: a producer inventing names must not grow this for ever.
                self._last_logged.clear()
            self._last_logged[slot] = (now, 0)
        log.warning(
            "event_not_billable",
            reason=str(finding.reason),
            event_name=event.event_name,
            event_id=event.event_id,
            meter=finding.meter,
            key=finding.key,
            detail=finding.message,
            suppressed=suppressed,
        )


def known_meters(settings: Settings, store: Store | None) -> list[Meter] | None:
    """Pulled meters (cached in `store`) plus the config's `[[meters]]`; None when neither is known."""
    configured = [meter_from_spec(spec, i) for i, spec in enumerate(settings.meters)]
    pulled = store is not None and store.meters_pulled_at_us() is not None
    if not configured and not pulled:
        return None
    cached = [meter_from_row(row) for row in store.cached_meters()] if store is not None else []
    return cached + configured


def build_checker(settings: Settings, store: Store | None) -> MeterChecker:
    """The checker the running agent installs with `outbox.set_checker(...)`; re-reads `store`'s meters."""
    options = settings.meter_checks
    return MeterChecker(
        known_meters(settings, store),
        strict=options.strict_meters,
        enabled=options.enabled,
        warn_interval_seconds=options.warn_interval_seconds,
        loader=None if store is None else lambda: known_meters(settings, store),
    )


# -- reading from Dodo: GET /meters, GET /events/{id} -------------------------------------------------


def dodo_client(settings: Settings, transport: httpx.BaseTransport | None = None) -> httpx.Client:
    """An httpx client for Dodo's read endpoints with the bearer key. Raises ConfigError without a key."""
    key, where = read_api_key(settings)
    if key is None:
        raise ConfigError(where)
    headers = {"Authorization": f"Bearer {key}", "User-Agent": f"dodo-outbox/{__version__}"}
    timeout = settings.delivery.timeout_seconds
    return httpx.Client(base_url=settings.dodo.url, headers=headers, timeout=timeout, transport=transport)


def paced_get(
    client: httpx.Client,
    path: str,
    bucket: TokenBucket,
    params: Mapping[str, str | int] | None = None,
    *,
    attempts: int = 5,
    sleep: Callable[[float], object] = time.sleep,
) -> httpx.Response:
    """GET within the rate budget; a 429 pauses the bucket (Retry-After, else 1 s doubling) and retries.

    Raises DeliveryError on a connection error or timeout, and for 401/403 (a key problem that no
    retry fixes). Other statuses are returned.
    """
    for attempt in range(attempts):
        bucket.acquire(time.monotonic, sleep)
        try:
            response = client.get(path, params=params)
        except httpx.HTTPError as exc:
            raise DeliveryError(f"GET {path} failed: {type(exc).__name__}: {exc}") from None
        if response.status_code in (401, 403):
            raise DeliveryError(
                f"Dodo refused the API key ({response.status_code}) for GET {path}; check [dodo] "
                "api_key_file / DODO_PAYMENTS_API_KEY and that the key may read"
            )
        if response.status_code != 429 or attempt == attempts - 1:
            return response
        try:
            wait = float(response.headers.get("retry-after", ""))
        except ValueError:
            wait = float(2**attempt)
        bucket.slow_down(time.monotonic(), min(max(wait, 0.0), 60.0))
    raise AssertionError("unreachable")


def fetch_meters(client: httpx.Client, bucket: TokenBucket, page_size: int = PAGE_SIZE) -> list[Meter]:
    """Every active meter: pages from 0 until one comes back empty (the SDK's auto-pager skips one).

    Raises DeliveryError for an error status, a body without `items`, or more than MAX_PAGES pages.
    """
    meters: dict[str, Meter] = {}
    for number in range(MAX_PAGES):
        params: dict[str, str | int] = {"page_size": page_size, "page_number": number, "archived": "false"}
        response = paced_get(client, "/meters", bucket, params)
        if response.status_code != 200:
            raise DeliveryError(f"GET /meters answered {response.status_code}: {response.text[:300]}")
        try:
            items = response.json().get("items")
        except (ValueError, AttributeError):
            items = None
        if not isinstance(items, list):
            raise DeliveryError("GET /meters answered without an `items` list")
        if not items:
            return list(meters.values())
        for item in items:
            meter = meter_from_api(item)
            meters[meter.meter_id or f"{number}:{len(meters)}"] = meter
    raise DeliveryError(f"GET /meters still returned meters after {MAX_PAGES} pages; stopped")
