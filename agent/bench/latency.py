"""Enqueue-to-delivered latency with an idle agent: a running `Agent` with its HTTP intake, delivering
to an emulator in this process.

One event at a time: POST it to the agent's `/events/ingest`, note when the 200 arrives, and wait
until the emulator's ingest handler has received it (it notes the time too; both clocks are this
process's `perf_counter`). The figure is the time from the 200 to the arrival. The agent commits before
it answers and wakes its worker on the commit, so an event can arrive before the client has read its
200: that counts as 0 ms. Pacing is off (`requests_per_minute = 0`), so the figure is the agent's own
reaction time, not the token bucket's; between events the agent is idle.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any

import httpx
import orjson

from agent.bench.common import API_KEY, REPORT, Context, Row, now_timestamp, percentile, raw_event
from agent.bench.drain import bench_settings
from agent.config import HttpIntakeSettings
from agent.emulator import EmulatorConfig, EmulatorServer, EmulatorState
from agent.emulator.state import Answer
from agent.service import Agent

GAP_SECONDS = 0.02
"""Pause between events, so each finds the agent idle."""
ARRIVAL_TIMEOUT = 60.0
"""How long one event may take to reach the emulator before the run gives up (a busy machine is slow)."""


class _ArrivalState(EmulatorState):
    """The emulator's state, noting when each event_id first reaches the ingest handler."""

    def __init__(self, config: EmulatorConfig) -> None:
        super().__init__(config)
        self.arrived: dict[str, float] = {}
        self.signal = threading.Condition()

    def ingest(self, authorization: str | None, body: bytes | None) -> Answer:
        at = time.perf_counter()
        answer = super().ingest(authorization, body)
        if answer.status == 200 and body:
            ids = [event.get("event_id") for event in orjson.loads(body).get("events", [])]
            with self.signal:
                for event_id in ids:
                    self.arrived.setdefault(str(event_id), at)
                self.signal.notify_all()
        return answer

    def wait_for(self, event_id: str, timeout: float) -> float | None:
        deadline = time.monotonic() + timeout
        with self.signal:
            while event_id not in self.arrived:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.signal.wait(left)
            return self.arrived[event_id]


def run(ctx: Context) -> list[Row]:
    samples = ctx.size(200, 40, minimum=10)
    ctx.progress(f"latency: {samples} events one at a time through a running agent")
    config = EmulatorConfig(keys={API_KEY}, rate_limit=False)
    emulator = EmulatorServer(config, log_level="error")
    state = _ArrivalState(config)
    emulator.state = state  # the app is built from .state at start()
    emulator.start()
    try:
        settings = bench_settings(emulator.url, ctx.path("latency/outbox.db"))
        settings = dataclasses.replace(settings, intake_http=HttpIntakeSettings(listen="127.0.0.1:0"))
        agent = Agent(settings, environ={"DODO_PAYMENTS_API_KEY": API_KEY}).start()
        try:
            assert agent.http is not None
            after_200, after_send = _measure(agent.http.url, state, samples)
        finally:
            agent.stop()
    finally:
        emulator.stop()
    p50, p99 = percentile(after_200, 50), percentile(after_200, 99)
    return [
        Row(
            "latency.p50",
            "enqueue-to-delivered, idle agent, p50",
            p50,
            "ms",
            note=(
                "from the POST's 200 to the emulator; from sending the POST: "
                f"{percentile(after_send, 50):.1f} ms"
            ),
            extra={"samples": len(after_200)},
        ),
        Row(
            "latency.p99",
            "enqueue-to-delivered, idle agent, p99",
            p99,
            "ms",
            target_kind=REPORT,
            note=f"from sending the POST: {percentile(after_send, 99):.1f} ms",
            extra={"samples": len(after_200)},
        ),
    ]


def _measure(url: str, state: _ArrivalState, samples: int) -> tuple[list[float], list[float]]:
    after_200: list[float] = []
    after_send: list[float] = []
    stamp = now_timestamp()
    with httpx.Client(base_url=url, timeout=10.0) as client:
        for i in range(-3, samples):  # three warm-up events, not counted
            event: dict[str, Any] = raw_event("lat", i + 3, stamp)
            sent = time.perf_counter()
            response = client.post("/events/ingest", json={"events": [event]})
            answered = time.perf_counter()
            if response.status_code != 200:
                raise RuntimeError(f"the agent answered {response.status_code}: {response.text[:300]}")
            arrived = state.wait_for(event["event_id"], ARRIVAL_TIMEOUT)
            if arrived is None:
                raise RuntimeError(
                    f"event {event['event_id']} did not reach the emulator in {ARRIVAL_TIMEOUT} s"
                )
            if i >= 0:
                after_200.append(max(0.0, arrived - answered) * 1000)
                after_send.append((arrived - sent) * 1000)
            time.sleep(GAP_SECONDS)
    return after_200, after_send
