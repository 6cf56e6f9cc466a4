"""The SQLite backend of the store interface (`agent.store.base.OutboxStore`).

`SqliteStore` is composed of one class per concern, each in its own module and each a subclass of
`connection.StoreBase` (the one connection, its lock and the transaction helper `write()`/`read()`):

| module        | concern                                                                    |
|---------------|----------------------------------------------------------------------------|
| connection.py | opening the file, the transaction helper, SQLite errors as ours            |
| schema.py     | tables, indexes, migrations, the schema version                            |
| insert.py     | enqueue's SQL: multi-row INSERTs, duplicates, conflicts, retimed repeats   |
| queue.py      | insert strategies, claim, the guarded transitions, backlog, next due       |
| dlq.py        | dead rows, replay, purge, top reasons; retention (prune, vacuum), windows  |
| ops.py        | counts, lookups by event_id, key-value, the request log                    |
| meters.py     | the meter cache and the meter queries                                      |
| preview.py    | event-time range reads for `meters preview` and `reconcile`                |
| clock.py      | repairing stored instants after the wall clock stepped back                |
| salvage.py    | checking a damaged file, quarantining it, copying its readable rows        |

Why composition by subclassing, not delegation: every public method is defined exactly once, in the
module of its concern, and `SqliteStore` lists its parts below; a reader goes from a call on
`OutboxStore` (agent/store/base.py, the contract with its docstrings) to `SqliteStore`, whose bases
name the one module defining each method. mypy checks `SqliteStore` against `OutboxStore`
(`agent.store.open_store` returns one as the other).
"""

from __future__ import annotations

from agent.store.sqlite.clock import ClockMixin
from agent.store.sqlite.dlq import DlqMixin
from agent.store.sqlite.meters import MetersMixin
from agent.store.sqlite.ops import OpsMixin
from agent.store.sqlite.preview import PreviewMixin
from agent.store.sqlite.queue import QueueMixin


class SqliteStore(QueueMixin, OpsMixin, DlqMixin, MetersMixin, PreviewMixin, ClockMixin):
    """The outbox in one SQLite file. Thread-safe; open one per process and share it."""


__all__ = ["SqliteStore"]
