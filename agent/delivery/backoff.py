"""Retry policy as pure code: classify a response, compute the next delay, read server hints.

Nothing here reads a clock, sleeps, draws random numbers or does I/O. Callers pass ``now``
(documented per function as epoch seconds) and ``rand`` (a float in [0, 1), e.g.
``random.random()``), so every decision is reproducible in a test.

Pieces, in the order a sender uses them::

    status ──classify()──► Outcome ──RETRY──► retry_delay() ──► cap_delay_before_deadline()
                              │                  ▲ parse_retry_after*() / parse_rate_limit_reset()
                              └─ dead ─► dead_reason()
    DestinationBackoff: one breaker for the whole destination (all batches share it).
"""

from __future__ import annotations

import email.utils
import math
import re
import threading
from collections.abc import Mapping
from datetime import UTC
from enum import StrEnum

# A server hint (Retry-After, X-RateLimit-Reset) is honoured as a minimum delay, but a hint larger
# than this is treated as this: a misconfigured proxy must not park billing data for days.
MAX_HINT_SECONDS = 3600.0

# Consecutive failures after which the destination as a whole backs off (see DestinationBackoff).
DEFAULT_FAILURE_THRESHOLD = 3

# X-RateLimit-Reset above this is a unix timestamp (seconds), not seconds-until-reset; above the
# second bound it is a unix timestamp in milliseconds.
_EPOCH_SECONDS_FLOOR = 1e9
_EPOCH_MILLIS_FLOOR = 1e12

_NUMBER = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*")


class Outcome(StrEnum):
    """What to do with a batch after one delivery attempt (a ``str``: ``Outcome.RETRY == "retry"``)."""

    DELIVERED = "delivered"  # 2xx: settle every event as delivered
    RETRY = "retry"  # transient (timeout, 408, 409, 429, 5xx): try the same batch later
    SPLIT = "split"  # 413 on several events: send smaller batches
    BISECT = "bisect"  # 400/422/other 4xx on several events: isolate the poison event
    REJECT = "reject"  # 400/422/other 4xx on one event: dead-letter it (dead_reason)
    TOO_LARGE = "too_large"  # 413 on one event: dead-letter it as "too_large"
    PAUSE_AUTH = "pause_auth"  # 401/403: the key is wrong; no event is at fault, pause sending
    PAUSE_NOT_FOUND = "pause_not_found"  # 404: the base URL is wrong; pause sending


_RETRYABLE_4XX = frozenset({408, 409, 429})


def classify(status: int | None, batch_size: int) -> Outcome:
    """Map an HTTP status (``None`` = timeout or connection error) to an :class:`Outcome`.

    ``batch_size`` is the number of events in the request; it decides between SPLIT/BISECT (several
    events, narrow it down) and TOO_LARGE/REJECT (one event, dead-letter it).
    Statuses outside 2xx/4xx/5xx (1xx, an unfollowed 3xx, nonsense) are treated as transient: RETRY
    never loses an event, and the destination breaker keeps the cost of retrying low.

    Raises ValueError when ``batch_size`` < 1.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if status is None:
        return Outcome.RETRY
    if 200 <= status < 300:
        return Outcome.DELIVERED
    if status in _RETRYABLE_4XX or 500 <= status < 600:
        return Outcome.RETRY
    if status in (401, 403):
        return Outcome.PAUSE_AUTH
    if status == 404:
        return Outcome.PAUSE_NOT_FOUND
    if status == 413:
        return Outcome.SPLIT if batch_size > 1 else Outcome.TOO_LARGE
    if 400 <= status < 500:
        return Outcome.BISECT if batch_size > 1 else Outcome.REJECT
    return Outcome.RETRY


def dead_reason(status: int) -> str:
    """The dead-letter reason for a single event refused with ``status``.

    ``"rejected"`` for 400/422, ``"too_large"`` for 413, otherwise ``"http_<status>"`` (e.g. ``"http_410"``).
    """
    if status in (400, 422):
        return "rejected"
    if status == 413:
        return "too_large"
    return f"http_{status}"


def full_jitter_delay(failures: int, initial: float, maximum: float, rand: float) -> float:
    """Exponential backoff with full jitter: ``rand * min(maximum, initial * 2**(failures - 1))``.

    ``failures`` counts the failed attempts so far (1 after the first failure; values < 1 count as 1).
    ``rand`` is drawn by the caller from [0, 1). The result is always within [0, maximum], and any
    ``failures`` (even 10**9) is safe: the exponent is clamped before it could overflow a float.

    Raises ValueError for a negative or non-finite ``initial``/``maximum`` or ``rand`` outside [0, 1].
    """
    if not (math.isfinite(initial) and math.isfinite(maximum)) or initial < 0 or maximum < 0:
        raise ValueError(f"initial and maximum must be finite and >= 0, got {initial}, {maximum}")
    if not 0.0 <= rand <= 1.0:
        raise ValueError(f"rand must be in [0, 1), got {rand}")
    # 2.0**1023 is the largest finite power of two; initial * it may become inf, which min() absorbs.
    exponent = min(max(failures - 1, 0), 1023)
    ceiling = min(maximum, initial * 2.0**exponent)
    return min(maximum, rand * ceiling)


def _parse_number(value: str) -> float | None:
    match = _NUMBER.fullmatch(value)
    number = float(match.group(1)) if match else math.inf
    return number if math.isfinite(number) else None  # 400 nines parse as inf: garbage too


def parse_retry_after(value: str | None, now_epoch: float) -> float | None:
    """Seconds to wait according to a ``Retry-After`` header value, or None when absent or unreadable.

    Accepts delay-seconds (``"120"``, also ``"1.5"``) or an HTTP date (``"Wed, 21 Oct 2015 07:28:00 GMT"``),
    the latter measured from ``now_epoch`` (unix seconds). A date in the past gives 0.0. Negative
    numbers and other garbage give None. The result is not capped here; :func:`retry_delay` caps it.
    """
    if value is None:
        return None
    seconds = _parse_number(value)
    if seconds is not None:
        return seconds
    try:
        when = email.utils.parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000" means UTC with no claim about local time (RFC 5322)
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now_epoch)


def parse_retry_after_ms(value: str | None) -> float | None:
    """Seconds to wait according to a ``retry-after-ms`` header (milliseconds), or None when unreadable."""
    if value is None:
        return None
    millis = _parse_number(value)
    return None if millis is None else millis / 1000.0


def parse_rate_limit_reset(value: str | None, now_epoch: float) -> float | None:
    """Seconds until the rate-limit window resets, from an ``X-RateLimit-Reset`` header value.

    APIs disagree on the unit, so: a number up to 1e9 is seconds-until-reset; above 1e9 it is a unix
    timestamp in seconds, above 1e12 one in milliseconds, measured from ``now_epoch`` and clamped at 0.
    None or garbage gives None.
    """
    if value is None:
        return None
    number = _parse_number(value)
    if number is None:
        return None
    if number > _EPOCH_MILLIS_FLOOR:
        return max(0.0, number / 1000.0 - now_epoch)
    if number > _EPOCH_SECONDS_FLOOR:
        return max(0.0, number - now_epoch)
    return number


def retry_after_from_headers(headers: Mapping[str, str], now_epoch: float) -> float | None:
    """The server's Retry-After hint from response headers (any key case), in seconds, or None.

    ``retry-after-ms`` wins over ``retry-after`` when both are readable, as in Dodo's own SDK.
    X-RateLimit-Reset is deliberately not read here: it is on every response, so it is only a hint
    when the response was a 429 (or X-RateLimit-Remaining was 0); the caller decides that.
    """
    lowered = {key.lower(): val for key, val in headers.items()}
    millis = parse_retry_after_ms(lowered.get("retry-after-ms"))
    if millis is not None:
        return millis
    return parse_retry_after(lowered.get("retry-after"), now_epoch)


def retry_delay(
    failures: int,
    initial: float,
    maximum: float,
    rand: float,
    retry_after: float | None,
    reset: float | None,
) -> float:
    """Seconds to wait before retrying: the full-jitter delay, raised to the server's hint if larger.

    The hint is ``max(retry_after, reset)`` of those given (None = no hint) and acts as a minimum. It
    is itself capped at :data:`MAX_HINT_SECONDS` (3600 s). So the result lies in
    ``[min(hint, 3600), max(maximum, min(hint, 3600))]``: above ``maximum`` only when the server asks.
    Raises ValueError as :func:`full_jitter_delay` does.
    """
    delay = full_jitter_delay(failures, initial, maximum, rand)
    hints = [h for h in (retry_after, reset) if h is not None and not math.isnan(h)]
    if not hints:
        return delay
    hint = min(MAX_HINT_SECONDS, max(0.0, *hints))
    return max(delay, hint)


def deadline_for(event_ts_epoch: float, window_seconds: float, margin_seconds: float) -> float:
    """The last epoch second at which an event can still be sent: ``ts + window - margin``.

    For Dodo, ``window_seconds`` is 3600 (timestamps older than 1 hour are refused) and the margin
    covers clock skew and time in flight.
    """
    return event_ts_epoch + window_seconds - margin_seconds


def late_cutoff(now: float, window_seconds: float, margin_seconds: float) -> float:
    """The event time (epoch seconds) before which an event is late at ``now``: the late rule, once."""
    return now - window_seconds + margin_seconds


def is_late(event_ts_epoch: float, now: float, window_seconds: float, margin_seconds: float) -> bool:
    """True when the event is older than ``window_seconds - margin_seconds`` at ``now`` (epoch seconds)."""
    return event_ts_epoch < late_cutoff(now, window_seconds, margin_seconds)


def cap_delay_before_deadline(delay: float, now: float, earliest_deadline: float | None) -> float:
    """Shorten ``delay`` so a retry at ``now + delay`` still happens by ``earliest_deadline``.

    ``earliest_deadline`` is the smallest :func:`deadline_for` of the batch (None = no timestamps, no
    cap). The window takes precedence over the jitter and over a server hint: a retry a little early
    may be refused again, a retry too late is refused for certain. When the deadline has already
    passed, the event is late and nothing can save it, so ``delay`` is returned unchanged and the
    late-event policy decides; shortening it would only make a doomed batch spin.
    """
    if earliest_deadline is None or now >= earliest_deadline or now + delay <= earliest_deadline:
        return delay
    return max(0.0, earliest_deadline - now)


class DestinationBackoff:
    """One breaker for the whole destination, shared by every sender (thread-safe).

    States (``threshold`` defaults to 3 consecutive failures)::

        CLOSED ──(failure number `threshold`)──► OPEN ──(now >= retry_at)──► HALF-OPEN
          ▲                                        ▲                           │ try_begin(): one probe
          │                                        └──── on_failure(delay) ◄── PROBING
          └──────────────── on_success(), from any state ◄─────────────────────┘

    - CLOSED (``consecutive_failures < threshold``): everyone may send.
    - OPEN (``now < retry_at``): nobody may send.
    - HALF-OPEN: exactly one caller gets ``try_begin(now) == True`` and sends a probe; the others get
      False until that probe ends with :meth:`on_success`, :meth:`on_failure` or :meth:`end_probe`.

    Call :meth:`on_failure` for Outcome.RETRY only. DELIVERED, SPLIT, BISECT, REJECT and TOO_LARGE
    prove the destination answers: call :meth:`on_success`. The pauses (401/403/404) are the caller's
    business; a probe that ends in one is released with :meth:`end_probe`.
    ``now`` is epoch seconds (any clock works if it is used consistently).
    """

    def __init__(self, threshold: int = DEFAULT_FAILURE_THRESHOLD) -> None:
        if threshold < 1:
            raise ValueError(f"threshold must be >= 1, got {threshold}")
        self.threshold = threshold
        self.consecutive_failures = 0
        self.open_until = 0.0
        self.probe_in_flight = False
        self._lock = threading.Lock()

    @property
    def retry_at(self) -> float | None:
        """When sending may resume (epoch seconds), or None when the breaker is closed."""
        return self.open_until if self.consecutive_failures >= self.threshold else None

    def _allowed(self, now: float) -> bool:
        if self.consecutive_failures < self.threshold:
            return True
        return now >= self.open_until and not self.probe_in_flight

    def try_begin(self, now: float) -> bool:
        """Claim the right to send at ``now``; in HALF-OPEN this marks the single probe as in flight.

        Returns False when the caller must not send (OPEN, or another probe in flight).
        """
        with self._lock:
            if not self._allowed(now):
                return False
            if self.consecutive_failures >= self.threshold:
                self.probe_in_flight = True
            return True

    def end_probe(self) -> None:
        """Release a probe that ended without a verdict (e.g. the batch was abandoned at shutdown)."""
        with self._lock:
            self.probe_in_flight = False

    def on_success(self) -> None:
        """The destination answered: close the breaker and forget the failures."""
        with self._lock:
            self.consecutive_failures = 0
            self.open_until = 0.0
            self.probe_in_flight = False

    def shift_back(self, seconds: float) -> None:
        """The wall clock stepped back by ``seconds``: stay open for as long as before the step."""
        with self._lock:
            self.open_until -= seconds

    def on_failure(self, now: float, delay: float) -> float:
        """Record a transient failure at ``now``; from the threshold on, stay OPEN for ``delay`` seconds.

        ``open_until`` only ever moves later while open, so a short jittered delay from one sender
        cannot cut short a longer one from another. Returns the seconds from ``now`` until sending
        may resume: ``delay`` below the threshold, ``open_until - now`` from it on.
        """
        with self._lock:
            self.consecutive_failures += 1
            self.probe_in_flight = False
            if self.consecutive_failures < self.threshold:
                return delay
            self.open_until = max(self.open_until, now + max(0.0, delay))
            return self.open_until - now
