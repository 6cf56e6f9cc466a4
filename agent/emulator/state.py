"""The emulator's state: config, stored events, meters, stats, faults, rate limit. No I/O.

Every public method takes one ``threading.Lock``: the server's event loop and a test thread both call in.
Each request is answered by an :class:`Answer` that says what to send (or to drop, or to hang); the
ASGI app in ``app.py`` only carries it out, so every rule lives here and in ``contract.py``.

Order of checks for ``POST /events/ingest`` (the first that fails answers):
fault plan (``faults.py``) -> key (401, 403 for a read-only key) -> rate limit (429) -> size (413)
-> schema (422) -> rules (400, ``contract.py``) -> store. Stored events are keyed by ``event_id``:
a later request re-sending an id is accepted but the id is ignored, and ``ingested_count`` counts new
events only. Read endpoints need a key too (read-only keys are fine) and share the rate limit.
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from agent.emulator.config import BUSINESS_ID, EmulatorConfig, normalize_meters
from agent.emulator.contract import (
    ContractError,
    ValidEvent,
    filter_events,
    format_timestamp,
    page,
    parse_body,
    validate_events,
)
from agent.emulator.faults import Fault, FaultPlan
from agent.emulator.ratelimit import RateDecision, RateLimiter


@dataclass(frozen=True, slots=True)
class Answer:
    """What to do with one request. ``action``: ``respond``, ``drop`` (close, no response) or ``timeout``
    (wait ``sleep_seconds``, then respond). ``delay_seconds`` (injected latency) comes first."""

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    action: str = "respond"
    delay_seconds: float = 0.0
    sleep_seconds: float = 0.0


class EmulatorState:
    """Everything the fake Dodo knows. ``clock`` is wall time (shifted by the clock offset) for the
    timestamp window; ``monotonic`` drives the rate limit and outages."""

    def __init__(
        self,
        config: EmulatorConfig | None = None,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        extra_meters: Collection[Mapping[str, Any]] = (),
    ) -> None:
        self.config = config or EmulatorConfig()
        self._clock = clock
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._initial_meters = normalize_meters([*self.config.meters, *extra_meters])
        pattern = self.config.reject_event_ids
        self._reject_event_ids = None if pattern is None else re.compile(pattern)
        self._reject_customer_ids = frozenset(self.config.reject_customer_ids)
        self._reset_locked()

    def _reset_locked(self) -> None:
        config = self.config
        self._keys = frozenset(config.keys)
        self._read_only_keys = frozenset(config.read_only_keys)
        self._meters = list(self._initial_meters)
        self._events: dict[str, dict[str, Any]] = {}
        self._plan = FaultPlan()
        self._rng = random.Random(config.seed)
        self._offset = 0.0
        self._counts: Counter[str] = Counter()
        self._by_status: Counter[str] = Counter()
        self._log: deque[dict[str, Any]] = deque(maxlen=10_000)
        self._limiter = RateLimiter(
            per_second=config.rate_per_second,
            per_minute=config.rate_per_minute,
            enabled=config.rate_limit,
            now=self._monotonic(),
        )

    # -- the API --------------------------------------------------------------------------------

    def ingest(self, authorization: str | None, body: bytes | None) -> Answer:
        """Answer ``POST /events/ingest``. ``body`` is None when it exceeded ``max_body_bytes``."""
        with self._lock:
            fault = self._plan.decide(self._monotonic(), self._rng)
            delay = self._plan.latency_ms / 1000.0
            if fault is not None and fault.kind != "ack_lost":
                return self._fault_answer(fault, delay, body)
            answer = self._ingest_locked(authorization, body)
            outcome = "ack_lost" if fault is not None else str(answer.status)
            self._record(outcome, answer, body)
            if fault is not None:
                self._counts["faults_injected"] += 1
                return Answer(0, action="drop", delay_seconds=delay)
            return Answer(answer.status, answer.body, answer.headers, delay_seconds=delay)

    def _refuse_poison_customers(self, valid: list[ValidEvent]) -> None:
        """Raise 400 for the first event of a ``reject_customer_ids`` customer (test-only poison)."""
        for index, event in enumerate(valid):
            if event.customer_id in self._reject_customer_ids:
                raise ContractError(
                    400,
                    "BAD_REQUEST",
                    f"events[{index}].customer_id: {event.customer_id!r} is refused (the emulator's "
                    "reject_customer_ids)",
                )

    def _fault_answer(self, fault: Fault, delay: float, body: bytes | None) -> Answer:
        self._counts["faults_injected"] += 1
        headers = self._limiter.peek(self._monotonic()).headers()
        if fault.kind == "drop":
            self._record("drop", None, body)
            return Answer(0, action="drop", delay_seconds=delay)
        if fault.kind == "timeout":
            self._record("timeout", None, body)
            sleep = self._plan.timeout_sleep_seconds
            sleep = self.config.timeout_sleep_seconds if sleep is None else sleep
            answer = Fault("status", 504, fault.source).body()
            return Answer(504, answer, headers, action="timeout", delay_seconds=delay, sleep_seconds=sleep)
        if fault.status == 429:
            headers["Retry-After"] = f"{self._plan.retry_after_seconds:g}"
        self._record(str(fault.status), None, body)
        return Answer(fault.status, fault.body(), headers, delay_seconds=delay)

    def _ingest_locked(self, authorization: str | None, body: bytes | None) -> Answer:
        try:
            decision = self._authorize(authorization, write=True)
            if body is None:
                limit = self.config.max_body_bytes
                raise ContractError(413, "PAYLOAD_TOO_LARGE", f"body: larger than {limit} bytes")
            valid = validate_events(
                parse_body(body),
                now=self.now(),
                window_seconds=self.config.window_seconds,
                future_seconds=self.config.future_seconds,
                reject_event_ids=self._reject_event_ids,
            )
            self._refuse_poison_customers(valid)
        except _Refused as refused:
            return refused.answer
        except ContractError as error:
            return Answer(error.status, error.body(), decision.headers())
        received_at = format_timestamp(self.now())
        new = 0
        for event in valid:
            if event.event_id in self._events:
                continue
            new += 1
            self._events[event.event_id] = {
                "business_id": BUSINESS_ID,
                "event_id": event.event_id,
                "customer_id": event.customer_id,
                "event_name": event.event_name,
                "timestamp": received_at if event.timestamp is None else format_timestamp(event.timestamp),
                "metadata": event.metadata,
            }
        self._counts["events_received"] += len(valid)
        self._counts["duplicates_ignored"] += len(valid) - new
        return Answer(200, {"ingested_count": new}, decision.headers())

    def _authorize(self, authorization: str | None, *, write: bool) -> RateDecision:
        """Check the bearer key, then take a rate-limit token. Raises _Refused for 401/403."""
        scheme, _, key = (authorization or "").partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or key not in self._keys | self._read_only_keys:
            message = "missing Authorization: Bearer <key>" if not key else "invalid API key"
            raise _Refused(Answer(401, {"code": "UNAUTHORIZED", "message": message}, self._peek_headers()))
        if write and key not in self._keys:
            body = {"code": "FORBIDDEN", "message": "this API key cannot ingest events (read-only)"}
            raise _Refused(Answer(403, body, self._peek_headers()))
        decision = self._limiter.acquire(self._monotonic())
        if not decision.allowed:
            body = {"code": "RATE_LIMITED", "message": "rate limit exceeded, retry after Retry-After"}
            raise _Refused(Answer(429, body, decision.headers()))
        return decision

    def _peek_headers(self) -> dict[str, str]:
        return self._limiter.peek(self._monotonic()).headers()

    def _record(self, outcome: str, answer: Answer | None, body: bytes | None) -> None:
        self._counts["requests"] += 1
        self._by_status[outcome] += 1
        if answer is not None and 400 <= answer.status < 500:
            self._counts["rejected_requests"] += 1
        ingested = answer.body.get("ingested_count") if answer and answer.status == 200 else None
        size = None if body is None else len(body)
        self._log.append(
            {
                "outcome": outcome,
                "ingested_count": ingested,
                "body_bytes": size,
                "at": round(self._monotonic(), 6),
                "events": _count_events(body),
            }
        )

    def read(self, authorization: str | None, resource: str, params: Mapping[str, str]) -> Answer:
        """Answer a read of ``resource``: ``"event"`` (``params["event_id"]``), ``"events"``, ``"meters"``."""
        with self._lock:
            try:
                headers = self._authorize(authorization, write=False).headers()
            except _Refused as refused:
                return refused.answer
            try:
                if resource == "event":
                    event = self._events.get(params["event_id"])
                    if event is None:
                        return Answer(404, {"code": "NOT_FOUND", "message": "event not found"}, headers)
                    return Answer(200, _copy(event), headers)
                if resource == "events":
                    matching = filter_events(self._events.values(), self._meters, params)
                    return Answer(200, {"items": [_copy(e) for e in page(matching, params)]}, headers)
                archived = params.get("archived", "false").lower() == "true"
                meters = [dict(m) for m in self._meters if bool(m.get("archived")) == archived]
                return Answer(200, {"items": page(meters, params)}, headers)
            except ContractError as error:
                return Answer(error.status, error.body(), headers)

    # -- for tests and the admin API --------------------------------------------------------------

    def now(self) -> datetime:
        """The emulator's clock: wall time plus the offset set by :meth:`set_clock_offset`."""
        return datetime.fromtimestamp(self._clock() + self._offset, UTC)

    def set_clock_offset(self, seconds: float) -> None:
        """Shift the emulator's clock (for the timestamp window) by ``seconds``; 0 undoes it."""
        with self._lock:
            self._offset = float(seconds)

    @property
    def clock_offset(self) -> float:
        with self._lock:
            return self._offset

    def set_faults(self, **settings: Any) -> None:
        """Replace the fault plan (see ``faults.py``); no arguments clears it. Raises ValueError."""
        plan = FaultPlan.from_mapping(settings)
        with self._lock:
            plan.outage_until = self._monotonic() + plan.outage_seconds if plan.outage_seconds else 0.0
            if plan.seed is not None:
                self._rng = random.Random(plan.seed)
            self._plan = plan

    def clear_faults(self) -> None:
        self.set_faults()

    def faults(self) -> dict[str, Any]:
        with self._lock:
            return self._plan.to_mapping(self._monotonic())

    def set_keys(self, keys: Collection[str], read_only_keys: Collection[str] | None = None) -> None:
        """Replace the valid keys (and the read-only keys, when given) at run time."""
        if isinstance(keys, str) or isinstance(read_only_keys, str):
            raise TypeError("keys: expected a collection of keys, got a single string")
        with self._lock:
            self._keys = frozenset(keys)
            if read_only_keys is not None:
                self._read_only_keys = frozenset(read_only_keys)

    def set_meters(self, meters: Collection[Mapping[str, Any]]) -> None:
        """Replace the meters. Raises ValueError on a bad definition."""
        normalized = normalize_meters(meters)
        with self._lock:
            self._meters = normalized

    @property
    def events(self) -> dict[str, dict[str, Any]]:
        """A copy of the stored events by ``event_id``, in the order they were first stored."""
        with self._lock:
            return {event_id: _copy(event) for event_id, event in self._events.items()}

    def ingest_log(self) -> list[dict[str, Any]]:
        """One entry per ingest request (the last 10,000): ``outcome`` (a status, ``drop``, ``timeout``,
        ``ack_lost``), ``ingested_count`` (200 only), ``body_bytes`` (None: over the limit), ``at`` (when
        it arrived, on the emulator's monotonic clock, seconds: request rates per window), ``events``
        (how many events the body carried, faulty answers too; None when it is not a body of events)."""
        with self._lock:
            return [dict(entry) for entry in self._log]

    def stats(self) -> dict[str, Any]:
        """Counters over ingest requests. ``requests_by_status`` keys are statuses as strings, or
        ``drop``/``timeout``/``ack_lost``; ``events_received`` counts events of accepted requests,
        duplicates included; ``rejected_requests`` counts 4xx answers of the contract checks."""
        with self._lock:
            return {
                "requests": self._counts["requests"],
                "requests_by_status": dict(self._by_status),
                "events_received": self._counts["events_received"],
                "events_stored": len(self._events),
                "duplicates_ignored": self._counts["duplicates_ignored"],
                "rejected_requests": self._counts["rejected_requests"],
                "faults_injected": self._counts["faults_injected"],
            }

    def reset(self) -> None:
        """Back to the configured start: no events, no stats, no faults, config keys and meters,
        clock offset 0, a full rate-limit bucket."""
        with self._lock:
            self._reset_locked()


def _count_events(body: bytes | None) -> int | None:
    """The number of events in an ingest body, or None when it is not ``{"events": [...]}``."""
    if body is None:
        return None
    try:
        events = orjson.loads(body).get("events")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return len(events) if isinstance(events, list) else None


def _copy(event: dict[str, Any]) -> dict[str, Any]:
    """A copy a caller may change without changing what is stored."""
    metadata = event["metadata"]
    return {**event, "metadata": None if metadata is None else dict(metadata)}


class _Refused(Exception):
    """Carries a ready answer (401, 403, 429) out of the checks."""

    def __init__(self, answer: Answer) -> None:
        super().__init__(answer.status)
        self.answer = answer
