"""The enqueue-time meter check, and the meters it knows (pulled ones plus the config's)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from agent.config import Settings
from agent.errors import InvalidEventError, Problem
from agent.events import Event
from agent.logs import get_logger
from agent.meters.rules import Finding, Meter, MeterIndex, billing_findings, meter_from_row, meter_from_spec
from agent.store import OutboxStore

log = get_logger(__name__)


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
            for finding in billing_findings(index, event.event_name, event.metadata):
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


def known_meters(settings: Settings, store: OutboxStore | None) -> list[Meter] | None:
    """Pulled meters (cached in `store`) plus the config's `[[meters]]`; None when neither is known."""
    configured = [meter_from_spec(spec, i) for i, spec in enumerate(settings.meters)]
    pulled = store is not None and store.meters_pulled_at_us() is not None
    if not configured and not pulled:
        return None
    cached = [meter_from_row(row) for row in store.cached_meters()] if store is not None else []
    return cached + configured


def build_checker(settings: Settings, store: OutboxStore | None) -> MeterChecker:
    """The checker the running agent installs with `outbox.set_checker(...)`; re-reads `store`'s meters."""
    options = settings.meter_checks
    return MeterChecker(
        known_meters(settings, store),
        strict=options.strict_meters,
        enabled=options.enabled,
        warn_interval_seconds=options.warn_interval_seconds,
        loader=None if store is None else lambda: known_meters(settings, store),
    )
