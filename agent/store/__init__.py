"""The outbox database: the only package in dodo-outbox that speaks SQL.

`Store` is assembled from one mixin per concern (queue hot paths, operator queries, ...), each in its
own module, all sharing one connection and one transaction helper (`StoreBase.write`).
"""

from __future__ import annotations

from agent.store.base import State, StoreOptions, disk_full
from agent.store.clock import ClockMixin
from agent.store.dlq import DeadFilter, DlqMixin, FileStats, ReplayChunk, WindowRates
from agent.store.insert import InsertResult, Retimed, insert_in_transaction
from agent.store.meters import MetersMixin
from agent.store.ops import EventRecord, OpsMixin
from agent.store.preview import PreviewMixin, RangeRow
from agent.store.queue import Claimed, QueueMixin
from agent.store.schema import SCHEMA_VERSION


class Store(QueueMixin, OpsMixin, DlqMixin, MetersMixin, PreviewMixin, ClockMixin):
    """The outbox file. Thread-safe; open one per process and share it."""


__all__ = [
    "SCHEMA_VERSION",
    "Claimed",
    "DeadFilter",
    "DlqMixin",
    "EventRecord",
    "FileStats",
    "InsertResult",
    "RangeRow",
    "ReplayChunk",
    "Retimed",
    "State",
    "Store",
    "StoreOptions",
    "WindowRates",
    "disk_full",
    "insert_in_transaction",
]
