"""dodo-outbox: a durable local outbox for Dodo Payments usage events."""

__version__ = "0.1.0"

from agent.errors import (
    DodoOutboxError,
    EventConflictError,
    InvalidEventError,
    OutboxFullError,
)
from agent.events import Event
from agent.outbox import EnqueueResult, Outbox

__all__ = [
    "DodoOutboxError",
    "EnqueueResult",
    "Event",
    "EventConflictError",
    "InvalidEventError",
    "Outbox",
    "OutboxFullError",
    "__version__",
]
