"""Reading an ingest request body as Dodo does, and the Dodo-shaped refusals of the local endpoint.

`check_body` parses and validates `{"events": [...]}` and either returns the events or raises a
`Refusal` (422 for JSON-type and shape errors, 400 for broken rules and duplicate ids), listing every
problem. Pure functions of the body; no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import orjson
from starlette.responses import Response

from agent.errors import Problem
from agent.events import FIELDS, MAX_EVENT_AGE_SECONDS, Event, check_event
from agent.repeats import duplicate_ids

MAX_LISTED = 1000
"""Problems listed in one error body (the message gives the total)."""
MAX_EVENTS = 1000
"""Dodo's hard cap of events per request."""
_REQUIRED = ("event_id", "customer_id", "event_name")
Headers = dict[str, str] | None


class Refusal(Exception):
    """An error answer: status, Dodo-shaped code and message, the problems, extra headers."""

    def __init__(
        self, status: int, code: str, message: str, problems: Sequence[Problem] = (), headers: Headers = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.problems = status, code, message, problems
        self.headers = dict(headers or {})

    def response(self) -> Response:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.problems:
            body["problems"] = [{"path": p.path, "message": p.message} for p in self.problems[:MAX_LISTED]]
        return json_response(self.status, body, self.headers)


def _schema(message: str) -> Refusal:
    return Refusal(422, "UNPROCESSABLE_ENTITY", message)


def json_response(status: int, body: Any, headers: Headers = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, headers=headers, media_type="application/json")


def retry_headers(seconds: float) -> dict[str, str]:
    """`Retry-After` in whole seconds (the standard) and `retry-after-ms` (read first by the SDK)."""
    return {
        "Retry-After": str(max(1, math.ceil(seconds))),
        "retry-after-ms": str(max(1, round(seconds * 1000))),
    }


def is_schema_violation(raw: object) -> bool:
    """Whether Dodo would refuse this event with 422 (wrong JSON type or unknown field), not 400."""
    if not isinstance(raw, dict) or any(key not in FIELDS for key in raw):
        return True
    if any(not isinstance(raw.get(name), str) for name in _REQUIRED):
        return True
    timestamp, metadata = raw.get("timestamp"), raw.get("metadata")
    if timestamp is not None and not isinstance(timestamp, str):
        return True
    if metadata is None:
        return False
    # bool is an int subclass: it passes, as Dodo's schema allows booleans.
    return not isinstance(metadata, dict) or any(
        not isinstance(v, str | int | float) for v in metadata.values()
    )


def safe_check(
    raw: object, now: float, path: str, max_age: float = MAX_EVENT_AGE_SECONDS
) -> tuple[Event | None, list[Problem]]:
    """`check_event`, with any crash on strange input turned into a problem: the HTTP intake answers
    it (never a 500), the drop directory writes it to the errors file (never a stuck file)."""
    try:
        return check_event(raw, now, path, max_age)
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        return None, [Problem(path, f"cannot be validated ({type(exc).__name__}: {exc}); fix its values")]


def summary(problems: Sequence[Problem]) -> str:
    count = len(problems)
    more = f" (and {count - 1} more, listed in problems)" if count > 1 else ""
    return f"{count} problem{'s' if count != 1 else ''}; nothing was stored: {problems[0]}{more}"


def check_body(body: bytes, now: float, max_age: float = MAX_EVENT_AGE_SECONDS) -> list[Event]:
    """Parse and validate a request body like Dodo does. Returns the events; raises Refusal (422/400).

    `max_age`: `[intake] max_event_age` in seconds (older timestamps are a 400)."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        reason = "the body is empty" if not body.strip() else f"malformed JSON ({exc})"
        raise _schema(f'body: {reason}; send {{"events": [...]}}') from None
    if not isinstance(document, dict):
        raise _schema('body: expected an object {"events": [...]}')
    for key in document:
        if key != "events":
            raise _schema(f'body.{key}: unknown field; the body is {{"events": [...]}}')
    raws = document.get("events")
    if not isinstance(raws, list):
        raise _schema("body.events: required, must be a list of events")
    if not raws or len(raws) > MAX_EVENTS:
        raise Refusal(
            400, "BAD_REQUEST", f"events: send 1 to {MAX_EVENTS} events per request, not {len(raws)}"
        )
    events: list[Event] = []
    problems: list[Problem] = []
    for index, raw in enumerate(raws):
        event, found = safe_check(raw, now, f"events[{index}]", max_age)
        problems.extend(found)
        if event is not None:
            events.append(event)
    duplicates = duplicate_ids(raws)
    # Every schema violation is also a problem check_event reports, so a body without problems needs
    # no schema pass (a sixth of the validation cost of a 1000-event request).
    if problems and any(is_schema_violation(raw) for raw in raws):
        code, status = "UNPROCESSABLE_ENTITY", 422
    elif problems:
        code, status = "BAD_REQUEST", 400
    elif duplicates:
        code, status = "DUPLICATE_EVENT_ID", 400
    else:
        return events
    every = problems + duplicates
    raise Refusal(status, code, summary(every), every)
