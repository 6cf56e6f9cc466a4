"""Object storage metering: `bytes` per upload (or download, or stored object), with `bucket` and `key`.

Event id: `event_id` when given, else `derive_event_id("storage", event_name, customer_id, bucket, key,
version, bytes)`. The object's identity is its bucket, key and version: pass the storage's version id,
ETag or upload id as `version`, or every upload of the same key with the same size counts once.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from agent.outbox import EnqueueResult
from agent.templates._common import (
    Enqueuer,
    Metadata,
    TemplateError,
    build_event,
    derive_event_id,
    require_count,
)

DEFAULT_EVENT_NAME = "object_storage_upload"


def storage_event(
    customer_id: str,
    bytes: int,  # shadows the builtin on purpose: the metadata key
    bucket: str | None = None,
    key: str | None = None,
    event_id: str | None = None,
    *,
    version: str | None = None,
    event_name: str = DEFAULT_EVENT_NAME,
    metadata: Metadata | None = None,
    timestamp: str | datetime | None = None,
) -> dict[str, Any]:
    """The event for one object: `bytes` (a whole number >= 0), plus `bucket`/`key` when given.

    Raises TemplateError for a bad byte count, or when neither `event_id` nor `key` identifies the object
    (an id derived from the size alone would merge unrelated uploads).
    """
    size = require_count("bytes", bytes)
    if event_id is None:
        if not key:
            raise TemplateError(
                "storage_event needs key= (with bucket= and version=) or event_id= to identify the object"
            )
        event_id = derive_event_id("storage", event_name, customer_id, bucket, key, version, size)
    values: dict[str, Any] = {"bytes": size}
    if bucket:
        values["bucket"] = bucket
    if key:
        values["key"] = key
    return build_event(event_id, customer_id, event_name, values, metadata, timestamp)


def record_storage(
    outbox: Enqueuer,
    customer_id: str,
    bytes: int,
    bucket: str | None = None,
    key: str | None = None,
    event_id: str | None = None,
    **kwargs: Any,
) -> EnqueueResult:
    """Build with `storage_event(...)` and enqueue it. Raises what either raises."""
    return outbox.enqueue(storage_event(customer_id, bytes, bucket, key, event_id, **kwargs))
