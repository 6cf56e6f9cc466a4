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
    WindowRates,
)
from agent.store.sqlite import SqliteStore
from agent.store.sqlite import damage as _damage
from agent.store.sqlite import salvage as _salvage
from agent.store.sqlite.damage import Health
from agent.store.sqlite.salvage import SalvageReport
from agent.store.sqlite.schema import SCHEMA_VERSION

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
        try:
            from agent.store.postgres import PostgresStore
        except ImportError as exc:
            raise ConfigError(
                "a postgresql:// outbox needs psycopg, which is not installed "
                f"({exc.name or exc}): install the extra with `pip install 'dodo-outbox[postgres]'`"
            ) from None
        return PostgresStore(str(location), options)
    return SqliteStore(location, options)


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


def migrate(location: str | Path, options: StoreOptions | None = None) -> tuple[int, int]:
    """Create the outbox at `location` or bring its schema forward, as opening it does, and close it:
    for teams that run migrations as a deploy step (`dodo-outbox migrate`). Returns (the version
    found, 0 when it created the outbox; the version it is at now). Raises as `open_store` does."""
    with open_store(location, options) as store:
        return store.schema_versions


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
    "WindowRates",
    "check_outbox",
    "is_postgres_url",
    "mask_url",
    "migrate",
    "open_store",
    "quarantine",
    "salvage",
]
