"""Dodo's per-account rate limit as two token buckets. Pure: the caller passes a monotonic ``now``.

Default tier: a burst of 40 requests/s and 240 requests/min sustained. Modelled as two buckets that a
request must both draw from: one of capacity 40 refilling at 40/s, one of capacity 240 refilling at
4/s. So up to 40 requests pass in an instant, about 240 in the first minute, then 4/s.

The ``X-RateLimit-*`` headers describe the binding bucket (the one with the fewest tokens left):
``Limit`` is its capacity, ``Remaining`` its whole tokens, ``Reset`` the seconds until it is full again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(slots=True)
class TokenBucket:
    capacity: float
    refill_per_second: float
    tokens: float
    updated: float

    def refill(self, now: float) -> None:
        elapsed = max(0.0, now - self.updated)
        self.tokens = min(self.capacity, self.tokens + elapsed * self.refill_per_second)
        self.updated = now

    def seconds_until(self, tokens: float) -> float:
        missing = tokens - self.tokens
        return 0.0 if missing <= 0 else missing / self.refill_per_second


@dataclass(frozen=True, slots=True)
class RateDecision:
    """Whether a request may pass, and the headers every API response carries."""

    allowed: bool
    limit: int
    remaining: int
    reset_seconds: int
    retry_after_seconds: int

    def headers(self) -> dict[str, str]:
        headers = {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset_seconds),
        }
        if not self.allowed:
            headers["Retry-After"] = str(self.retry_after_seconds)
        return headers


class RateLimiter:
    """Two token buckets; ``enabled=False`` lets everything through but still reports headers."""

    def __init__(self, *, per_second: float, per_minute: float, enabled: bool, now: float) -> None:
        if per_second <= 0 or per_minute <= 0:
            raise ValueError("rate_per_second and rate_per_minute must be positive")
        self.enabled = enabled
        self._buckets = (
            TokenBucket(per_second, per_second, per_second, now),
            TokenBucket(per_minute, per_minute / 60.0, per_minute, now),
        )

    def acquire(self, now: float) -> RateDecision:
        """Take one token from every bucket if each has one; else refuse and say how long to wait."""
        for bucket in self._buckets:
            bucket.refill(now)
        allowed = not self.enabled or all(bucket.tokens >= 1.0 for bucket in self._buckets)
        if allowed and self.enabled:
            for bucket in self._buckets:
                bucket.tokens -= 1.0
        return self._decision(allowed)

    def peek(self, now: float) -> RateDecision:
        """The headers as they stand, taking nothing (for answers that bypass the limiter)."""
        for bucket in self._buckets:
            bucket.refill(now)
        return self._decision(True)

    def _decision(self, allowed: bool) -> RateDecision:
        binding = min(self._buckets, key=lambda bucket: bucket.tokens)
        wait = max(bucket.seconds_until(1.0) for bucket in self._buckets)
        return RateDecision(
            allowed=allowed,
            limit=int(binding.capacity),
            remaining=max(0, math.floor(binding.tokens)),
            reset_seconds=math.ceil(binding.seconds_until(binding.capacity)),
            # Never 0: a client told "retry after 0 s" would spin.
            retry_after_seconds=max(1, math.ceil(wait)),
        )
