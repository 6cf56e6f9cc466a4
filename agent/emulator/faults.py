"""The fault plan: which ingest requests fail, and how. Pure: the caller passes ``now`` and owns the lock.

Faults model the network and the load balancer in front of Dodo, so they are decided FIRST, before the
key, the rate limit or the body are looked at. For each ingest request, in this order:

1. an outage (``outage_seconds`` from when the plan was set) answers 503;
2. else the next item of ``script`` is consumed: an HTTP status (``200`` means "no fault, handle it
   normally"), ``"drop"``, ``"timeout"`` or ``"ack_lost"``;
3. else one random draw against the rates: ``timeout_rate``, ``drop_rate``, ``ack_lost_rate``, then each
   of ``error_rates`` (status -> probability). The rates must sum to at most 1.

Kinds: a status answers ``{"code", "message"}`` with that status (429 with ``Retry-After``) and stores
nothing; ``drop`` closes the connection without a response and stores nothing; ``timeout`` waits
``timeout_sleep_seconds`` then answers 504 and stores nothing; ``ack_lost`` handles the request
normally (events ARE stored) and then drops the connection: the ambiguous outcome that at-least-once
delivery must survive. ``latency_ms`` delays every ingest answer, faulty or not.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any

ACTIONS = ("drop", "timeout", "ack_lost")

STATUS_CODES = {
    408: "REQUEST_TIMEOUT",
    429: "RATE_LIMITED",
    500: "INTERNAL_SERVER_ERROR",
    502: "BAD_GATEWAY",
    503: "SERVICE_UNAVAILABLE",
    504: "GATEWAY_TIMEOUT",
}


@dataclass(frozen=True, slots=True)
class Fault:
    """One decided fault: ``kind`` is ``"status"``, ``"drop"``, ``"timeout"`` or ``"ack_lost"``."""

    kind: str
    status: int = 0
    source: str = "random"  # "outage", "script" or "random", for the message

    def body(self) -> dict[str, str]:
        code = STATUS_CODES.get(self.status, "INJECTED_FAULT")
        return {"code": code, "message": f"emulator: injected {self.status} ({self.source})"}


def _parse_outcome(item: Any) -> int | str:
    if isinstance(item, str) and item in ACTIONS:
        return item
    if isinstance(item, bool):
        raise ValueError(f"script: {item!r} is not a status or one of {ACTIONS}")
    try:
        status = int(item)
    except (TypeError, ValueError):
        raise ValueError(f"script: {item!r} is not a status or one of {ACTIONS}") from None
    if status != 200 and not 400 <= status <= 599:
        raise ValueError(f"script: status {status} must be 200 or 400-599")
    return status


def _parse_rate(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}: must be a number between 0 and 1, got {value!r}")
    return float(value)


def _parse_seconds(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"{name}: must be a number >= 0, got {value!r}")
    return float(value)


@dataclass(slots=True)
class FaultPlan:
    """The settings; build one from a JSON-like mapping with :meth:`from_mapping`."""

    error_rates: dict[int, float] = field(default_factory=dict)
    latency_ms: float = 0.0
    timeout_rate: float = 0.0
    drop_rate: float = 0.0
    ack_lost_rate: float = 0.0
    retry_after_seconds: float = 1.0
    script: deque[int | str] = field(default_factory=deque)
    outage_seconds: float = 0.0
    outage_until: float = 0.0  # monotonic deadline, set from outage_seconds when the plan is installed
    timeout_sleep_seconds: float | None = None  # None: the config's value
    seed: int | None = None

    @classmethod
    def from_mapping(cls, spec: dict[str, Any]) -> FaultPlan:
        """Validate a plan. Raises ValueError naming the first bad key."""
        plan = cls()
        known = {name for name in cls.__dataclass_fields__ if name != "outage_until"}
        for key in spec:
            if key not in known:
                raise ValueError(f"{key}: unknown fault setting (known: {', '.join(sorted(known))})")
        rates = spec.get("error_rates") or {}
        if not isinstance(rates, dict):
            raise ValueError("error_rates: must be an object of status -> probability")
        for status, rate in rates.items():
            parsed = _parse_outcome(status)
            if not isinstance(parsed, int) or parsed == 200:
                raise ValueError(f"error_rates: {status!r} must be a status in 400-599")
            plan.error_rates[parsed] = _parse_rate(f"error_rates.{status}", rate)
        for name in ("timeout_rate", "drop_rate", "ack_lost_rate"):
            if name in spec:
                setattr(plan, name, _parse_rate(name, spec[name]))
        for name in ("latency_ms", "retry_after_seconds", "outage_seconds"):
            if name in spec:
                setattr(plan, name, _parse_seconds(name, spec[name]))
        if spec.get("timeout_sleep_seconds") is not None:
            plan.timeout_sleep_seconds = _parse_seconds(
                "timeout_sleep_seconds", spec["timeout_sleep_seconds"]
            )
        script = spec.get("script") or []
        if not isinstance(script, list):
            raise ValueError("script: must be a list")
        plan.script = deque(_parse_outcome(item) for item in script)
        seed = spec.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"seed: must be an integer, got {seed!r}")
        plan.seed = seed
        total = plan.timeout_rate + plan.drop_rate + plan.ack_lost_rate + sum(plan.error_rates.values())
        if total > 1.0 + 1e-9:
            raise ValueError(f"rates: must sum to at most 1, got {total:g}")
        return plan

    def to_mapping(self, now: float) -> dict[str, Any]:
        """The plan as JSON-ready data; ``outage_remaining_seconds`` is computed from ``now``."""
        return {
            "error_rates": {str(status): rate for status, rate in self.error_rates.items()},
            "latency_ms": self.latency_ms,
            "timeout_rate": self.timeout_rate,
            "drop_rate": self.drop_rate,
            "ack_lost_rate": self.ack_lost_rate,
            "retry_after_seconds": self.retry_after_seconds,
            "script": list(self.script),
            "outage_seconds": self.outage_seconds,
            "outage_remaining_seconds": max(0.0, self.outage_until - now),
            "timeout_sleep_seconds": self.timeout_sleep_seconds,
            "seed": self.seed,
        }

    def decide(self, now: float, rng: random.Random) -> Fault | None:
        """Decide the fault for one ingest request (consuming a script item), or None for no fault."""
        if now < self.outage_until:
            return Fault("status", 503, "outage")
        if self.script:
            outcome = self.script.popleft()
            if outcome == 200:
                return None
            if isinstance(outcome, int):
                return Fault("status", outcome, "script")
            return Fault(outcome, source="script")
        draw = rng.random()
        for kind, rate in (
            ("timeout", self.timeout_rate),
            ("drop", self.drop_rate),
            ("ack_lost", self.ack_lost_rate),
        ):
            if draw < rate:
                return Fault(kind)
            draw -= rate
        for status, rate in self.error_rates.items():
            if draw < rate:
                return Fault("status", status)
            draw -= rate
        return None
