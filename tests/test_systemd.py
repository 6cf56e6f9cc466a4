"""sd_notify against a real AF_UNIX datagram socket, the way systemd listens."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import systemd


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, dict[str, str]]]:
    """A datagram socket bound to a path in tmp_path, and an environ pointing at it."""
    path = tmp_path / "n.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2)
    try:
        yield sock, {"NOTIFY_SOCKET": str(path)}
    finally:
        sock.close()


def recv(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def test_ready_watchdog_stopping_status_reach_the_socket(
    listener: tuple[socket.socket, dict[str, str]],
) -> None:
    sock, env = listener
    assert systemd.ready(environ=env) is True
    assert recv(sock) == "READY=1"
    assert systemd.watchdog(env) is True
    assert recv(sock) == "WATCHDOG=1"
    assert systemd.stopping(env) is True
    assert recv(sock) == "STOPPING=1"
    assert systemd.status("draining 3 events", env) is True
    assert recv(sock) == "STATUS=draining 3 events"


def test_ready_with_status_is_one_datagram(listener: tuple[socket.socket, dict[str, str]]) -> None:
    sock, env = listener
    assert systemd.ready("up, 0 pending", env)
    assert recv(sock) == "READY=1\nSTATUS=up, 0 pending"


def test_status_cannot_inject_another_assignment(listener: tuple[socket.socket, dict[str, str]]) -> None:
    sock, env = listener
    assert systemd.status("bad\nREADY=1", env)
    assert recv(sock) == "STATUS=bad READY=1"


def test_reloading_carries_a_monotonic_timestamp(listener: tuple[socket.socket, dict[str, str]]) -> None:
    sock, env = listener
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert systemd.reloading(env)
    lines = recv(sock).split("\n")
    assert lines[0] == "RELOADING=1"
    key, _, value = lines[1].partition("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def test_abstract_socket_name() -> None:
    name = f"dodo-outbox-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(2)
        assert systemd.ready(environ={"NOTIFY_SOCKET": f"@{name}"}) is True
        assert recv(sock) == "READY=1"


def test_raw_notify_passes_the_state_through(listener: tuple[socket.socket, dict[str, str]]) -> None:
    sock, env = listener
    assert systemd.notify("EXTEND_TIMEOUT_USEC=5000000", env)
    assert recv(sock) == "EXTEND_TIMEOUT_USEC=5000000"


@pytest.mark.parametrize(
    "env", [{}, {"NOTIFY_SOCKET": ""}, {"NOTIFY_SOCKET": "vsock:2:1234"}, {"NOTIFY_SOCKET": "@"}]
)
def test_without_a_usable_socket_it_is_a_no_op(env: dict[str, str]) -> None:
    assert systemd.notify("READY=1", env) is False
    assert systemd.ready(environ=env) is False
    assert systemd.watchdog(env) is False


def test_send_errors_return_false_and_do_not_raise(tmp_path: Path) -> None:
    # Nobody listens on this path: connection refused / not found, swallowed.
    assert systemd.ready(environ={"NOTIFY_SOCKET": str(tmp_path / "gone.sock")}) is False
    assert systemd.ready(environ={"NOTIFY_SOCKET": "/nul\0byte"}) is False


def test_default_environ_is_os_environ(
    listener: tuple[socket.socket, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, env = listener
    monkeypatch.setenv("NOTIFY_SOCKET", env["NOTIFY_SOCKET"])
    assert systemd.watchdog() is True
    assert recv(sock) == "WATCHDOG=1"
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert systemd.watchdog() is False


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
        ({"WATCHDOG_USEC": "1000000"}, 0.5),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "not-a-pid"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_PID": str(os.getpid())}, None),
        ({}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    assert systemd.watchdog_interval(env) == expected
