"""Tests for agent.delivery.pacing.TokenBucket, all with injected time and no real sleeps."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.delivery.pacing import TokenBucket


class FakeClock:
    """A clock whose sleep only advances time."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    async def async_sleep(self, seconds: float) -> None:
        self.sleep(seconds)


def test_burst_then_rate() -> None:
    bucket = TokenBucket(rate_per_minute=60, burst=3)  # one token a second
    t = 100.0
    assert [bucket.try_acquire(t) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.try_acquire(t) == pytest.approx(1.0)
    assert bucket.try_acquire(t + 0.25) == pytest.approx(0.75)
    assert bucket.try_acquire(t + 1.0) == 0.0
    assert bucket.try_acquire(t + 1.0) == pytest.approx(1.0)
    # A long idle refills only up to the burst.
    assert [bucket.try_acquire(t + 1000.0) for _ in range(4)][:3] == [0.0, 0.0, 0.0]
    assert bucket.try_acquire(t + 1000.0) > 0.0


def test_clock_stepping_back_is_standing_still() -> None:
    bucket = TokenBucket(rate_per_minute=60, burst=1)
    assert bucket.try_acquire(100.0) == 0.0
    assert bucket.try_acquire(50.0) > 0.0
    assert bucket.try_acquire(100.5) == pytest.approx(0.5)


def test_slow_down_pauses_empties_and_halves() -> None:
    bucket = TokenBucket(rate_per_minute=120, burst=5)  # two tokens a second
    assert bucket.try_acquire(0.0) == 0.0
    bucket.slow_down(0.0, 10.0)
    assert bucket.rate_per_minute == 60.0
    assert bucket.blocked_until == 10.0
    assert bucket.try_acquire(0.0) == pytest.approx(10.0)
    assert bucket.try_acquire(9.0) == pytest.approx(1.0)
    # The pause earned no tokens: after it, tokens come at the halved rate (one a second).
    assert bucket.try_acquire(10.0) == pytest.approx(1.0)
    assert bucket.try_acquire(11.0) == 0.0
    assert bucket.try_acquire(11.0) == pytest.approx(1.0)


def test_overlapping_slow_downs_keep_the_later_pause() -> None:
    bucket = TokenBucket(rate_per_minute=240, burst=40)
    bucket.slow_down(0.0, 30.0)
    bucket.slow_down(1.0, 5.0)
    assert bucket.blocked_until == 30.0
    assert bucket.rate_per_minute == 60.0


def test_slow_down_floor_and_additive_recovery() -> None:
    bucket = TokenBucket(rate_per_minute=240, burst=10)
    for _ in range(20):
        bucket.slow_down(0.0, 0.0)
    assert bucket.rate_per_minute == 1.0  # the floor: slow, never stopped
    assert bucket.recovery_per_success == 12.0
    bucket.on_success()
    assert bucket.rate_per_minute == 13.0
    for _ in range(100):
        bucket.on_success()
    assert bucket.rate_per_minute == 240.0  # never above the configured rate


def test_recovery_from_one_halving_is_gradual() -> None:
    bucket = TokenBucket(rate_per_minute=240, burst=10, recovery_per_success=30)
    bucket.slow_down(0.0, 0.0)
    assert bucket.rate_per_minute == 120.0
    rates = []
    for _ in range(5):
        bucket.on_success()
        rates.append(bucket.rate_per_minute)
    assert rates == [150.0, 180.0, 210.0, 240.0, 240.0]


def test_custom_floor() -> None:
    bucket = TokenBucket(rate_per_minute=100, burst=1, min_rate_per_minute=30)
    bucket.slow_down(0.0, 0.0)
    bucket.slow_down(0.0, 0.0)
    assert bucket.rate_per_minute == 30.0


def test_unlimited() -> None:
    bucket = TokenBucket(rate_per_minute=0, burst=0)
    assert all(bucket.try_acquire(5.0) == 0.0 for _ in range(10_000))
    bucket.on_success()
    # The server's explicit pause is still honoured; there is no rate to halve.
    bucket.slow_down(5.0, 3.0)
    assert bucket.try_acquire(6.0) == pytest.approx(2.0)
    assert bucket.try_acquire(8.0) == 0.0
    assert bucket.rate_per_minute == 0.0
    assert TokenBucket(rate_per_minute=-1, burst=5).try_acquire(0.0) == 0.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rate_per_minute": 60, "burst": 0},
        {"rate_per_minute": 60, "burst": 1, "min_rate_per_minute": 0},
        {"rate_per_minute": 60, "burst": 1, "recovery_per_success": -1},
    ],
)
def test_bad_configuration(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        TokenBucket(**kwargs)  # type: ignore[arg-type]


def test_acquire_loops_with_injected_clock_and_sleep() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate_per_minute=60, burst=2)
    assert bucket.acquire(clock, clock.sleep)
    assert bucket.acquire(clock, clock.sleep)
    assert clock.sleeps == []
    assert bucket.acquire(clock, clock.sleep)
    assert clock.sleeps == [pytest.approx(1.0)]


def test_acquire_timeout() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate_per_minute=60, burst=1)
    assert bucket.acquire(clock, clock.sleep)
    bucket.slow_down(clock(), 30.0)
    assert not bucket.acquire(clock, clock.sleep, timeout=5.0)
    assert sum(clock.sleeps) == pytest.approx(5.0)


def test_acquire_stops_when_sleep_says_so() -> None:
    stop = threading.Event()
    stop.set()  # Event.wait returns True at once: shutdown
    clock = FakeClock()
    bucket = TokenBucket(rate_per_minute=60, burst=1)
    assert bucket.acquire(clock, stop.wait)
    assert not bucket.acquire(clock, stop.wait)


def test_threads_share_the_bucket() -> None:
    bucket = TokenBucket(rate_per_minute=60, burst=100)
    taken: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(50):
            wait = bucket.try_acquire(0.0)
            with lock:
                taken.append(wait)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(1 for w in taken if w == 0.0) == 100  # exactly the burst, no token handed out twice


@given(
    st.floats(min_value=1.0, max_value=10_000.0),
    st.integers(min_value=1, max_value=50),
    st.lists(st.floats(min_value=0.0, max_value=5.0), min_size=1, max_size=200),
)
def test_never_more_than_burst_plus_rate(rate: float, burst: int, steps: list[float]) -> None:
    bucket = TokenBucket(rate_per_minute=rate, burst=burst)
    now = 0.0
    granted = 0
    for step in steps:
        now += step
        wait = bucket.try_acquire(now)
        assert wait >= 0.0
        granted += wait == 0.0
    assert granted <= burst + now * rate / 60.0 + 1e-6
