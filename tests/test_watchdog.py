"""The systemd watchdog is fed only while the drain loop ticks, so systemd restarts a wedged worker."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from types import SimpleNamespace

from agent.config import Settings
from agent.service import Agent


def pings(sock: socket.socket, seconds: float) -> list[str]:
    got: list[str] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            got.append(sock.recv(256).decode())
        except TimeoutError:
            break
    return got


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
                assert "WATCHDOG=1" in pings(sock, 0.25)
            # The drain loop stops ticking (wedged): after the limit, no more pings.
            worker.last_tick = time.monotonic() - 3600
            pings(sock, 0.25)  # drain anything sent before the wedge was noticed
            assert pings(sock, 0.5) == []
        finally:
            agent.stopped.set()
