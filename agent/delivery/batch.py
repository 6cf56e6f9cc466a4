"""A claimed batch, ready to send: the late-event policy applied, payloads spliced as stored.

Pure apart from the clock value it is given: no I/O. ``agent.delivery.settle`` sends and settles what
:func:`prepare` returns, the expired rows it sets aside included. The late rule is
:func:`agent.delivery.backoff.is_late`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from agent.config import DeliverySettings
from agent.delivery.backoff import late_cutoff
from agent.store import Claimed
from agent.timestamps import from_us, strip_timestamp


@dataclass
class Counts:
    """What one batch (or one drain) did. ``sent`` counts HTTP requests, the rest count events."""

    sent: int = 0
    delivered: int = 0
    retried: int = 0
    dead: int = 0
    restamped: int = 0
    duplicates_ignored: int = 0

    def add(self, other: Counts) -> None:
        for f in fields(Counts):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


@dataclass
class DrainReport(Counts):
    """What a drain did: the counts of its batches (``sent`` counts requests, the rest events), plus
    ``paused`` (the pause reason, None while delivery runs), ``next_due`` (epoch seconds when more is
    due; at most now when more is due at once; None when nothing is pending), rows ``claimed`` and
    leases ``released``."""

    paused: str | None = None
    next_due: float | None = None
    claimed: int = 0
    released: int = 0

    def add(self, other: Counts) -> None:
        """Add the counts of a batch or another report (not paused / next_due)."""
        super().add(other)
        if isinstance(other, DrainReport):
            self.claimed += other.claimed
            self.released += other.released

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Batch:
    """One claimed batch, ready to send: rows in claim order, the payload each sends, the ids of
    rows sent without their (too old) timestamp, and the ``expired`` rows that are not sent at all
    (late under ``late_events = dead_letter``: settle dead-letters them).

    ``owner`` is the claim token the rows were leased under (the worker's owner and the batch id):
    every settle of this batch is guarded by it, so a batch that stalled past its lease can never move
    rows a later claim (even one of the same worker) holds now. Empty: the settler's own owner."""

    rows: list[Claimed]
    payloads: list[str]
    restamped: frozenset[int] = frozenset()
    batch_id: str = ""
    counts: Counts = field(default_factory=Counts)
    expired: list[Claimed] = field(default_factory=list)
    owner: str = ""

    def swap(self, i: int, j: int) -> None:
        """Exchange two rows (and their payloads): the order inside a request does not matter."""
        self.rows[i], self.rows[j] = self.rows[j], self.rows[i]
        self.payloads[i], self.payloads[j] = self.payloads[j], self.payloads[i]


def prepare(
    rows: list[Claimed], now: float, settings: DeliverySettings, batch_id: str, owner: str = ""
) -> Batch:
    """Apply the late-event policy to claimed rows at ``now`` (epoch seconds): the batch to send.

    A row is late when :func:`~agent.delivery.backoff.is_late` says so (its event time is older than
    ``window_seconds - late_margin_seconds``). Under ``restamp`` it is sent without its timestamp
    (Dodo stamps it on receipt); under ``dead_letter`` it is left out of the rows to send and put in
    ``expired``.
    """
    # is_late(ts) for every row, with the cutoff computed once: one comparison per row.
    cutoff = late_cutoff(now, settings.window_seconds, settings.late_margin_seconds)
    payloads = [row.payload for row in rows]
    late = [i for i, row in enumerate(rows) if from_us(row.ts_us) < cutoff]
    if not late:
        return Batch(rows, payloads, batch_id=batch_id, owner=owner)
    if settings.late_events == "dead_letter":
        gone = set(late)
        keep = [row for i, row in enumerate(rows) if i not in gone]
        expired = [rows[i] for i in late]
        return Batch(keep, [row.payload for row in keep], batch_id=batch_id, expired=expired, owner=owner)
    restamped: set[int] = set()
    for i in late:
        try:
            payloads[i] = strip_timestamp(payloads[i])
            restamped.add(rows[i].id)
        except ValueError:
            pass  # not canonical: send it as stored; Dodo's answer decides (bisection isolates it)
    return Batch(rows, payloads, frozenset(restamped), batch_id, owner=owner)
