"""Tests for agent.delivery.backoff: the classify table, delays, server hints, the breaker, the window."""

from __future__ import annotations

import email.utils
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.delivery.backoff import (
    MAX_HINT_SECONDS,
    DestinationBackoff,
    Outcome,
    cap_delay_before_deadline,
    classify,
    dead_reason,
    deadline_for,
    full_jitter_delay,
    is_late,
    parse_rate_limit_reset,
    parse_retry_after,
    parse_retry_after_ms,
    retry_after_from_headers,
    retry_delay,
)

NOW = 1_700_000_000.0  # a fixed epoch second

# ---------------------------------------------------------------------------------------- classify


@pytest.mark.parametrize(
    ("status", "batch_size", "expected"),
    [
        (200, 1, Outcome.DELIVERED),
        (200, 500, Outcome.DELIVERED),
        (201, 3, Outcome.DELIVERED),
        (204, 1, Outcome.DELIVERED),
        (299, 1, Outcome.DELIVERED),
        (None, 1, Outcome.RETRY),
        (None, 1000, Outcome.RETRY),
        (408, 1, Outcome.RETRY),
        (408, 10, Outcome.RETRY),
        (409, 1, Outcome.RETRY),
        (429, 1, Outcome.RETRY),
        (429, 10, Outcome.RETRY),
        (500, 1, Outcome.RETRY),
        (502, 10, Outcome.RETRY),
        (503, 1, Outcome.RETRY),
        (504, 1, Outcome.RETRY),
        (599, 1, Outcome.RETRY),
        (401, 1, Outcome.PAUSE_AUTH),
        (401, 10, Outcome.PAUSE_AUTH),
        (403, 1, Outcome.PAUSE_AUTH),
        (403, 10, Outcome.PAUSE_AUTH),
        (404, 1, Outcome.PAUSE_NOT_FOUND),
        (404, 10, Outcome.PAUSE_NOT_FOUND),
        (413, 2, Outcome.SPLIT),
        (413, 1000, Outcome.SPLIT),
        (413, 1, Outcome.TOO_LARGE),
        (400, 2, Outcome.BISECT),
        (400, 1, Outcome.REJECT),
        (422, 50, Outcome.BISECT),
        (422, 1, Outcome.REJECT),
        (410, 5, Outcome.BISECT),
        (410, 1, Outcome.REJECT),
        (418, 1, Outcome.REJECT),
        (451, 3, Outcome.BISECT),
        # Not 2xx/4xx/5xx: transient, never lose an event.
        (100, 1, Outcome.RETRY),
        (302, 1, Outcome.RETRY),
        (600, 1, Outcome.RETRY),
    ],
)
def test_classify_table(status: int | None, batch_size: int, expected: Outcome) -> None:
    assert classify(status, batch_size) is expected


def test_classify_rejects_empty_batch() -> None:
    with pytest.raises(ValueError):
        classify(200, 0)


def test_outcome_is_a_string() -> None:
    assert isinstance(Outcome.RETRY, str)
    assert str(Outcome.RETRY) == "retry"
    assert f"{Outcome.TOO_LARGE}" == "too_large"
    assert Outcome("bisect") is Outcome.BISECT


@given(st.integers(min_value=400, max_value=499), st.integers(min_value=1, max_value=1000))
def test_every_4xx_has_a_decision(status: int, batch_size: int) -> None:
    outcome = classify(status, batch_size)
    if status in (408, 409, 429):
        assert outcome is Outcome.RETRY
    elif batch_size == 1:
        assert outcome in {Outcome.REJECT, Outcome.TOO_LARGE, Outcome.PAUSE_AUTH, Outcome.PAUSE_NOT_FOUND}
    else:
        assert outcome in {Outcome.BISECT, Outcome.SPLIT, Outcome.PAUSE_AUTH, Outcome.PAUSE_NOT_FOUND}


@pytest.mark.parametrize(
    ("status", "reason"),
    [(400, "rejected"), (422, "rejected"), (413, "too_large"), (410, "http_410"), (418, "http_418")],
)
def test_dead_reason(status: int, reason: str) -> None:
    assert dead_reason(status) == reason


# ------------------------------------------------------------------------------------------ delays


def test_full_jitter_examples() -> None:
    assert full_jitter_delay(1, 0.5, 60.0, 0.5) == 0.25
    assert full_jitter_delay(2, 0.5, 60.0, 0.5) == 0.5
    assert full_jitter_delay(4, 0.5, 60.0, 1.0) == 4.0
    assert full_jitter_delay(20, 0.5, 60.0, 0.5) == 30.0  # capped at 60 before jitter
    assert full_jitter_delay(3, 1.0, 60.0, 0.0) == 0.0
    assert full_jitter_delay(0, 1.0, 60.0, 0.5) == 0.5  # failures < 1 count as 1


def test_full_jitter_huge_failures_do_not_overflow() -> None:
    assert full_jitter_delay(10**9, 0.5, 300.0, 0.999) == pytest.approx(299.7)
    assert full_jitter_delay(1024, 1e300, 300.0, 0.5) == 150.0


@pytest.mark.parametrize(
    ("initial", "maximum", "rand"),
    [
        (-1.0, 10.0, 0.5),
        (1.0, -1.0, 0.5),
        (1.0, math.inf, 0.5),
        (math.nan, 1.0, 0.5),
        (1.0, 10.0, 1.5),
        (1.0, 10.0, -0.1),
        (1.0, 10.0, math.nan),
    ],
)
def test_full_jitter_rejects_bad_input(initial: float, maximum: float, rand: float) -> None:
    with pytest.raises(ValueError):
        full_jitter_delay(1, initial, maximum, rand)


failures_st = st.integers(min_value=-5, max_value=10**6)
initial_st = st.floats(min_value=0.0, max_value=1e6)
maximum_st = st.floats(min_value=0.0, max_value=1e6)
rand_st = st.floats(min_value=0.0, max_value=1.0, exclude_max=True)
hint_st = st.none() | st.floats(min_value=0.0, max_value=1e9)


@given(failures_st, initial_st, maximum_st, rand_st)
def test_full_jitter_within_bounds(failures: int, initial: float, maximum: float, rand: float) -> None:
    delay = full_jitter_delay(failures, initial, maximum, rand)
    assert 0.0 <= delay <= maximum


@given(st.integers(min_value=1, max_value=60), initial_st, maximum_st, rand_st)
def test_full_jitter_ceiling_never_shrinks(
    failures: int, initial: float, maximum: float, rand: float
) -> None:
    assert full_jitter_delay(failures, initial, maximum, rand) <= full_jitter_delay(
        failures + 1, initial, maximum, rand
    )


@given(failures_st, initial_st, maximum_st, rand_st, hint_st, hint_st)
def test_retry_delay_respects_hint_and_cap(
    failures: int, initial: float, maximum: float, rand: float, retry_after: float | None, reset: float | None
) -> None:
    delay = retry_delay(failures, initial, maximum, rand, retry_after, reset)
    hints = [h for h in (retry_after, reset) if h is not None]
    hint = min(MAX_HINT_SECONDS, max(hints)) if hints else 0.0
    assert delay >= hint  # the server's hint is a minimum ...
    assert 0.0 <= delay <= max(maximum, hint)  # ... and nothing else exceeds the cap


def test_retry_delay_examples() -> None:
    assert retry_delay(1, 1.0, 60.0, 0.5, None, None) == 0.5
    assert retry_delay(1, 1.0, 60.0, 0.5, 10.0, None) == 10.0
    assert retry_delay(1, 1.0, 60.0, 0.5, None, 7.0) == 7.0
    assert retry_delay(1, 1.0, 60.0, 0.5, 3.0, 7.0) == 7.0
    assert retry_delay(10, 1.0, 60.0, 0.9, 3.0, None) == pytest.approx(54.0)  # jitter above the hint
    assert retry_delay(1, 1.0, 60.0, 0.5, 86_400.0, None) == MAX_HINT_SECONDS
    assert retry_delay(1, 1.0, 60.0, 0.5, math.nan, None) == 0.5


# ---------------------------------------------------------------------------------------- hints


@pytest.mark.parametrize(
    ("value", "expected"),
    [("120", 120.0), (" 5 ", 5.0), ("0", 0.0), ("1.5", 1.5), (".5", 0.5)],
)
def test_retry_after_seconds(value: str, expected: float) -> None:
    assert parse_retry_after(value, NOW) == expected


def test_retry_after_http_date() -> None:
    future = email.utils.formatdate(NOW + 90, usegmt=True)
    assert parse_retry_after(future, NOW) == pytest.approx(90.0)
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", NOW) == 0.0  # in the past: clamped
    # NOW is Tue, 14 Nov 2023 22:13:20 GMT. A numeric zone, and "-0000" (naive: taken as UTC).
    assert parse_retry_after("Tue, 14 Nov 2023 23:14:20 +0100", NOW) == 60.0
    assert parse_retry_after("Tue, 14 Nov 2023 22:13:50 -0000", NOW) == 30.0


@pytest.mark.parametrize(
    "value", [None, "", "soon", "-5", "1e3", "inf", "nan", "1_000", "12abc", "Wed, 99", "9" * 400]
)
def test_retry_after_garbage(value: str | None) -> None:
    assert parse_retry_after(value, NOW) is None


@given(st.text(max_size=40))
def test_retry_after_never_raises(value: str) -> None:
    result = parse_retry_after(value, NOW)
    assert result is None or result >= 0.0


def test_retry_after_ms() -> None:
    assert parse_retry_after_ms("1500") == 1.5
    assert parse_retry_after_ms("250.0") == 0.25
    assert parse_retry_after_ms(None) is None
    assert parse_retry_after_ms("x") is None


def test_retry_after_from_headers() -> None:
    assert retry_after_from_headers({"Retry-After": "7"}, NOW) == 7.0
    assert retry_after_from_headers({"retry-after": "7", "Retry-After-Ms": "2500"}, NOW) == 2.5
    assert retry_after_from_headers({"retry-after": "7", "retry-after-ms": "junk"}, NOW) == 7.0
    assert retry_after_from_headers({"X-RateLimit-Reset": "30"}, NOW) is None
    assert retry_after_from_headers({}, NOW) is None


def test_rate_limit_reset_delta_and_epoch() -> None:
    assert parse_rate_limit_reset("30", NOW) == 30.0
    assert parse_rate_limit_reset("0", NOW) == 0.0
    assert parse_rate_limit_reset(str(int(NOW) + 45), NOW) == 45.0
    assert parse_rate_limit_reset(str(int(NOW) - 10), NOW) == 0.0  # already reset
    assert parse_rate_limit_reset(str(int(NOW * 1000) + 12_000), NOW) == pytest.approx(12.0)  # epoch millis
    assert parse_rate_limit_reset(None, NOW) is None
    assert parse_rate_limit_reset("tomorrow", NOW) is None
    assert parse_rate_limit_reset("-3", NOW) is None
    assert parse_rate_limit_reset("9" * 400, NOW) is None


# ------------------------------------------------------------------------------------- the breaker


def test_breaker_stays_closed_below_threshold() -> None:
    b = DestinationBackoff(threshold=3)
    assert b.try_begin(NOW) and b.retry_at is None
    assert b.on_failure(NOW, 5.0) == 5.0
    assert b.on_failure(NOW, 5.0) == 5.0
    assert b.consecutive_failures == 2
    assert b.try_begin(NOW) and b.retry_at is None
    # Below the threshold nobody is a probe: any number of senders may go.
    assert b.try_begin(NOW) and b.try_begin(NOW)
    assert not b.probe_in_flight


def test_breaker_opens_at_threshold_then_allows_one_probe() -> None:
    b = DestinationBackoff(threshold=3)
    b.on_failure(NOW, 1.0)
    b.on_failure(NOW, 1.0)
    assert b.on_failure(NOW, 10.0) == 10.0
    assert b.retry_at == NOW + 10.0
    assert not b.try_begin(NOW)
    assert not b.try_begin(NOW + 9.99)
    # HALF-OPEN: one probe, the others wait.
    assert not b.probe_in_flight
    assert b.try_begin(NOW + 10.0)
    assert b.probe_in_flight
    assert not b.try_begin(NOW + 11.0)
    assert b.probe_in_flight  # a refused try_begin claims nothing


def test_breaker_probe_success_closes() -> None:
    b = DestinationBackoff(threshold=1)
    b.on_failure(NOW, 10.0)
    assert b.try_begin(NOW + 10.0)
    b.on_success()
    assert b.consecutive_failures == 0 and b.retry_at is None and not b.probe_in_flight
    assert b.try_begin(NOW + 10.0) and b.try_begin(NOW + 10.0)  # closed: no probe marking
    assert not b.probe_in_flight


def test_breaker_probe_failure_reopens() -> None:
    b = DestinationBackoff(threshold=2)
    b.on_failure(NOW, 1.0)
    b.on_failure(NOW, 4.0)
    assert b.try_begin(NOW + 4.0)
    assert b.on_failure(NOW + 5.0, 20.0) == 20.0
    assert not b.probe_in_flight
    assert b.consecutive_failures == 3
    assert not b.try_begin(NOW + 24.0)
    assert b.try_begin(NOW + 25.0)


def test_breaker_end_probe_releases_without_verdict() -> None:
    b = DestinationBackoff(threshold=1)
    b.on_failure(NOW, 1.0)
    assert b.try_begin(NOW + 1.0)
    assert not b.try_begin(NOW + 1.0)
    b.end_probe()
    assert b.consecutive_failures == 1
    assert b.try_begin(NOW + 1.0)


def test_breaker_open_until_never_moves_earlier() -> None:
    b = DestinationBackoff(threshold=1)
    assert b.on_failure(NOW, 60.0) == 60.0
    # A concurrent sender's failure with a shorter jittered delay does not cut the backoff short.
    assert b.on_failure(NOW + 1.0, 2.0) == 59.0
    assert b.retry_at == NOW + 60.0


def test_breaker_success_resets_the_count() -> None:
    b = DestinationBackoff(threshold=3)
    b.on_failure(NOW, 1.0)
    b.on_failure(NOW, 1.0)
    b.on_success()
    b.on_failure(NOW, 1.0)
    b.on_failure(NOW, 1.0)
    assert b.try_begin(NOW) and b.retry_at is None


def test_breaker_rejects_bad_threshold() -> None:
    with pytest.raises(ValueError):
        DestinationBackoff(threshold=0)


# -------------------------------------------------------------------------------------- the window


def test_deadline_and_late() -> None:
    ts = NOW - 3000.0
    assert deadline_for(ts, 3600.0, 120.0) == ts + 3480.0
    assert not is_late(ts, NOW, 3600.0, 120.0)  # 3000 s old, limit 3480 s
    assert not is_late(ts, ts + 3480.0, 3600.0, 120.0)  # exactly at the deadline: still in time
    assert is_late(ts, ts + 3480.001, 3600.0, 120.0)
    assert not is_late(NOW + 60.0, NOW, 3600.0, 120.0)  # a future timestamp is not late


def test_cap_delay_before_deadline() -> None:
    assert cap_delay_before_deadline(30.0, NOW, NOW + 100.0) == 30.0  # fits
    assert cap_delay_before_deadline(300.0, NOW, NOW + 100.0) == 100.0  # shortened to the deadline
    assert cap_delay_before_deadline(300.0, NOW, None) == 300.0  # no timestamps, no cap
    assert cap_delay_before_deadline(300.0, NOW, NOW) == 300.0  # already late: the late policy decides
    assert cap_delay_before_deadline(300.0, NOW, NOW - 5.0) == 300.0


@given(
    st.floats(min_value=0.0, max_value=1e6),
    st.floats(min_value=-1e5, max_value=1e5),
)
def test_cap_delay_property(delay: float, deadline_offset: float) -> None:
    deadline = NOW + deadline_offset
    capped = cap_delay_before_deadline(delay, NOW, deadline)
    assert 0.0 <= capped <= delay
    if deadline > NOW:
        assert NOW + capped <= deadline + 1e-6  # never deferred past a deadline it could meet
    else:
        assert capped == delay
