"""`GET /events` and `GET /events/{id}` through the agent: the official SDK lists and retrieves usage
events with its `base_url` pointed at a real agent (in-process `Agent`, real uvicorn on 127.0.0.1), which
forwards to a real fake Dodo with its own key. Nothing is mocked."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent import config as config_module
from agent.emulator import EmulatorServer
from agent.service import Agent

dodopayments = pytest.importorskip("dodopayments")

DODO_KEY = "sk_test_readback_key"
TOKEN = "agent-token-readback"


def wait_for(predicate: Callable[[], bool], timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def start_agent(tmp_path: Path, base_url: str, *, key: bool = True, token: str = TOKEN) -> Agent:
    config = tmp_path / "agent.toml"
    keyfile = tmp_path / "api_key"
    keyfile.write_text(DODO_KEY + "\n")
    config.write_text(
        f'[dodo]\nbase_url = "{base_url}"\n'
        + (f'api_key_file = "{keyfile}"\n' if key else "")
        + f'[outbox]\npath = "{tmp_path / "outbox.db"}"\n'
        + "[delivery]\ninterval_seconds = 0.1\ntimeout_seconds = 2\n"
        + f'[intake.http]\nlisten = "127.0.0.1:0"\ntoken = "{token}"\n'
    )
    settings = config_module.load(config, environ={})
    return Agent(settings, environ={}).start()


@pytest.fixture
def dodo(fake_dodo_factory) -> EmulatorServer:  # type: ignore[no-untyped-def]
    server: EmulatorServer = fake_dodo_factory(keys={DODO_KEY}, rate_limit=False)
    return server


@pytest.fixture
def agent(tmp_path: Path, dodo: EmulatorServer) -> Iterator[Agent]:
    running = start_agent(tmp_path, dodo.url)
    yield running
    running.stop()


def test_sdk_lists_and_retrieves_usage_events_through_the_agent(agent: Agent, dodo: EmulatorServer) -> None:
    assert agent.http is not None
    client = dodopayments.DodoPayments(bearer_token=TOKEN, base_url=agent.http.url, max_retries=0)
    client.usage_events.ingest(
        events=[
            {"event_id": f"rb_{i}", "customer_id": "cus_a" if i < 3 else "cus_b", "event_name": "api.call"}
            for i in range(5)
        ]
    )
    # The events reach Dodo through the outbox and the worker; then the SDK reads them back via the agent.
    wait_for(lambda: dodo.state.stats()["events_stored"] == 5, what="delivery to the emulator")

    event = client.usage_events.retrieve("rb_1")
    assert (event.event_id, event.customer_id, event.event_name) == ("rb_1", "cus_a", "api.call")

    listed = client.usage_events.list(customer_id="cus_a", page_size=10)
    assert sorted(e.event_id for e in listed.items) == ["rb_0", "rb_1", "rb_2"]
    paged = client.usage_events.list(page_size=2, page_number=0)
    assert len(paged.items) == 2  # query parameters pass through

    with pytest.raises(dodopayments.NotFoundError):
        client.usage_events.retrieve("no_such_event")  # Dodo's 404 comes back as Dodo's 404


def test_async_sdk_reads_through_the_agent(agent: Agent, dodo: EmulatorServer) -> None:
    assert agent.http is not None
    url = agent.http.url
    dodo.state.ingest(
        f"Bearer {DODO_KEY}", b'{"events":[{"event_id":"as_1","customer_id":"c","event_name":"n"}]}'
    )

    async def read() -> tuple[str, list[str]]:
        client = dodopayments.AsyncDodoPayments(bearer_token=TOKEN, base_url=url, max_retries=0)
        event = await client.usage_events.retrieve("as_1")
        page = await client.usage_events.list(event_name="n")
        return event.customer_id, [e.event_id for e in page.items]

    assert asyncio.run(read()) == ("c", ["as_1"])


def test_readback_needs_the_intake_token(agent: Agent) -> None:
    assert agent.http is not None
    with pytest.raises(dodopayments.AuthenticationError):
        dodopayments.DodoPayments(
            bearer_token="wrong", base_url=agent.http.url, max_retries=0
        ).usage_events.list()
    answer = httpx.get(f"{agent.http.url}/events/rb_1")
    assert answer.status_code == 401


@contextlib.contextmanager
def read_through_agent(tmp_path: Path, base_url: str, *, key: bool = True) -> Iterator[Callable[[str], Any]]:
    """An agent delivering to `base_url`; yields `get(path)` -> (status, JSON body) through it."""
    running = start_agent(tmp_path, base_url, key=key)
    try:
        assert running.http is not None
        url = running.http.url

        def get(path: str) -> Any:
            answer = httpx.get(f"{url}{path}", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
            return answer.status_code, answer.json()

        yield get
    finally:
        running.stop()


def test_readback_without_a_key_is_503_naming_where_the_key_is_looked_for(
    tmp_path: Path, dodo: EmulatorServer
) -> None:
    with read_through_agent(tmp_path, dodo.url, key=False) as get:
        status, body = get("/events")
    assert status == 503 and body["code"] == "DODO_API_KEY_MISSING"
    assert "api_key_file" in body["message"] and "DODO_PAYMENTS_API_KEY" in body["message"]


def test_readback_when_dodo_cannot_be_reached_is_502_in_dodos_shape(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with read_through_agent(tmp_path, f"http://127.0.0.1:{port}") as get:
        status, body = get("/events/x")
    assert status == 502 and body["code"] == "BAD_GATEWAY"
    assert f"127.0.0.1:{port}" in body["message"] and DODO_KEY not in body["message"]


def test_readback_when_dodo_does_not_answer_is_504(tmp_path: Path) -> None:
    with socket.socket() as silent:  # listens (the kernel completes the handshake) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        with read_through_agent(tmp_path, f"http://127.0.0.1:{silent.getsockname()[1]}") as get:
            status, body = get("/events/x")
    assert status == 504 and body["code"] == "GATEWAY_TIMEOUT"
    assert "timeout_seconds" in body["message"]


def test_readme_caveat_on_ambiguous_url_matches_the_sdk(monkeypatch: pytest.MonkeyPatch) -> None:
    """The README tells apps which of DODO_PAYMENTS_BASE_URL / environment= to set, because the SDK
    refuses both together; this holds the README to what the installed SDK does."""
    monkeypatch.setenv("DODO_PAYMENTS_BASE_URL", "http://127.0.0.1:8790")
    with pytest.raises(Exception, match="Ambiguous URL"):
        dodopayments.DodoPayments(bearer_token="k", environment="test_mode")
    assert str(dodopayments.DodoPayments(bearer_token="k").base_url).startswith("http://127.0.0.1:8790")
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert '"Ambiguous URL"' in readme and "without** `environment=`" in readme
