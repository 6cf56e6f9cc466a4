"""The HTTP intake's committer thread: one transaction for every waiting request, each atomic alone.

A gated outbox holds the committer inside a commit, so the test knows which requests queue up behind
it and share the next transaction; real SQLite files throughout, read back by a separate connection.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx
import pytest

from agent.config import HttpIntakeSettings
from agent.errors import EventConflictError, OutboxError
from agent.events import Event
from agent.intake.committer import Committer, CommitterBusy, CommitterClosed
from agent.intake.http import create_app
from agent.intake.server import HttpServer
from agent.outbox import EnqueueResult, Outbox
from tests.builders import raw_event
from tests.waiting import wait_until


class GatedOutbox(Outbox):
    """An outbox whose commits wait for `gate`; `batches` records how many calls each commit held."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.gate = threading.Event()
        self.batches: list[int] = []

    def enqueue_calls(self, calls: Sequence[tuple[Sequence[Event], str]]) -> list[object]:  # type: ignore[override]
        self.batches.append(len(calls))
        if not self.gate.wait(60):
            raise AssertionError("the test never opened the gate")
        return list(super().enqueue_calls(calls))


def events(outbox: Outbox, *ids: str, **fields: object) -> list[Event]:
    return outbox.validate([raw_event(i, **fields) for i in ids])


def stored(path: Path) -> dict[str, str]:
    with sqlite3.connect(path) as conn:
        return dict(conn.execute("SELECT event_id, payload FROM dodo_outbox_events").fetchall())


async def _until(predicate: Callable[[], bool], what: str) -> None:
    """Poll `predicate` without blocking the event loop (the committer needs it to hand requests over)."""
    deadline = time.monotonic() + 60
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def _queued(committer: Committer, count: int) -> None:
    """Wait (without blocking the loop) until `count` events are queued behind the gated commit."""
    deadline = time.monotonic() + 60
    while committer.waiting_events < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"{count} events never queued")
        await asyncio.sleep(0.01)


def test_a_conflicting_request_among_concurrent_ones_is_refused_alone(tmp_path: Path) -> None:
    outbox = GatedOutbox(tmp_path / "outbox.db")
    outbox.enqueue(raw_event("clash", metadata={"tokens": 1}))  # not through the gate
    committer = Committer(outbox)

    async def main() -> list[EnqueueResult | BaseException]:
        first = asyncio.ensure_future(committer.submit(events(outbox, "first")))
        await _until(lambda: outbox.batches == [1], "the first commit to start")
        calls = [committer.submit(events(outbox, f"ok{i}", f"ok{i}b")) for i in range(5)]
        calls.insert(2, committer.submit(events(outbox, "new-too", "clash", metadata={"tokens": 2})))
        tasks = [asyncio.ensure_future(call) for call in calls]
        await _queued(committer, 11)
        outbox.gate.set()
        await first
        return list(await asyncio.gather(*tasks, return_exceptions=True))

    try:
        outcomes = asyncio.run(main())
    finally:
        committer.stop()
        outbox.close()
    assert outbox.batches == [1, 6]  # the six waiting requests shared one transaction
    assert isinstance(outcomes[2], EventConflictError)
    expected = [[f"ok{i}", f"ok{i}b"] for i in range(5)]
    assert [o.new for o in outcomes if isinstance(o, EnqueueResult)] == expected
    rows = stored(tmp_path / "outbox.db")
    assert "new-too" not in rows  # the refused request stored nothing, not even its new event
    assert '"tokens":1' in rows["clash"]
    assert {f"ok{i}" for i in range(5)} | {f"ok{i}b" for i in range(5)} | {"first"} <= set(rows)


def test_a_full_queue_is_refused_with_retry_after_and_the_waiting_requests_are_answered(
    tmp_path: Path,
) -> None:
    outbox = GatedOutbox(tmp_path / "outbox.db")
    settings = HttpIntakeSettings(listen="127.0.0.1:0")
    app = create_app(outbox, settings, status=dict, readiness=dict)
    app.state.intake.committer.max_waiting_events = 2
    answers: dict[str, httpx.Response] = {}

    def post(name: str, *ids: str) -> None:
        body = {"events": [raw_event(i) for i in ids]}
        answers[name] = httpx.post(f"{server.url}/events/ingest", json=body, timeout=60)

    with HttpServer(app, settings.listen) as server:
        threads = [threading.Thread(target=post, args=("in-commit", "a"))]
        threads[0].start()
        wait_until(lambda: outbox.batches == [1], what="the first commit to start")
        threads.append(threading.Thread(target=post, args=("queued", "b", "c")))
        threads[1].start()
        wait_until(lambda: app.state.intake.committer.waiting_events == 2, what="a request to queue")
        post("refused", "d")
        refused = answers["refused"]
        outbox.gate.set()
        for thread in threads:
            thread.join(60)
    outbox.close()
    assert refused.status_code == 429, refused.text
    assert refused.json()["code"] == "INTAKE_BUSY"
    assert float(refused.headers["Retry-After"]) > 0
    assert answers["in-commit"].status_code == 200 and answers["queued"].json() == {"ingested_count": 2}
    assert set(stored(tmp_path / "outbox.db")) == {"a", "b", "c"}


def test_stop_commits_what_is_queued_and_refuses_what_comes_after(tmp_path: Path) -> None:
    outbox = GatedOutbox(tmp_path / "outbox.db")
    committer = Committer(outbox)

    async def main() -> tuple[list[EnqueueResult | BaseException], BaseException | None]:
        tasks = [asyncio.ensure_future(committer.submit(events(outbox, f"e{i}"))) for i in range(20)]
        while not outbox.batches:  # a commit holds some of them, the rest may wait behind it
            await asyncio.sleep(0.01)
        stopping = threading.Thread(target=committer.stop, args=(60,))
        stopping.start()
        outbox.gate.set()
        outcomes = list(await asyncio.gather(*tasks, return_exceptions=True))
        stopping.join(60)
        try:
            await committer.submit(events(outbox, "late"))
        except CommitterClosed as exc:
            return outcomes, exc
        return outcomes, None

    outcomes, late = asyncio.run(main())
    outbox.close()
    assert all(isinstance(o, EnqueueResult) and o.new for o in outcomes), outcomes
    assert isinstance(late, CommitterClosed)
    assert set(stored(tmp_path / "outbox.db")) == {f"e{i}" for i in range(20)}


def test_stop_answers_every_waiting_request_even_when_the_disk_hangs(tmp_path: Path) -> None:
    outbox = GatedOutbox(tmp_path / "outbox.db")
    committer = Committer(outbox)

    async def main() -> list[EnqueueResult | BaseException]:
        first = asyncio.ensure_future(committer.submit(events(outbox, "in-commit")))
        await _until(lambda: outbox.batches == [1], "the first commit to start")
        queued = [asyncio.ensure_future(committer.submit(events(outbox, f"q{i}"))) for i in range(3)]
        await _queued(committer, 3)
        # The commit hangs past stop's timeout: the queued requests are refused, none waits forever.
        await asyncio.get_running_loop().run_in_executor(None, committer.stop, 0.2)
        refusals = list(await asyncio.gather(*queued, return_exceptions=True))
        outbox.gate.set()  # the hung commit returns: its request is answered too
        return [await first, *refusals]

    outcomes = asyncio.run(main())
    outbox.close()
    assert isinstance(outcomes[0], EnqueueResult) and outcomes[0].new == ["in-commit"]
    assert all(isinstance(o, OutboxError) and "nothing was stored" in str(o) for o in outcomes[1:])
    assert set(stored(tmp_path / "outbox.db")) == {"in-commit"}


def test_a_request_alone_is_taken_even_when_larger_than_the_bound(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.db")
    committer = Committer(outbox, max_waiting_events=1)

    async def main() -> EnqueueResult:
        return await committer.submit(events(outbox, "x", "y", "z"))

    try:
        assert asyncio.run(main()).new == ["x", "y", "z"]
    finally:
        committer.stop()
        outbox.close()
    with pytest.raises(CommitterClosed):
        asyncio.run(main())
    assert CommitterBusy("x").retry_after > 0
