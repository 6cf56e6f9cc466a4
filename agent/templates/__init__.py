"""Ready-made usage events for Dodo's blueprint shapes, recorded through the outbox, never sent directly.

Each template has a builder returning a plain event dict (camelCase metadata keys as Dodo's blueprints
emit them) and a recording form that enqueues into an `Outbox`:

- LLM tokens: `llm_usage_event`; `record_llm_usage`, `track_llm(client, outbox)`. Meter: sum `totalTokens`.
- API gateway: `api_call_event`; `AsgiUsageMiddleware`, `WsgiUsageMiddleware`. Meter: count.
- Object storage: `storage_event`; `record_storage`. Meter: sum `bytes`.
- Stream: `stream_event`; `StreamMeter`. Meter: sum `bytes`.
- Time range: `duration_event`; `measure(...)` (a `with` block), `@timed(...)`. Meter: sum `durationMs`.

Every event id is deterministic (see `_common.derive_event_id` and each module's docstring): recording
the same usage twice stores it once and Dodo bills it once, unlike a random id per attempt.
"""

from agent.templates._common import FAILURES, TemplateError, derive_event_id
from agent.templates.gateway import (
    AsgiUsageMiddleware,
    GatewayMeter,
    WsgiUsageMiddleware,
    api_call_event,
    record_api_call,
)
from agent.templates.llm import (
    LlmUsage,
    UsageNotFoundError,
    extract_usage,
    llm_usage_event,
    record_llm_usage,
    track_llm,
)
from agent.templates.storage import record_storage, storage_event
from agent.templates.stream import StreamMeter, stream_event
from agent.templates.timing import Measurement, duration_event, measure, timed

__all__ = [
    "FAILURES",
    "AsgiUsageMiddleware",
    "GatewayMeter",
    "LlmUsage",
    "Measurement",
    "StreamMeter",
    "TemplateError",
    "UsageNotFoundError",
    "WsgiUsageMiddleware",
    "api_call_event",
    "derive_event_id",
    "duration_event",
    "extract_usage",
    "llm_usage_event",
    "measure",
    "record_api_call",
    "record_llm_usage",
    "record_storage",
    "storage_event",
    "stream_event",
    "timed",
    "track_llm",
]
