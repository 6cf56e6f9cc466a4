"""The agent's heartbeat: written at most every BEAT_SECONDS, its counts added up, never lost when a
beat fails, and never a reason for delivery to stop."""

from __future__ import annotations

from pathlib import Path

from agent.delivery.heartbeat import Heartbeat
from agent.ops.fleet import BEAT_SECONDS
from agent.store import Store


def test_beats_are_throttled_and_add_up(tmp_path: Path) -> None:
    clock = [100.0]
    with Store(tmp_path / "outbox.db") as store:
        beat = Heartbeat(store, "h:1:x", clock=lambda: clock[0])
        beat.count(claimed=5, delivered=4)
        assert beat.beat() is True  # the first beat registers the agent
        beat.count(claimed=3, delivered=3)
        assert beat.beat() is False  # too soon: kept for the next one
        clock[0] += BEAT_SECONDS
        assert beat.beat() is True
        (row,) = store.agents()
        assert (row.claimed, row.delivered, row.stopped) == (8, 7, False)
        assert beat.beat(stopped=True) is True  # stopping always writes
        assert store.agents()[0].stopped is True


def test_a_failed_beat_keeps_its_counts_for_the_next(tmp_path: Path) -> None:
    clock = [100.0]
    broken = Store(tmp_path / "outbox.db")
    broken.close()  # every write now raises OutboxClosedError (an OutboxError)
    beat = Heartbeat(broken, "h:1:x", clock=lambda: clock[0])
    beat.count(claimed=2, delivered=2)
    assert beat.beat() is False
    with Store(tmp_path / "outbox.db") as store:
        beat._store = store  # the outbox is back
        clock[0] += BEAT_SECONDS
        assert beat.beat() is True
        assert (store.agents()[0].claimed, store.agents()[0].delivered) == (2, 2)
