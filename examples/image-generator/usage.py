"""Usage events for one generation, and the two ways to hand them to the dodo-outbox agent.

- library (the default): `Outbox.enqueue(event, conn=conn)` writes each event into the app's own
  database inside the transaction that records the generation: both commit, or neither does. The agent
  drains the same file (its `[outbox] path`). The app needs no network and keeps serving while the agent
  is down; the events wait in the file.
- sdk: the official `dodopayments` SDK with `base_url` pointed at the agent's local endpoint. Nothing
  else changes from code that talks to Dodo, but the agent must be up, as Dodo would have to be.

Event ids come from the customer and the client's request id, never from the clock or a random draw:
a retried request (same X-Request-ID) has the same ids, so it is stored once and billed once.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

from dodopayments import DodoPayments
from imaging import IMAGE_MODEL

from agent import Outbox
from agent.templates import derive_event_id, llm_usage_event

IMAGE_EVENT = "image.generated"  # meter: count
TOKENS_EVENT = "llm.chat_completion"  # meter: sum over totalTokens

Event = dict[str, Any]


def usage_events(
    customer_id: str, request_id: str, resolution: str, rewrite_response: Mapping[str, Any]
) -> list[Event]:
    """The two events of one generation: the image, and the tokens the prompt rewriting used."""
    image: Event = {
        "event_id": derive_event_id("img", IMAGE_EVENT, customer_id, request_id),
        "customer_id": customer_id,
        "event_name": IMAGE_EVENT,
        "metadata": {"resolution": resolution, "model": IMAGE_MODEL},
    }
    # The LLM template reads the response's usage (OpenAI, Anthropic and Gemini shapes). Its default
    # event id comes from the response id, but a real model answers a retried request with a new
    # response id: derive the id from the request id instead, so a retry bills once.
    tokens = llm_usage_event(
        rewrite_response,
        customer_id=customer_id,
        event_name=TOKENS_EVENT,
        event_id=derive_event_id("llm", TOKENS_EVENT, customer_id, request_id),
    )
    # No timestamps: the agent stamps each event when it stores it, and a re-sent event stamped
    # again is still the same event (a duplicate, not a conflict).
    return [image, tokens]


def enqueue_in_transaction(outbox: Outbox, conn: sqlite3.Connection, events: Sequence[Event]) -> None:
    """Library mode: write the events on the app's connection, inside its open transaction.

    Nothing is stored until the caller commits; a rollback takes the events with it.
    """
    for event in events:
        outbox.enqueue(event, conn=conn)


def sdk_client(agent_url: str, token: str) -> DodoPayments:
    """The official SDK, talking to the agent instead of Dodo. `token` matters only when the agent's
    `[intake.http] token` is set. The SDK retries twice on connection errors, 429 and 5xx."""
    return DodoPayments(bearer_token=token, base_url=agent_url, max_retries=2, timeout=10.0)


def send_with_sdk(client: DodoPayments, events: Sequence[Event]) -> int:
    """SDK mode: hand the events to the agent; returns how many were new to it.

    Call it before committing the generation, outside any transaction on the agent's outbox file:
    when it raises, the request fails and nothing is stored, so the client's retry records it again.
    Raises dodopayments.APIConnectionError (agent down) or APIStatusError (events refused).
    """
    response = client.usage_events.ingest(events=list(events))  # type: ignore[arg-type]
    return int(response.ingested_count)
