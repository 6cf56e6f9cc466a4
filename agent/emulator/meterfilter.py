"""The emulator's own reading of Dodo's meter filters, for ``GET /events?meter_id=...``.

Deliberately not an import of ``agent.meters.filters``: ``reconcile`` compares the agent's reading
with the emulator's, and two independent readings of the contract catch a mistake in either one.

A filter is ``{"conjunction": "and"|"or", "clauses": [...]}``; each clause is a condition
``{"key", "operator", "value"}`` or a nested filter (mixed lists allowed), at most 3 levels and 1-10
clauses a level. An event without the condition's key fails the condition (whatever the operator).
Equality needs the same JSON type (``"5"`` is not ``5``, ``true`` is not ``1``); ordering operators
need two numbers; ``contains``/``does_not_contain`` need two strings.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_ORDERING = {
    "greater_than": (1,),
    "greater_than_or_equals": (0, 1),
    "less_than": (-1,),
    "less_than_or_equals": (-1, 0),
}
_OTHER = ("equals", "not_equals", "contains", "does_not_contain")


def check_filter(spec: Any, where: str, level: int = 1) -> None:
    """Raise ValueError naming ``where`` when ``spec`` is not a filter Dodo would accept."""
    if level > 3:
        raise ValueError(f"{where}: filters nest at most 3 levels")
    if not isinstance(spec, Mapping) or spec.get("conjunction") not in ("and", "or"):
        raise ValueError(f"{where}.conjunction: must be 'and' or 'or'")
    clauses = spec.get("clauses")
    if not isinstance(clauses, list) or not clauses or len(clauses) > 10:
        raise ValueError(f"{where}.clauses: a list of 1 to 10 clauses")
    for number, clause in enumerate(clauses):
        here = f"{where}.clauses[{number}]"
        if isinstance(clause, Mapping) and "clauses" in clause:
            check_filter(clause, here, level + 1)
        elif not isinstance(clause, Mapping) or not isinstance(clause.get("key"), str):
            raise ValueError(f"{here}: a condition needs a key")
        elif clause.get("operator") not in (*_ORDERING, *_OTHER):
            raise ValueError(f"{here}.operator: not one of Dodo's operators")
        elif type(clause.get("value")) not in (str, int, float, bool):
            raise ValueError(f"{here}.value: a string, number or boolean")


def _kind(value: Any) -> str:
    if type(value) is bool:
        return "bool"
    if type(value) in (int, float):
        return "number"
    return "string" if type(value) is str else "other"


def _sign(a: Any, b: Any) -> int:
    return int(a > b) - int(a < b)


def _condition(clause: Mapping[str, Any], metadata: Mapping[str, Any]) -> bool:
    if clause["key"] not in metadata:
        return False
    have, want, operator = metadata[clause["key"]], clause["value"], str(clause["operator"])
    same_kind = _kind(have) == _kind(want)
    if operator == "equals":
        return same_kind and bool(have == want)
    if operator == "not_equals":
        return not (same_kind and bool(have == want))
    if operator in _ORDERING:
        both_numbers = _kind(have) == "number" == _kind(want)
        return both_numbers and _sign(have, want) in _ORDERING[operator]
    if _kind(have) != "string" or _kind(want) != "string":
        return False
    return bool(want in have) == (operator == "contains")


def passes(spec: Mapping[str, Any] | None, metadata: Mapping[str, Any] | None) -> bool:
    """Whether an event with ``metadata`` gets through the filter ``spec`` (None: no filter)."""
    if spec is None:
        return True
    metadata = metadata or {}
    results = (
        passes(clause, metadata) if "clauses" in clause else _condition(clause, metadata)
        for clause in spec["clauses"]
    )
    return all(results) if spec["conjunction"] == "and" else any(results)
