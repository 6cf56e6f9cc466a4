"""The official `dodopayments` SDK, pointed at the agent by `base_url` only, stores events durably.

Nothing is mocked: a real uvicorn on 127.0.0.1, the SDK's own httpx client, retry logic and parsing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

dodopayments = pytest.importorskip("dodopayments")

from agent.config import HttpIntakeSettings  # noqa: E402 (after importorskip)
from agent.intake.http import create_app  # noqa: E402 (after importorskip)
from agent.intake.server import HttpServer  # noqa: E402 (after importorskip)
from agent.ops import status as status_module  # noqa: E402 (after importorskip)
from agent.outbox import Outbox  # noqa: E402 (after importorskip)
from agent.store import Store  # noqa: E402 (after importorskip)

TOKEN = "agent-token-for-sdk"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[HttpServer, Outbox]]:
    outbox = Outbox(tmp_path / "outbox.db", max_events=2)
    app = create_app(
        outbox,
        HttpIntakeSettings(token=TOKEN),
        status=lambda: status_module.build(outbox.store),
        readiness=dict,
        full_retry_after=0.2,  # the SDK honours Retry-After; keep the test short
    )
    server = HttpServer(app, "127.0.0.1:0", token=TOKEN).start()
    yield server, outbox
    server.stop(1)
    outbox.close()


def test_sdk_ingest_through_the_agent(served: tuple[HttpServer, Outbox]) -> None:
    server, outbox = served
    client = dodopayments.DodoPayments(bearer_token=TOKEN, base_url=server.url)
    moment = datetime.now(UTC) - timedelta(seconds=30)
    response = client.usage_events.ingest(
        events=[
            {
                "event_id": "sdk_1",
                "customer_id": "cus_1",
                "event_name": "llm.chat_completion",
                "timestamp": moment,
                "metadata": {"inputTokens": 120, "model": "gpt", "cached": False},
            },
            {"event_id": "sdk_2", "customer_id": "cus_1", "event_name": "api_call"},
        ]
    )
    assert response.ingested_count == 2
    with Store(outbox.path) as store:  # a separate connection: the events are on disk
        record = store.get("sdk_1")
        assert record is not None
        assert record.source == "http"
        assert record.event["metadata"] == {"inputTokens": 120, "model": "gpt", "cached": False}
        assert store.get("sdk_2") is not None
    # A wrong key is the SDK's AuthenticationError, not retried.
    with pytest.raises(dodopayments.AuthenticationError):
        dodopayments.DodoPayments(bearer_token="wrong", base_url=server.url).usage_events.ingest(
            events=[{"event_id": "sdk_3", "customer_id": "cus_1", "event_name": "api_call"}]
        )


def test_sdk_retries_429_until_room_is_made(served: tuple[HttpServer, Outbox]) -> None:
    server, outbox = served
    client = dodopayments.DodoPayments(bearer_token=TOKEN, base_url=server.url)
    client.usage_events.ingest(
        events=[{"event_id": f"old_{i}", "customer_id": "cus_1", "event_name": "api_call"} for i in range(2)]
    )  # the outbox is now at max_events = 2

    statuses: list[int] = []
    refused = threading.Event()

    def seen(response: httpx.Response) -> None:
        statuses.append(response.status_code)
        if response.status_code == 429:
            refused.set()

    def deliver_when_refused() -> None:
        # What the delivery worker does: claim the backlog and mark it delivered, making room.
        assert refused.wait(10)
        now_us = int(time.time() * 1e6)
        claimed = outbox.store.claim(
            now_us=now_us, limit=10, max_bytes=1 << 20, lease_us=60_000_000, owner="test-worker"
        )
        outbox.store.mark_delivered([c.id for c in claimed], owner="test-worker", now_us=now_us)

    helper = threading.Thread(target=deliver_when_refused)
    helper.start()
    http_client = httpx.Client(event_hooks={"response": [seen]})
    retrying = dodopayments.DodoPayments(
        bearer_token=TOKEN, base_url=server.url, http_client=http_client, max_retries=5
    )
    response = retrying.usage_events.ingest(
        events=[{"event_id": "new_1", "customer_id": "cus_1", "event_name": "api_call"}]
    )
    helper.join(10)
    assert response.ingested_count == 1
    assert statuses[0] == 429
    assert statuses[-1] == 200
    assert outbox.store.get("new_1") is not None
