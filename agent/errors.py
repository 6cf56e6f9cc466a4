"""Every exception dodo-outbox raises on purpose, in one tree.

    DodoOutboxError                  the root: catch this to catch them all
    ├── ConfigError                  a setting is missing or wrong (names the key and the value)
    ├── InvalidEventError            one or more events break Dodo's contract (carries every problem)
    ├── EventConflictError           an event_id already stored (or twice in the call) with other content
    ├── OutboxError                  the outbox file cannot take the request
    │   ├── OutboxFullError          back-pressure: at max_events, or the disk is full; retry later
    │   ├── OutboxClosedError        the Outbox was closed
    │   └── OutboxCorruptError       the file failed its integrity check
    └── DeliveryError                talking to Dodo failed in a way the caller must see

The CLI turns these into one plain message and an exit code; nothing else needs a traceback.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class DodoOutboxError(Exception):
    """The root of every error raised by dodo-outbox on purpose."""


class ConfigError(DodoOutboxError):
    """A configuration key is missing or has a bad value; the message names the key."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one event: where (`events[3].metadata.tokens`) and what to do."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class InvalidEventError(DodoOutboxError, ValueError):
    """Events that Dodo would refuse. `problems` lists every problem of every event at once."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems: tuple[Problem, ...] = tuple(problems)
        lines = "\n".join(f"  {p}" for p in self.problems)
        count = len(self.problems)
        super().__init__(f"{count} problem{'s' if count != 1 else ''} with the events:\n{lines}")


@dataclass(frozen=True)
class Conflict:
    """One event of a call refused for its event_id: `index` is its position in the call's events.

    `other` is None when the event_id is already stored with different content, else the position of
    the other event of the same call that holds this event_id with different content (both are refused:
    neither can be known to be the one the producer meant).
    """

    index: int
    event_id: str
    other: int | None = None

    @property
    def stored(self) -> bool:
        """Whether the clash is with the event already in the outbox (not inside the call)."""
        return self.other is None

    def reason(self, other_where: str | None = None) -> str:
        """What is wrong and what to do, for a message naming this event's place (line, index)."""
        if self.other is None:
            return (
                f"{self.event_id!r} is already in the outbox with different content; Dodo ignores a "
                "repeated event_id, so this usage would never be billed. Give it a new event_id (or "
                "send exactly the same content again if this is a retry)"
            )
        where = other_where if other_where is not None else f"event {self.other} of this call"
        return (
            f"{self.event_id!r} is also the event_id of {where}, with different content; neither was "
            "stored (Dodo would bill only one of them). Give each event its own event_id"
        )


class EventConflictError(DodoOutboxError):
    """An event_id is already in the outbox with different content, or twice in one call with different
    content. Nothing of the call is stored.

    Dodo ignores a repeated event_id, so the second event would silently never be billed. `event_ids`
    lists each refused id once; `conflicts` has one entry per refused event (both events of an in-call
    clash), with its position in the call.
    """

    def __init__(self, event_ids: Sequence[str], conflicts: Sequence[Conflict] = ()) -> None:
        self.event_ids: tuple[str, ...] = tuple(dict.fromkeys(event_ids))
        self.conflicts: tuple[Conflict, ...] = tuple(conflicts)
        in_call = {c.event_id for c in self.conflicts if not c.stored}
        stored = [i for i in self.event_ids if i not in in_call]
        parts = []
        if stored:
            parts.append(f"event_id already stored with different content: {_shown(stored)}")
        if in_call:
            repeated = [i for i in self.event_ids if i in in_call]
            parts.append(
                f"event_id given twice in this call with different content (both refused): {_shown(repeated)}"
            )
        super().__init__(
            "; ".join(parts) + ". Dodo ignores a repeated event_id, so this usage would never be billed. "
            "Give the new event a new event_id (or send exactly the same content again if this is a retry)."
        )

    def located(self, event_ids: Sequence[str]) -> tuple[Conflict, ...]:
        """`conflicts`, or, for an error raised without positions, one Conflict (with the stored event)
        for every event of the call, whose ids are `event_ids` in order, that holds a refused id."""
        if self.conflicts:
            return self.conflicts
        refused = set(self.event_ids)
        return tuple(Conflict(i, event_id) for i, event_id in enumerate(event_ids) if event_id in refused)


def _shown(ids: Sequence[str]) -> str:
    return ", ".join(ids[:5]) + (" ..." if len(ids) > 5 else "")


class OutboxError(DodoOutboxError):
    """The outbox cannot take the request."""


class OutboxFullError(OutboxError):
    """Back-pressure: the outbox holds `max_events` undelivered events or the disk is full.

    Nothing of the refused call was stored. Retry after `retry_after` seconds.
    """

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        self.retry_after = retry_after
        super().__init__(message)


class OutboxClosedError(OutboxError):
    """The Outbox was closed; open a new one."""


class OutboxCorruptError(OutboxError):
    """The outbox file failed SQLite's integrity check."""


class DeliveryError(DodoOutboxError):
    """Delivery to Dodo failed in a way the caller must handle (never carries the API key)."""
