"""The systemd watchdog is fed only while the drain loop ticks, so systemd restarts a wedged worker."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from types import SimpleNamespace

from agent.config import Settings
from agent.service import Agent


def pings(sock: socket.socket, seconds: float, *, until_ping: bool = False) -> list[str]:
    """What arrives within `seconds`; with `until_ping`, stop at the first WATCHDOG=1."""
    got: list[str] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            got.append(sock.recv(256).decode())
        except TimeoutError:
            break
        if until_ping and "WATCHDOG=1" in got[-1]:
            break
    return got


def quiet_for(sock: socket.socket, seconds: float, within: float) -> bool:
    """Whether nothing arrives for `seconds` in a row, within `within` seconds (a ping already on its way
    when the state changed may still land first)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not pings(sock, seconds):
            return True
    return False


def test_watchdog_is_fed_while_ticking_and_withheld_when_wedged(tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        environ = {"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "200000"}  # ping every 0.1 s
        agent = Agent(Settings(), environ=environ)
        worker = SimpleNamespace(last_tick=time.monotonic())
        agent.worker = worker  # type: ignore[assignment]
        agent._start_watchdog()
        try:
            for _ in range(5):
                worker.last_tick = time.monotonic()  # a healthy drain loop ticks
                assert "WATCHDOG=1" in "".join(pings(sock, 30, until_ping=True))
            # The drain loop stops ticking (wedged): no more pings (every 0.1 s while healthy), then a
            # second quiet second to show it is not a pause of a busy machine.
            worker.last_tick = time.monotonic() - 3600
            assert quiet_for(sock, 1.0, within=30), "the watchdog kept pinging a wedged agent"
            assert pings(sock, 1.0) == []
        finally:
            agent.stopped.set()


def test_a_wedged_drain_loop_turns_healthz_503_so_a_liveness_probe_restarts_the_agent(tmp_path: Path) -> None:
    """Outside systemd (a container), `/healthz` is the watchdog: 503 while the drain loop is stuck."""
    import httpx

    from agent.config import HttpIntakeSettings
    from agent.intake.http import create_app
    from agent.intake.server import HttpServer
    from agent.outbox import Outbox

    agent = Agent(Settings())
    worker = SimpleNamespace(last_tick=time.monotonic())
    agent.worker = worker  # type: ignore[assignment]
    with Outbox(tmp_path / "o.db") as outbox:
        app = create_app(outbox, HttpIntakeSettings(), status=dict, readiness=dict, wedged=agent.wedged)
        server = HttpServer(app, "127.0.0.1:0").start()
        try:
            with httpx.Client(base_url=server.url, timeout=10) as client:
                assert client.get("/healthz").json() == {"status": "ok"}
                worker.last_tick = time.monotonic() - 3600  # a store call hung: no tick for an hour
                answer = client.get("/healthz")
                assert answer.status_code == 503
                assert answer.json()["status"] == "wedged"
                assert "has not finished a tick for 3600 s" in answer.json()["reason"]
                worker.last_tick = time.monotonic()  # it ticks again: alive
                assert client.get("/healthz").status_code == 200
        finally:
            server.stop(1)
