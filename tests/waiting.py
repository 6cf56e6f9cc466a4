"""Waiting for a condition, never for a fixed time: the suite runs on busy, shared machines."""

from __future__ import annotations

import time
from collections.abc import Callable

PATIENCE = 60.0
"""The default deadline: generous, since a condition that holds returns at once anyway."""


def wait_until(
    predicate: Callable[[], object],
    timeout: float = PATIENCE,
    what: str = "the condition",
    poll: float = 0.05,
) -> None:
    """Poll `predicate` until it holds; fail the test naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(poll)
