"""Every exception dodo-outbox raises on purpose, in one tree.

    DodoOutboxError                  the root: catch this to catch them all
    ├── ConfigError                  a setting is missing or wrong (names the key and the value)
    ├── InvalidEventError            one or more events break Dodo's contract (carries every problem)
    ├── EventConflictError           an event_id already stored with different content
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


class EventConflictError(DodoOutboxError):
    """An event_id is already in the outbox with different content.

    Dodo ignores a repeated event_id, so the second event would silently never be billed.
    """

    def __init__(self, event_ids: Sequence[str]) -> None:
        self.event_ids: tuple[str, ...] = tuple(event_ids)
        shown = ", ".join(self.event_ids[:5]) + (" ..." if len(self.event_ids) > 5 else "")
        super().__init__(
            f"event_id already stored with different content: {shown}. Dodo ignores a repeated "
            "event_id, so this usage would never be billed. Give the new event a new event_id "
            "(or send exactly the same content again if this is a retry)."
        )


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
