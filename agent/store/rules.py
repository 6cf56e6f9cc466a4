"""Rules every store backend shares, with no driver behind them: repeated event_ids inside a call and
against the stored rows, the restamped payload of a replay, a row as an EventRecord, shared kv keys.

A backend runs its own SQL and hands the results here, so SQLite and PostgreSQL cannot drift apart on
what is a duplicate, a retimed duplicate or a conflict.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Set
from datetime import UTC, datetime
from typing import Any

from agent.errors import Conflict, EventConflictError
from agent.events import Event
from agent.repeats import CONFLICT, RETIMED, compare_content
from agent.store.records import EventRecord, InsertResult, Retimed
from agent.timestamps import format_timestamp, from_us, payload_timestamp, strip_timestamp

PULLED_AT_KEY = "meters_pulled_at"
"""The kv key recording when meters were last pulled (replaced in the same transaction as the cache)."""

ROW_COLUMNS = (
    "id, event_id, event_name, ts, payload, stamped, source, state, attempts, enqueued_at, "
    "next_attempt_at, lease_until, settled_at, restamped, reason, http_status, response, last_error, "
    "original_ts"
)


def record_from_row(row: tuple[Any, ...]) -> EventRecord:
    """The one place a database row becomes an EventRecord."""
    (
        row_id,
        event_id,
        event_name,
        ts,
        payload,
        stamped,
        source,
        state,
        attempts,
        enqueued_at,
        next_attempt_at,
        lease_until,
        settled_at,
        restamped,
        reason,
        http_status,
        response,
        last_error,
        original_ts,
    ) = row
    return EventRecord(
        row_id,
        event_id,
        event_name,
        ts,
        payload,
        bool(stamped),
        source,
        state,
        attempts,
        enqueued_at,
        next_attempt_at,
        lease_until,
        settled_at,
        bool(restamped),
        reason,
        http_status,
        response,
        last_error,
        original_ts,
    )


def dedupe(events: Sequence[Event]) -> tuple[list[int], InsertResult, list[Conflict]]:
    """Settle repeats inside one call. Returns the positions of the events to insert (first of each id),
    the in-call duplicates (same content, or only the timestamp differs), and the conflicts: when two
    events of the call share an event_id with other content, every event with that id is refused.
    """
    if len({e.event_id for e in events}) == len(events):  # the common case: no repeats
        return list(range(len(events))), InsertResult(), []
    seen: dict[str, int] = {}
    unique: list[int] = []
    repeats = InsertResult()
    clashing: dict[str, int] = {}  # event_id -> position of an event it clashes with
    for index, event in enumerate(events):
        first = seen.get(event.event_id)
        if first is None:
            seen[event.event_id] = index
            unique.append(index)
            continue
        kept = events[first]
        verdict = compare_content(kept.payload, kept.stamped, event.payload, event.stamped)
        if verdict == CONFLICT:
            clashing.setdefault(event.event_id, index)
        else:
            repeats.duplicates.append(event.event_id)
            if verdict == RETIMED:
                repeats.retimed.append(
                    Retimed(index, event.event_id, kept.timestamp, event.timestamp, earlier=first)
                )
    if not clashing:
        return unique, repeats, []
    conflicts = [
        Conflict(i, e.event_id, seen[e.event_id] if i != seen[e.event_id] else clashing[e.event_id])
        for i, e in enumerate(events)
        if e.event_id in clashing
    ]
    return unique, repeats, conflicts


def judge_stored(
    events: Sequence[Event],
    unique: Sequence[int],
    result: InsertResult,
    conflicts: list[Conflict],
    stored: Mapping[str, tuple[str, bool]],
    new_ids: Set[str],
) -> InsertResult:
    """After an insert that did not store every event: the events in `new_ids` are new, each other
    one is judged against its stored row (`stored`: payload, and whether the agent set its timestamp).
    Raises EventConflictError for every refused event (both backends share these rules)."""
    # An in-call repeat was judged against the first event of its id in the call, and that one is
    # judged here against the stored event: a conflict between the repeat and the stored event cannot
    # slip through (equal but for the timestamp is transitive).
    new: list[str] = []
    for index in unique:
        event = events[index]
        if event.event_id in new_ids:
            new.append(event.event_id)
            continue
        payload, stamped = stored[event.event_id]
        verdict = compare_content(payload, stamped, event.payload, event.stamped)
        if verdict == CONFLICT:
            conflicts.append(Conflict(index, event.event_id))
            continue
        result.duplicates.append(event.event_id)
        if verdict == RETIMED:
            result.retimed.append(Retimed(index, event.event_id, payload_timestamp(payload), event.timestamp))
    if conflicts:
        if len(unique) < len(events):  # the repeats in the call of a refused id are refused with it
            refused, firsts = {c.event_id for c in conflicts}, set(unique)
            conflicts += [
                Conflict(i, e.event_id)
                for i, e in enumerate(events)
                if e.event_id in refused and i not in firsts
            ]
        conflicts.sort(key=lambda c: c.index)
        raise EventConflictError([c.event_id for c in conflicts], conflicts)
    result.new = new
    result.retimed.sort(key=lambda r: r.index)
    return result


def restamped_payload(payload: str, now_us: int) -> str:
    """`payload` with its timestamp replaced by `now_us` (canonical: the timestamp stays last)."""
    moment = datetime.fromtimestamp(from_us(now_us), UTC)
    return strip_timestamp(payload)[:-1] + f',"timestamp":"{format_timestamp(moment)}"}}'


# -- the fleet's shared slots (the rate budget, the pause's probe): GCRA -------------------------------
#
# A slot row keeps `tat`, the theoretical arrival time of the next request (microseconds), and `rate`,
# the slowed-down rate after a 429 (requests/min; NULL: not slowed). With the interval t = 60 s / rate,
# a request at `now` is admitted when max(tat, now) + t - now <= burst * t, and then tat moves to
# max(tat, now) + t: `burst` requests at once from rest, then one per t. No tokens are stored, so one
# guarded UPDATE takes a slot (PostgreSQL's SQL in agent/store/postgres/fleet.py says the same).

MIN_SLOT_WAIT_US = 1000
"""The shortest wait a refused slot reports: a waiter never spins."""


def slot_interval_us(per_minute: float, slowed: float | None) -> float:
    """Microseconds between slots at the configured rate, or the slowed one when lower; 0 when
    unlimited (`per_minute <= 0`: only a hold, the server's explicit wait, stops a request)."""
    if per_minute <= 0:
        return 0.0
    return 60_000_000.0 / min(per_minute, per_minute if slowed is None else slowed)


def gcra_take(tat: int, now: int, interval: float, burst: int) -> tuple[int | None, int]:
    """(the new tat, 0) when a slot is free at `now`, else (None, microseconds to wait)."""
    start = max(tat, now)
    if start + interval - now <= burst * interval:
        return int(start + interval), 0
    return None, max(MIN_SLOT_WAIT_US, int(tat - (burst - 1) * interval - now))


def recovered(slowed: float | None, per_minute: float, step: float) -> float | None:
    """The slowed rate after one more slot: `step` requests/min closer to the configured rate, and
    None (not slowed) once it gets there."""
    if slowed is None or slowed + step >= per_minute:
        return None
    return slowed + step


def held_tat(tat: int, now: int, delay_us: int, interval: float, burst: int) -> int:
    """The tat after a hold: no slot before `now + delay_us`, then one per interval (an empty bucket:
    the end of a server's wait is not a burst)."""
    return max(tat, int(now + delay_us + (burst - 1) * interval))


def halved(slowed: float | None, per_minute: float) -> float | None:
    """The rate after a 429: half the current one, never below 1 request/min (or the configured
    rate when lower); None for an unlimited budget, which is never slowed."""
    if per_minute <= 0:
        return None
    current = per_minute if slowed is None else min(per_minute, slowed)
    return max(min(1.0, per_minute), current / 2)
