"""The outbox store: the only package in dodo-outbox that speaks SQL.

- `base.OutboxStore`: the interface (a typing Protocol) naming every operation the agent needs;
- `records`: the backend-neutral values it speaks (Claimed, EventRecord, DeadFilter, ...);
- `sqlite/`: the SQLite implementation, `SqliteStore`, split by concern;
- `open_store(location, options)`: the one place that picks a backend (a path today; issue 13 adds
  `postgresql://` URLs). Code outside this package opens stores here and annotates with OutboxStore.

Damaged outbox files are checked, quarantined and salvaged through `check_outbox`, `quarantine` and
`salvage` below, so the service and `doctor` do not reach into a backend either.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from agent.errors import ConfigError
from agent.store.base import OutboxStore
from agent.store.location import is_postgres_url, mask_url
from agent.store.records import (
    Claimed,
    DeadFilter,
    EventRecord,
    FileStats,
    InsertResult,
    KeyStats,
    MeterRow,
    NameStats,
    RangeRow,
    ReplayChunk,
    Retimed,
    State,
    StoreOptions,
    VacuumHealth,
    WindowRates,
)
from agent.store.sqlite import SqliteStore
from agent.store.sqlite import damage as _damage
from agent.store.sqlite import salvage as _salvage
from agent.store.sqlite.damage import Health
from agent.store.sqlite.salvage import SalvageReport
from agent.store.sqlite.schema import SCHEMA_VERSION

if TYPE_CHECKING:
    from agent.store.postgres.health import Inspection

Store = SqliteStore
"""The SQLite implementation under its historical name (tests build files with it)."""


def open_store(location: str | Path, options: StoreOptions | None = None) -> OutboxStore:
    """Open (creating and migrating as needed) the outbox at `location`: a file path, or a
    `postgresql://` URL (the `postgres` extra; the schema is `options.schema`).

    Raises ConfigError for a PostgreSQL URL without the `postgres` extra installed.
    Raises OutboxCorruptError for a damaged file, OutboxFullError for a full disk, OutboxError for
    anything else that keeps it from opening.
    """
    if is_postgres_url(location):
        _need_psycopg()
        from agent.store.postgres import PostgresStore

        return PostgresStore(str(location), options)
    return SqliteStore(location, options)


def _need_psycopg() -> None:
    """Raises ConfigError naming the `postgres` extra when psycopg cannot be imported."""
    try:
        import agent.store.postgres  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            "a postgresql:// outbox needs psycopg, which is not installed "
            f"({exc.name or exc}): install the extra with `pip install 'dodo-outbox[postgres]'`"
        ) from None


def inspect_postgres(url: str, options: StoreOptions | None = None) -> Inspection:
    """What `dodo-outbox doctor` checks on a PostgreSQL outbox, read without migrating or writing.

    Raises ConfigError when the server refuses the login or has no such database, OutboxError when
    it cannot be reached (see agent/store/postgres/health.py).
    """
    _need_psycopg()
    from agent.store.postgres import health
    from agent.store.postgres.connection import PgBase

    options = options or StoreOptions()
    version = health.connect_check(url, timeout=max(options.busy_timeout_ms, 1000) / 1000)
    with PgBase(url, options) as db:
        return health.inspect(db, version)


def check_outbox(location: Path, *, full: bool = True, limit: int = 20) -> Health:
    """The integrity of the outbox at `location`, read without writing it (`dodo-outbox doctor`)."""
    return _damage.check(location, full=full, limit=limit)


def quarantine(location: Path, now: float) -> Path:
    """Move a damaged outbox aside (to `<name>.corrupt-<UTC time>`); returns where it went."""
    return _damage.quarantine(location, now)


def salvage(source: Path, target: OutboxStore, now_us: int) -> SalvageReport:
    """Copy every intact row of the damaged outbox `source` into the store `target`."""
    if not isinstance(target, SqliteStore):
        raise TypeError(f"salvage copies into an SQLite outbox, not {type(target).__name__}")
    return _salvage.salvage(source, target, now_us)


__all__ = [
    "SCHEMA_VERSION",
    "Claimed",
    "DeadFilter",
    "EventRecord",
    "FileStats",
    "Health",
    "InsertResult",
    "KeyStats",
    "MeterRow",
    "NameStats",
    "OutboxStore",
    "RangeRow",
    "ReplayChunk",
    "Retimed",
    "SalvageReport",
    "SqliteStore",
    "State",
    "Store",
    "StoreOptions",
    "VacuumHealth",
    "WindowRates",
    "check_outbox",
    "inspect_postgres",
    "is_postgres_url",
    "mask_url",
    "open_store",
    "quarantine",
    "salvage",
]
