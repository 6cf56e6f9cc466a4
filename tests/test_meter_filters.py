"""Meter filters in Dodo's shape: a hand-computed table of cases, and config errors naming meter and path.

Every expected value below was worked out by hand from the semantics in the issue (and printed as
the assumptions), not produced by the code under test.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from agent import config
from agent.meters import Meter, MeterChecker, parse_filter
from agent.meters.filters import FilterError, filter_to_json
from tests.test_meters import test_config_errors_name_the_key as expect_config_error


def cond(key: str, operator: str, value: Any) -> dict[str, Any]:
    return {"key": key, "operator": operator, "value": value}


def all_of(*clauses: dict[str, Any]) -> dict[str, Any]:
    return {"conjunction": "and", "clauses": list(clauses)}


def any_of(*clauses: dict[str, Any]) -> dict[str, Any]:
    return {"conjunction": "or", "clauses": list(clauses)}


# (filter, metadata, expected): each line one hand-computed case.
CASES: list[tuple[dict[str, Any], dict[str, Any], bool]] = [
    # equals: same type only, case-sensitive
    (all_of(cond("model", "equals", "gpt-4o")), {"model": "gpt-4o"}, True),
    (all_of(cond("model", "equals", "gpt-4o")), {"model": "GPT-4o"}, False),
    (all_of(cond("model", "equals", "gpt-4o")), {}, False),
    (all_of(cond("n", "equals", 5)), {"n": 5}, True),
    (all_of(cond("n", "equals", 5)), {"n": 5.0}, True),
    (all_of(cond("n", "equals", 5)), {"n": "5"}, False),
    (all_of(cond("n", "equals", "5")), {"n": 5}, False),
    (all_of(cond("flag", "equals", True)), {"flag": True}, True),
    (all_of(cond("flag", "equals", True)), {"flag": 1}, False),
    (all_of(cond("n", "equals", 1)), {"n": True}, False),
    # not_equals: a missing key fails it too
    (all_of(cond("region", "not_equals", "eu")), {"region": "us"}, True),
    (all_of(cond("region", "not_equals", "eu")), {"region": "eu"}, False),
    (all_of(cond("region", "not_equals", "eu")), {}, False),
    (all_of(cond("n", "not_equals", 5)), {"n": "5"}, True),
    # ordering operators: numbers only
    (all_of(cond("n", "greater_than", 10)), {"n": 11}, True),
    (all_of(cond("n", "greater_than", 10)), {"n": 10}, False),
    (all_of(cond("n", "greater_than", 10)), {"n": "11"}, False),
    (all_of(cond("n", "greater_than", 0)), {"n": True}, False),
    (all_of(cond("n", "greater_than_or_equals", 10)), {"n": 10}, True),
    (all_of(cond("n", "greater_than_or_equals", 10)), {"n": 9.99}, False),
    (all_of(cond("n", "less_than", 10)), {"n": 9.5}, True),
    (all_of(cond("n", "less_than", 10)), {"n": 10}, False),
    (all_of(cond("n", "less_than", 10)), {}, False),
    (all_of(cond("n", "less_than_or_equals", 10)), {"n": 10}, True),
    (all_of(cond("n", "less_than_or_equals", 10)), {"n": 10.5}, False),
    # contains / does_not_contain: substrings of strings, case-sensitive
    (all_of(cond("model", "contains", "4o")), {"model": "gpt-4o-mini"}, True),
    (all_of(cond("model", "contains", "4O")), {"model": "gpt-4o-mini"}, False),
    (all_of(cond("model", "contains", "4")), {"model": 4}, False),
    (all_of(cond("model", "does_not_contain", "mini")), {"model": "gpt-4o"}, True),
    (all_of(cond("model", "does_not_contain", "mini")), {"model": "gpt-4o-mini"}, False),
    (all_of(cond("model", "does_not_contain", "mini")), {}, False),
    (all_of(cond("model", "does_not_contain", "mini")), {"model": 7}, False),
    # and / or
    (all_of(cond("a", "equals", 1), cond("b", "equals", 2)), {"a": 1, "b": 2}, True),
    (all_of(cond("a", "equals", 1), cond("b", "equals", 2)), {"a": 1, "b": 3}, False),
    (any_of(cond("a", "equals", 1), cond("b", "equals", 2)), {"a": 0, "b": 2}, True),
    (any_of(cond("a", "equals", 1), cond("b", "equals", 2)), {"a": 0, "b": 0}, False),
    (any_of(cond("a", "equals", 1), cond("b", "equals", 2)), {}, False),
    # nesting, conditions and filters mixed in one list (the issue's own example)
    (
        all_of(
            cond("model", "equals", "gpt-4o"),
            any_of(cond("region", "equals", "eu"), cond("region", "equals", "us")),
        ),
        {"model": "gpt-4o", "region": "us"},
        True,
    ),
    (
        all_of(
            cond("model", "equals", "gpt-4o"),
            any_of(cond("region", "equals", "eu"), cond("region", "equals", "us")),
        ),
        {"model": "gpt-4o", "region": "apac"},
        False,
    ),
    (
        all_of(
            cond("model", "equals", "gpt-4o"),
            any_of(cond("region", "equals", "eu"), cond("region", "equals", "us")),
        ),
        {"region": "eu"},
        False,
    ),
    # three levels: or( and(a=1, or(b>5, c contains x)), d=true )
    (
        any_of(
            all_of(cond("a", "equals", 1), any_of(cond("b", "greater_than", 5), cond("c", "contains", "x"))),
            cond("d", "equals", True),
        ),
        {"a": 1, "b": 2, "c": "box"},
        True,
    ),
    (
        any_of(
            all_of(cond("a", "equals", 1), any_of(cond("b", "greater_than", 5), cond("c", "contains", "x"))),
            cond("d", "equals", True),
        ),
        {"a": 1, "b": 2, "c": "bag"},
        False,
    ),
    (
        any_of(
            all_of(cond("a", "equals", 1), any_of(cond("b", "greater_than", 5), cond("c", "contains", "x"))),
            cond("d", "equals", True),
        ),
        {"a": 2, "d": True},
        True,
    ),
]


@pytest.mark.parametrize(("spec", "metadata", "expected"), CASES)
def test_filter_table(spec: dict[str, Any], metadata: dict[str, Any], expected: bool) -> None:
    assert parse_filter(spec).matches(metadata) is expected
    assert filter_to_json(parse_filter(spec)) == spec


def deep(levels: int) -> dict[str, Any]:
    spec = all_of(cond("a", "equals", 1))
    for _ in range(levels - 1):
        spec = all_of(spec)
    return spec


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            all_of(cond("a", "eq", 1)),
            "filter.clauses[0].operator 'eq' is unknown: use one of equals, not_equals",
        ),
        (deep(4), "filter.clauses[0].clauses[0].clauses[0]: nested 4 levels deep; Dodo allows at most 3"),
        (
            all_of(*[cond("a", "equals", i) for i in range(11)]),
            "filter.clauses has 11: a filter takes 1 to 10",
        ),
        ({"conjunction": "and", "clauses": []}, "filter.clauses has 0: a filter takes 1 to 10"),
        (
            {"conjunction": "xor", "clauses": [cond("a", "equals", 1)]},
            "filter.conjunction = 'xor': use \"and\"",
        ),
        (
            all_of(cond("a", "greater_than", "5")),
            "filter.clauses[0].value = '5': greater_than compares numbers",
        ),
        (all_of(cond("a", "contains", 5)), "filter.clauses[0].value = 5: contains looks inside strings"),
        (all_of({"key": "a", "operater": "equals", "value": 1}), "filter.clauses[0].operater: unknown key"),
        (all_of({"key": "a", "operator": "equals"}), "filter.clauses[0].value: required"),
    ],
)
def test_invalid_filters_name_the_path(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(FilterError) as caught:
        parse_filter(spec)
    assert message in str(caught.value)


def test_three_levels_and_ten_clauses_are_fine() -> None:
    parse_filter(deep(3))
    parse_filter(all_of(*[cond("a", "equals", i) for i in range(10)]))


ISSUE_METER = """
[[meters]]
name = "tokens"
event_name = "llm.chat"
aggregation = "sum"
key = "totalTokens"
[meters.filter]
conjunction = "and"
clauses = [
  { key = "model", operator = "equals", value = "gpt-4o" },
  { conjunction = "or", clauses = [
      { key = "region", operator = "equals", value = "eu" },
      { key = "region", operator = "equals", value = "us" } ] },
]
"""
"""The issue's example meter, as a user writes it in the config."""
TOML_METER = '[[meters]]\nname = "api"\nevent_name = "api.call"\naggregation = "count"\n' + ISSUE_METER


def test_config_reads_the_issue_example(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(TOML_METER)
    settings = config.load(path, environ={})
    spec = settings.meters[1]
    assert spec.filter == all_of(
        cond("model", "equals", "gpt-4o"),
        any_of(cond("region", "equals", "eu"), cond("region", "equals", "us")),
    )
    assert settings.meters[0].filter is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            TOML_METER.replace('operator = "equals", value = "gpt-4o"', 'operator = "eq", value = "gpt-4o"'),
            "[[meters]] #2 (tokens) filter.clauses[0].operator 'eq' is unknown",
        ),
        (
            '[[meters]]\nname = "deep"\nevent_name = "x"\naggregation = "count"\n[meters.filter]\n'
            'conjunction = "and"\nclauses = [{ conjunction = "and", clauses = '
            '[{ conjunction = "or", clauses = [{ conjunction = "and", clauses = '
            '[{ key = "a", operator = "equals", value = 1 }] }] }] }]\n',
            "[[meters]] #1 (deep) filter.clauses[0].clauses[0].clauses[0]: nested 4 levels deep",
        ),
        (
            '[[meters]]\nevent_name = "x"\naggregation = "count"\n'
            '[meters.filter]\nconjunction = "or"\nclauses = ['
            + ", ".join(f'{{ key = "a", operator = "equals", value = {i} }}' for i in range(11))
            + "]\n",
            "[[meters]] #1 filter.clauses has 11: a filter takes 1 to 10 clauses",
        ),
    ],
)
def test_config_filter_errors_name_meter_and_path(tmp_path: Path, text: str, message: str) -> None:
    expect_config_error(tmp_path, text, message)


def test_the_enqueue_check_does_not_warn_about_what_a_filter_excludes() -> None:
    from agent.events import validate

    spec = all_of(cond("model", "equals", "gpt-4o"))
    checker = MeterChecker([Meter("llm.chat", "sum", "totalTokens", "tokens", "m1", spec)])

    def check(**metadata: Any) -> list[str]:
        body = {"event_id": "e1", "customer_id": "cus_1", "event_name": "llm.chat", "metadata": metadata}
        return [p.message for p in checker([validate(body, time.time())])]

    # The filter excludes it on purpose: no tokens key needed, nothing flagged.
    assert check(model="gpt-3.5") == []
    # The filter lets it through, and the meter cannot sum it: flagged.
    assert any("totalTokens" in m for m in check(model="gpt-4o"))
    assert check(model="gpt-4o", totalTokens=5) == []


def test_pulled_filters_are_cached_and_read_back() -> None:
    from agent.errors import DeliveryError
    from agent.meters import meter_from_api, meter_from_row, meter_to_row

    spec = all_of(cond("model", "equals", "gpt-4o"))
    item: dict[str, Any] = {"id": "m1", "name": "tokens", "event_name": "llm.chat"}
    item |= {"aggregation": {"type": "sum", "key": "n"}, "filter": spec}
    meter = meter_from_api(item)
    back = meter_from_row(meter_to_row(meter, 0, 1))
    assert back == meter and back.filter == spec
    assert back.passes({"model": "gpt-4o"}) and not back.passes({"model": "claude"})
    with pytest.raises(DeliveryError, match=r"meter 'tokens' with a filter we cannot read: filter\.clauses"):
        meter_from_api(item | {"filter": {"conjunction": "and", "clauses": []}})
