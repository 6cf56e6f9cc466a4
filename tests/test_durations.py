"""`agent.durations.parse_since` is the one reading of `--since` (dlq, meters check, verify, billing,
`/v1/dlq?since=`): the forms each command accepted before they shared it are all still read."""

from __future__ import annotations

import pytest

from agent import durations
from agent.cli.meters import parse_since as meters_since
from agent.timestamps import US


@pytest.mark.parametrize(
    ("text", "ago_seconds"),
    [("90", 90), ("90s", 90), ("30m", 1800), ("1 h", 3600), ("2d", 172800), ("1h30m", 5400), ("2w", 1209600)],
)
def test_durations_ago_in_microseconds(text: str, ago_seconds: int) -> None:
    now = 2_000_000.0
    assert durations.parse_since(text, now) == (2_000_000 - ago_seconds) * US
    assert meters_since(text, now) == 2_000_000.0 - ago_seconds  # the meters commands read seconds


def test_date_times_naive_is_utc() -> None:
    assert durations.parse_since("2026-01-01T00:00:00Z", 0) == 1767225600 * US
    assert durations.parse_since("2026-01-01T00:00:00", 0) == 1767225600 * US
    assert durations.parse_since("2026-01-01T01:00:00+01:00", 0) == 1767225600 * US


@pytest.mark.parametrize("text", ["yesterday", "-5", "inf", "nan", "5x", ""])
def test_anything_else_is_refused_naming_the_forms(text: str) -> None:
    with pytest.raises(ValueError, match=r"neither a duration \(90s, 30m, 2h, 7d, 1h30m\) nor an ISO 8601"):
        durations.parse_since(text, 1000.0)


def test_the_meters_commands_raise_a_usage_error() -> None:
    import click

    with pytest.raises(click.BadParameter, match="'soon' is neither a duration"):
        meters_since("soon", 1000.0)
