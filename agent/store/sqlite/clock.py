"""Retry times and leases are wall-clock instants in the outbox; these queries repair them when the
clock steps back (NTP, a VM restored from a snapshot, a wrong clock set right).

A step back by S seconds pushes every stored future instant S seconds further away: retries would
wait S seconds longer and a dead worker's leases would hold its rows S seconds longer. The worker
calls `shift_back` when it sees the step (wall time falling behind monotonic time), and `cap_future`
once at start, when a step may have happened while no agent ran: nothing this agent schedules can
lie further ahead than its longest delay or its lease, so anything beyond that is brought in.
"""

from __future__ import annotations

from agent.store.records import State
from agent.store.sqlite.connection import StoreBase


def shift_back(db: StoreBase, *, now_us: int, step_us: int) -> int:
    """Bring every pending retry time and inflight lease still after `now_us` `step_us` closer
    (never before `now_us`). Returns the rows changed."""
    with db.write() as conn:
        moved = conn.execute(
            "UPDATE dodo_outbox_events SET next_attempt_at = max(?, next_attempt_at - ?) "
            f"WHERE state = '{State.PENDING}' AND next_attempt_at > ?",
            (now_us, step_us, now_us),
        ).rowcount
        moved += conn.execute(
            "UPDATE dodo_outbox_events SET lease_until = max(?, lease_until - ?) "
            f"WHERE state = '{State.INFLIGHT}' AND lease_until > ?",
            (now_us, step_us, now_us),
        ).rowcount
    return moved


def cap_future(db: StoreBase, *, now_us: int, max_delay_us: int, lease_us: int) -> int:
    """Pending rows due later than `now + max_delay` become due now; leases ending later than
    `now + lease` end then. Returns the rows changed."""
    with db.write() as conn:
        moved = conn.execute(
            "UPDATE dodo_outbox_events SET next_attempt_at = ? "
            f"WHERE state = '{State.PENDING}' AND next_attempt_at > ?",
            (now_us, now_us + max_delay_us),
        ).rowcount
        moved += conn.execute(
            "UPDATE dodo_outbox_events SET lease_until = ? "
            f"WHERE state = '{State.INFLIGHT}' AND lease_until > ?",
            (now_us + lease_us, now_us + lease_us),
        ).rowcount
    return moved
