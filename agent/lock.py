"""One running agent per outbox file and per drop directory: an OS lock that dies with its process.

`flock(LOCK_EX | LOCK_NB)` on a lock file (`<outbox>.lock`, `<dropdir>/.dodo-outbox.lock`). The kernel
releases it when the process exits, however it exits (kill -9 included), so a lock is never stale and
there is nothing to clean up. The file holds who took it (pid, host, start time) so a refused agent can
name the running one; the file itself proves nothing, only the lock does, and it is never deleted
(deleting it would let a second agent lock a new file while the first still holds the old one).

Only `run` takes these locks. The CLI (`enqueue`, `drain --once`, `dlq replay`...) and the library
work beside a running agent: SQLite's own locking keeps their writes safe.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from agent.errors import ConfigError


class AlreadyRunningError(ConfigError):
    """Another agent holds the lock; the message names it (pid, host, start time) and the lock file."""


class ProcessLock:
    """An exclusive lock on `path`, held from `acquire()` until `release()` or the process ends."""

    def __init__(self, path: Path, what: str) -> None:
        self.path = path
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> ProcessLock:
        """Take the lock or raise AlreadyRunningError (ConfigError when the file cannot be opened)."""
        if self._fd is not None:
            return self
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise ConfigError(
                f"cannot open the lock file {self.path} for {self.what}: {exc.strerror}"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise AlreadyRunningError(
                f"another agent is already running on {self.what} ({holder}; lock file {self.path}). "
                "Stop it first, or give this one its own [outbox] path and [intake.dropdir] path. "
                "CLI commands such as drain --once, enqueue and dlq replay work beside it"
            ) from None
        except OSError as exc:
            os.close(fd)
            raise ConfigError(f"cannot lock {self.path} for {self.what}: {exc.strerror}") from None
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "started_at": _now()}
        with contextlib.suppress(OSError):  # the lock holds even if the note cannot be written
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(owner) + "\n").encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Let the lock go (closing the file releases it). Safe to call twice."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    @property
    def held(self) -> bool:
        return self._fd is not None


def _holder(fd: int) -> str:
    """`pid 4242 on host web-1, started 2026-12-01T20:00:00Z`, from what the running agent wrote."""
    try:
        owner: Any = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        owner = {}
    if not isinstance(owner, dict) or "pid" not in owner:
        return "its pid is not recorded yet"
    return f"pid {owner.get('pid')} on host {owner.get('host', '?')}, started {owner.get('started_at', '?')}"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def outbox_lock(outbox: Path) -> ProcessLock:
    """The lock of one outbox file: `<outbox>.lock` beside it."""
    real = outbox.resolve()  # two spellings of one file (a symlink, ../) share one lock
    return ProcessLock(real.with_name(real.name + ".lock"), f"the outbox {outbox}")


def dropdir_lock(root: Path) -> ProcessLock:
    """The lock of one drop directory: `.dodo-outbox.lock` inside it (hidden: never read as input)."""
    return ProcessLock(root.resolve() / ".dodo-outbox.lock", f"the drop directory {root}")
