"""sd_notify(3) without libsystemd: tell the service manager how the agent is doing.

systemd hands a ``Type=notify`` service the address of a datagram socket in ``$NOTIFY_SOCKET``:
a file-system path (``/run/systemd/notify``) or an abstract name written ``@name``. Each state
change is one datagram of newline-separated ``KEY=value`` assignments.

Contract of every function here:

- Without ``$NOTIFY_SOCKET`` (a terminal, a container, the test suite) it is a no-op returning False.
- It never raises and never logs: a lost notification must not take the agent down. A failed send
  returns False; the watchdog then restarts us, which is what it is for.
- ``environ`` is injectable (defaults to ``os.environ``) so tests need no monkeypatching.

Typical use in the composition root::

    interval = systemd.watchdog_interval()       # None unless WatchdogSec= is set for us
    ...start the parts...
    systemd.ready("draining every 5s")
    # on a timer every `interval` seconds, only while the worker is healthy:
    systemd.watchdog()
    # on SIGHUP: systemd.reloading(); re-read config; systemd.ready()
    # on SIGTERM: systemd.stopping(); drain; exit
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

__all__ = [
    "notify",
    "ready",
    "reloading",
    "status",
    "stopping",
    "watchdog",
    "watchdog_interval",
]


def _address(raw: str) -> str | bytes | None:
    """Turn ``$NOTIFY_SOCKET`` into an AF_UNIX address, or None when unusable.

    ``@name`` is an abstract socket: the leading ``@`` stands for a NUL byte. Other schemes
    (``vsock:``, used by VMs) are not supported here and give None.
    """
    if raw.startswith("@") and len(raw) > 1:
        return b"\0" + raw[1:].encode()
    if raw.startswith("/"):
        return raw
    return None


def notify(state: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send one sd_notify datagram, e.g. ``"READY=1\\nSTATUS=up"``.

    Returns True when the datagram was handed to the kernel, False when there is no
    ``$NOTIFY_SOCKET``, the address is unusable, or the send failed. Never raises.
    """
    env = os.environ if environ is None else environ
    address = _address(env.get("NOTIFY_SOCKET", ""))
    if address is None or not state:
        return False
    try:
        # One socket per call: notifications are rare (a few a minute), and a fresh socket
        # has no state to go stale across fork() or a restart of the service manager.
        # (Python sockets are close-on-exec already, PEP 446.)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(state.encode("utf-8", "replace"), address)
    except (OSError, ValueError):
        return False
    return True


def _one_line(text: str) -> str:
    # A newline would start a new assignment: STATUS text must not be able to inject "READY=1".
    return " ".join(text.splitlines())


def ready(status: str = "", environ: Mapping[str, str] | None = None) -> bool:
    """Startup (or a reload) is complete: ``READY=1``, plus ``STATUS=`` when given."""
    message = "READY=1"
    if status:
        message += f"\nSTATUS={_one_line(status)}"
    return notify(message, environ)


def stopping(environ: Mapping[str, str] | None = None) -> bool:
    """Shutdown has begun (``STOPPING=1``): systemd stops expecting watchdog pings."""
    return notify("STOPPING=1", environ)


def watchdog(environ: Mapping[str, str] | None = None) -> bool:
    """Keep-alive ping (``WATCHDOG=1``). Send only while the agent is actually making progress."""
    return notify("WATCHDOG=1", environ)


def status(text: str, environ: Mapping[str, str] | None = None) -> bool:
    """Free-form one-line status shown by ``systemctl status`` (``STATUS=...``)."""
    return notify(f"STATUS={_one_line(text)}", environ)


def reloading(environ: Mapping[str, str] | None = None) -> bool:
    """A reload has begun: ``RELOADING=1`` with ``MONOTONIC_USEC`` (required by ``Type=notify-reload``).

    Follow with :func:`ready` once the new configuration is in effect.
    """
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify(f"RELOADING=1\nMONOTONIC_USEC={usec}", environ)


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between watchdog pings, or None when no watchdog is armed for this process.

    Reads ``WATCHDOG_USEC`` (the timeout, from ``WatchdogSec=``) and returns half of it, the period
    sd_watchdog_enabled(3) recommends. None when it is missing, not a positive integer, or when
    ``WATCHDOG_PID`` is set to a process other than this one (the variable was inherited).
    """
    env = os.environ if environ is None else environ
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid is not None:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    return usec / 2_000_000
