"""Meter filters in Dodo's own shape: reading (with errors that name the path) and evaluating.

A filter is `{"conjunction": "and" | "or", "clauses": [...]}`; a clause is a condition
`{"key": K, "operator": OP, "value": V}` or a nested filter. Dodo's schema says a clauses list holds
conditions or filters, its own example mixes them: both are read. Limits: 3 levels, 1-10 clauses a level.

Evaluation, where Dodo's docs are silent (ASSUMPTIONS is printed by `meters preview` and `reconcile`):
- an event that lacks a filtered key fails that condition, `not_equals` and `does_not_contain` included;
- `equals` / `not_equals` compare values of the same type: the string "5" is not the number 5, and
  `true` is not 1; case-sensitive;
- the four ordering operators compare numbers only (a string "5" fails them);
- `contains` / `does_not_contain` look for a substring in string values only (any other value fails).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

OPERATORS = (
    "equals",
    "not_equals",
    "greater_than",
    "greater_than_or_equals",
    "less_than",
    "less_than_or_equals",
    "contains",
    "does_not_contain",
)
NUMERIC_OPERATORS = frozenset(OPERATORS[2:6])
STRING_OPERATORS = frozenset(OPERATORS[6:])
CONJUNCTIONS = ("and", "or")
MAX_DEPTH = 3
MAX_CLAUSES = 10

ASSUMPTIONS = (
    "an event that lacks a filtered key fails that condition (not_equals and does_not_contain included)",
    'equals and not_equals compare values of the same type: the string "5" is not the number 5, '
    "true is not 1; strings compare case-sensitively",
    "greater_than, greater_than_or_equals, less_than and less_than_or_equals compare numbers only",
    "contains and does_not_contain apply to string values only",
)

Metadata = Mapping[str, object]
Predicate = Callable[[Metadata], bool]


class FilterError(ValueError):
    """A filter that is not in Dodo's shape. The message starts with the path of the bad part."""


@dataclass(frozen=True, slots=True)
class Condition:
    key: str
    operator: str
    value: str | int | float | bool


@dataclass(frozen=True, slots=True)
class Filter:
    """A parsed filter; `matches(metadata)` evaluates it (compiled once, at parse time)."""

    conjunction: str
    clauses: tuple[Condition | Filter, ...]
    predicate: Predicate

    def matches(self, metadata: Metadata) -> bool:
        return self.predicate(metadata)


def parse_filter(value: object, path: str = "filter", *, strict: bool = True) -> Filter:
    """Read a filter in Dodo's shape. Raises FilterError naming `path` and what to change.

    `strict` (the config) also refuses a value an operator can never match (a numeric operator with
    a string, `contains` with a number); a pulled meter is read as Dodo returns it.
    """
    return _parse(value, path, 1, strict)


def _parse(value: object, path: str, depth: int, strict: bool) -> Filter:
    if depth > MAX_DEPTH:
        raise FilterError(f"{path}: nested {depth} levels deep; Dodo allows at most {MAX_DEPTH} levels")
    if not isinstance(value, Mapping):
        raise FilterError(f"{path}: must be a table with conjunction and clauses")
    unknown = sorted(set(value) - {"conjunction", "clauses"})
    if unknown:
        raise FilterError(f"{path}.{unknown[0]}: unknown key; a filter has conjunction and clauses")
    conjunction = value.get("conjunction")
    if conjunction not in CONJUNCTIONS:
        shown = "missing" if conjunction is None else f"= {conjunction!r}"
        raise FilterError(f'{path}.conjunction {shown}: use "and" or "or"')
    clauses = value.get("clauses")
    if not isinstance(clauses, list) or not 1 <= len(clauses) <= MAX_CLAUSES:
        count = f"has {len(clauses)}" if isinstance(clauses, list) else "is missing or not a list"
        raise FilterError(f"{path}.clauses {count}: a filter takes 1 to {MAX_CLAUSES} clauses")
    parsed: list[Condition | Filter] = []
    for index, clause in enumerate(clauses):
        where = f"{path}.clauses[{index}]"
        if isinstance(clause, Mapping) and ("clauses" in clause or "conjunction" in clause):
            parsed.append(_parse(clause, where, depth + 1, strict))
        else:
            parsed.append(_condition(clause, where, strict))
    predicates = tuple(c.predicate if isinstance(c, Filter) else _compile(c) for c in parsed)
    return Filter(str(conjunction), tuple(parsed), _combine(str(conjunction), predicates))


def _combine(conjunction: str, predicates: tuple[Predicate, ...]) -> Predicate:
    # Plain loops, and one clause as itself: the preview runs this for every event of a meter's name.
    if len(predicates) == 1:
        return predicates[0]
    if conjunction == "and":

        def every(metadata: Metadata) -> bool:
            for predicate in predicates:  # noqa: SIM110 (a loop: no generator per event)
                if not predicate(metadata):
                    return False
            return True

        return every

    def some(metadata: Metadata) -> bool:
        for predicate in predicates:  # noqa: SIM110 (a loop: no generator per event)
            if predicate(metadata):
                return True
        return False

    return some


def _condition(value: object, path: str, strict: bool) -> Condition:
    if not isinstance(value, Mapping):
        raise FilterError(f"{path}: must be a condition {{key, operator, value}} or a nested filter")
    unknown = sorted(set(value) - {"key", "operator", "value"})
    if unknown:
        raise FilterError(f"{path}.{unknown[0]}: unknown key; a condition has key, operator and value")
    key, operator, want = value.get("key"), value.get("operator"), value.get("value")
    if not isinstance(key, str) or not key:
        raise FilterError(f"{path}.key: required, the metadata key to test")
    if operator not in OPERATORS:
        shown = "missing" if operator is None else f"{operator!r} is unknown"
        raise FilterError(f"{path}.operator {shown}: use one of {', '.join(OPERATORS)}")
    if not isinstance(want, str | int | float):  # bool is an int
        raise FilterError(f"{path}.value: required, a string, number or boolean")
    if strict and operator in NUMERIC_OPERATORS and not _is_number(want):
        raise FilterError(f"{path}.value = {want!r}: {operator} compares numbers; write a number")
    if strict and operator in STRING_OPERATORS and not isinstance(want, str):
        raise FilterError(f"{path}.value = {want!r}: {operator} looks inside strings; write a string")
    return Condition(key, str(operator), want)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


_MISSING: Any = object()
_NUMBER_TYPES = (int, float)


def _kind(value: object) -> type:
    """The JSON type a value compares as: bool, a number (int and float alike) or str."""
    kind = type(value)
    return float if kind is int else kind


def _compile(condition: Condition) -> Predicate:
    """One condition as a predicate, specialised on the operator and the value's type (the preview
    calls it once per event). Metadata values are what JSON decodes to: str, int, float, bool."""
    key, operator, want = condition.key, condition.operator, condition.value
    if operator in ("equals", "not_equals"):
        kind, equal = _kind(want), operator == "equals"
        return lambda m: (
            (v := m.get(key, _MISSING)) is not _MISSING and ((_kind(v) is kind and v == want) is equal)
        )
    if operator in NUMERIC_OPERATORS:
        if not _is_number(want):
            return lambda m: False
        number: Any = want
        if operator == "greater_than":
            return lambda m: type(v := m.get(key)) in _NUMBER_TYPES and v > number
        if operator == "greater_than_or_equals":
            return lambda m: type(v := m.get(key)) in _NUMBER_TYPES and v >= number
        if operator == "less_than":
            return lambda m: type(v := m.get(key)) in _NUMBER_TYPES and v < number
        return lambda m: type(v := m.get(key)) in _NUMBER_TYPES and v <= number
    if not isinstance(want, str):
        return lambda m: False
    text = want
    if operator == "contains":
        return lambda m: type(v := m.get(key)) is str and text in v
    return lambda m: type(v := m.get(key)) is str and text not in v


def filter_to_json(value: Filter) -> dict[str, Any]:
    """The filter back in Dodo's shape (what is cached and printed)."""
    return {
        "conjunction": value.conjunction,
        "clauses": [
            filter_to_json(c)
            if isinstance(c, Filter)
            else {"key": c.key, "operator": c.operator, "value": c.value}
            for c in value.clauses
        ],
    }
