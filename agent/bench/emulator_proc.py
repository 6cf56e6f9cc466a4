"""The emulator in its own process, so Dodo's side of a drain does not share our interpreter's GIL.

`python -m agent.bench.emulator_proc` starts an emulator on 127.0.0.1 (rate limit off, the benchmark
key), prints its URL on one line and serves until its stdin closes; `... PER_SECOND PER_MINUTE` turns
its rate limit on at those rates (an account's limit, for the fleet's budget rows). It forgets the
events it stored once they pass `FORGET_AFTER`, so draining a million-event backlog does not grow the
emulator without bound (the benchmark counts deliveries in the outbox, never in the emulator).

`running_emulator()` is the parent's side: a context manager that yields the URL and stops the child.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from agent.bench.common import API_KEY
from agent.emulator import EmulatorConfig, EmulatorServer

FORGET_AFTER = 200_000
"""Stored events the emulator keeps before it resets (its memory stays bounded)."""
BODY_LIMIT = 10_000_000


def _forget_loop(server: EmulatorServer, stop: threading.Event) -> None:
    while not stop.wait(1.0):
        if server.state.stats()["events_stored"] > FORGET_AFTER:
            server.state.reset()


def main(argv: list[str] | None = None) -> None:
    """Serve until stdin closes. Prints the base URL first, flushed."""
    args = sys.argv[1:] if argv is None else argv
    config = EmulatorConfig(keys={API_KEY}, rate_limit=False, max_body_bytes=BODY_LIMIT)
    if args:
        config = dataclasses.replace(
            config, rate_limit=True, rate_per_second=float(args[0]), rate_per_minute=float(args[1])
        )
    server = EmulatorServer(config, log_level="error").start()
    stop = threading.Event()
    threading.Thread(target=_forget_loop, args=(server, stop), daemon=True).start()
    print(server.url, flush=True)
    try:
        sys.stdin.read()  # returns at EOF: the parent closed our stdin
    finally:
        stop.set()
        server.stop()


@contextmanager
def running_emulator(
    start_timeout: float = 20.0, rate_limit: tuple[float, float] | None = None
) -> Iterator[str]:
    """Start the emulator in a child process; yield its base URL; stop it (by its pid) on exit.

    `rate_limit`: (per second, per minute) turns the emulator's rate limit on (default: off).

    Raises RuntimeError when the child does not print its URL within `start_timeout` seconds.
    """
    child = subprocess.Popen(
        [sys.executable, "-m", "agent.bench.emulator_proc", *(str(r) for r in rate_limit or ())],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        url = _read_line(child, start_timeout)
        if not url.startswith("http://"):
            raise RuntimeError(f"the benchmark emulator did not start (it printed {url!r})")
        yield url
    finally:
        if child.stdin is not None:
            child.stdin.close()
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:
            child.terminate()
            child.wait(5)


def emulator_admin(url: str, method: str, route: str) -> Any:
    """The emulator's admin API (`/_emulator/ROUTE`: stats, log, reset): its JSON answer."""
    response = httpx.request(method, f"{url}/_emulator/{route}", timeout=30.0)
    response.raise_for_status()
    return response.json()


def _read_line(child: subprocess.Popen[str], timeout: float) -> str:
    result: list[str] = []
    assert child.stdout is not None
    stdout = child.stdout
    reader = threading.Thread(target=lambda: result.append(stdout.readline()), daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    while reader.is_alive() and time.monotonic() < deadline:
        reader.join(0.05)
    return result[0].strip() if result else ""


if __name__ == "__main__":
    main()
