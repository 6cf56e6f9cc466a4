"""Repeated event_ids: inside one request (Dodo refuses it) and against the stored event (a duplicate,
a retimed retry, or a conflict). No I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from agent.errors import Problem
from agent.events import Event
from agent.timestamps import strip_timestamp


def duplicate_ids(events: Sequence[object], path: str = "events") -> list[Problem]:
    """Problems for event_ids repeated inside one request (Dodo fails the whole request for them).

    Every event holding a repeated id is named: each repeat (first in the list, naming the event it
    repeats), then the first event of each repeated id, so a request with two clashing events names
    and counts both. Takes validated Events or the raw events of a request (repeats are found even
    among events that fail validation; a raw event without a string event_id is skipped).
    """
    first: dict[str, int] = {}
    problems: list[Problem] = []
    repeated: dict[str, list[int]] = {}
    for index, event in enumerate(events):
        if isinstance(event, Event):
            event_id: object = event.event_id
        else:
            event_id = event.get("event_id") if isinstance(event, Mapping) else None
        if not isinstance(event_id, str):
            continue
        seen = first.setdefault(event_id, index)
        if seen != index:
            repeated.setdefault(event_id, []).append(index)
            problems.append(
                Problem(
                    f"{path}[{index}].event_id",
                    f"{event_id!r} repeats {path}[{seen}].event_id; Dodo refuses a request "
                    "with the same event_id twice: give each event its own id",
                )
            )
    for event_id, indexes in repeated.items():
        others = ", ".join(f"{path}[{i}]" for i in indexes)
        problems.append(
            Problem(
                f"{path}[{first[event_id]}].event_id",
                f"{event_id!r} is also the event_id of {others}; Dodo refuses a request with the same "
                "event_id twice: give each event its own id",
            )
        )
    return problems


SAME, RETIMED, CONFLICT = "same", "retimed", "conflict"
"""How a stored (or earlier) event and a new one with the same event_id compare (`compare_content`)."""


def compare_content(a_payload: str, a_stamped: bool, b_payload: str, b_stamped: bool) -> str:
    """SAME (an idempotent retry), RETIMED (the same event with another producer-given timestamp: a
    producer that rebuilt the event in a retry loop; also a duplicate, worth a note) or CONFLICT.

    A timestamp the agent stamped itself is not content: a retry of an event without a timestamp is
    stamped again with a later time, and is still the same event. Payloads are canonical (one spelling
    per instant, timestamp last), so equal events have equal text.
    """
    if a_payload == b_payload:
        return SAME
    if strip_timestamp(a_payload) != strip_timestamp(b_payload):
        return CONFLICT
    return SAME if a_stamped or b_stamped else RETIMED


def same_content(a_payload: str, a_stamped: bool, b_payload: str, b_stamped: bool) -> bool:
    """Whether two payloads are the same event (a retry, perhaps retimed) rather than a conflict."""
    return compare_content(a_payload, a_stamped, b_payload, b_stamped) != CONFLICT
