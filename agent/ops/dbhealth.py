"""Warnings about the database under the outbox: dead row versions and long open transactions.

Backend-neutral: the store reports a `VacuumHealth` (PostgreSQL) or None (SQLite, which has neither),
and this module turns it into the `database` section of the status document and its `warnings`.
`dodo-outbox status`, `GET /v1/status`, the metrics and `doctor` share these thresholds.

Why these thresholds:
- Dead tuples: the claim walks the partial claim index in event-time order, and every row a claim
  or a settle moved out of `pending` leaves a dead entry there until vacuum removes it. The events
  table's autovacuum starts at 1% of its rows, so dead row versions outnumbering live ones means
  vacuum is not keeping up (it is off, throttled, or held back by an old transaction), and each
  claim steps over more dead entries than rows it can take. Below 10,000 the extra work is a few
  milliseconds, so a small queue that just drained does not warn.
- The oldest open transaction: while it stays open, vacuum cannot remove any row version that died
  after it started, anywhere in the database, so the outbox's dead tuples pile up behind it. Five
  minutes is far longer than any transaction of the agent (milliseconds) or of a healthy app
  request, and short enough to act before the claim slows down.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agent.store import VacuumHealth


@dataclass(frozen=True, slots=True)
class Limits:
    """Where a warning starts (see the module docstring for why)."""

    min_dead_tuples: int = 10_000
    """Dead tuples warn only above this many, and only when they outnumber the live ones."""
    max_transaction_age: float = 300.0
    """Seconds an open transaction may run before it warns."""


DEFAULT_LIMITS = Limits()


def document(health: VacuumHealth | None) -> dict[str, Any] | None:
    """The `database` section of the status document; None for a backend without these facts."""
    if health is None:
        return None
    return {
        "live_tuples": health.live_tuples,
        "dead_tuples": health.dead_tuples,
        "last_autovacuum": health.last_autovacuum,
        "oldest_transaction_age_seconds": health.oldest_transaction_age_seconds,
        "oldest_transaction_pid": health.oldest_transaction_pid,
        "oldest_transaction_state": health.oldest_transaction_state,
    }


def too_many_dead(health: VacuumHealth, limits: Limits = DEFAULT_LIMITS) -> bool:
    return health.dead_tuples > max(limits.min_dead_tuples, health.live_tuples)


def transaction_too_old(health: VacuumHealth, limits: Limits = DEFAULT_LIMITS) -> bool:
    age = health.oldest_transaction_age_seconds
    return age is not None and age > limits.max_transaction_age


def warnings(health: VacuumHealth | None, limits: Limits = DEFAULT_LIMITS) -> list[str]:
    """One sentence per threat to the claim: what it is and what to do; empty when all is well."""
    if health is None:
        return []
    found: list[str] = []
    if too_many_dead(health, limits):
        found.append(
            f"the events table holds {health.dead_tuples:,} dead row versions for {health.live_tuples:,} "
            "live ones: vacuum is not keeping up, and every claim steps over them. Look for a long open "
            "transaction (below, or pg_stat_activity), check that autovacuum runs (last_autovacuum in "
            "pg_stat_user_tables), or run VACUUM on dodo_outbox_events"
        )
    if transaction_too_old(health, limits):
        pid = health.oldest_transaction_pid
        who = f"session pid {pid}" if pid is not None else "a session"
        state = f" ({health.oldest_transaction_state})" if health.oldest_transaction_state else ""
        found.append(
            f"a transaction has been open for {health.oldest_transaction_age_seconds:.0f}s on the outbox's "
            f"database by {who}{state}: until it ends, vacuum cannot reclaim dead rows and the claim slows "
            "down. Find it with `SELECT pid, usename, application_name, state, xact_start, query FROM "
            "pg_stat_activity WHERE xact_start IS NOT NULL ORDER BY xact_start`; commit or end it "
            "(pg_terminate_backend(pid)); for a prepared transaction, COMMIT/ROLLBACK PREPARED it"
        )
    return found
