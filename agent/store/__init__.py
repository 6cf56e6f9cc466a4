"""The outbox store: the only package in dodo-outbox that speaks SQL.

- `base.OutboxStore`: the interface (a typing Protocol) naming every operation the agent needs;
- `records`: the backend-neutral values it speaks (Claimed, EventRecord, DeadFilter, ...);
- `sqlite/`: the SQLite implementation, `SqliteStore`, split by concern;
- `postgres/`: the PostgreSQL implementation, `PostgresStore` (the `postgres` extra, imported lazily);
- `open_store(location, options)`: the one place that picks a backend (a file path or a `postgresql://`
  URL). Code outside this package opens stores here and annotates with OutboxStore.

Damaged outbox files are checked, quarantined and salvaged through `check_outbox`, `quarantine` and
`salvage` below, so the service and `doctor` do not reach into a backend either.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.errors import ConfigError
from agent.store.base import OutboxStore
from agent.store.location import Location, is_postgres_url, mask_url, parse_location, show_location
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


def _postgres() -> Any:
    """The PostgreSQL backend package; ConfigError when the `postgres` extra is not installed."""
    try:
        import agent.store.postgres
        import agent.store.postgres.probe
    except ImportError as exc:
        raise ConfigError(
            "a postgresql:// outbox needs psycopg, which is not installed "
            f"({exc.name or exc}): install the extra with `pip install 'dodo-outbox[postgres]'`"
        ) from None
    return agent.store.postgres


def outbox_exists(location: Location, options: StoreOptions | None = None) -> bool:
    """Whether an outbox is at `location` (a file, or the schema `options.schema` of a PostgreSQL
    database), checked without creating it. Raises OutboxError when the database is unreachable."""
    if is_postgres_url(location):
        schema = (options or StoreOptions()).schema
        return bool(_postgres().probe.outbox_exists(str(location), schema))
    return Path(location).exists()


def open_store(location: Location, options: StoreOptions | None = None) -> OutboxStore:
    """Open (creating and migrating as needed) the outbox at `location`: a file path, or a
    `postgresql://` URL (the `postgres` extra; the schema is `options.schema`).

    Raises ConfigError for a PostgreSQL URL without the `postgres` extra installed.
    Raises OutboxCorruptError for a damaged file, OutboxFullError for a full disk, OutboxError for
    anything else that keeps it from opening.
    """
    if is_postgres_url(location):
        store: OutboxStore = _postgres().PostgresStore(str(location), options)
        return store
    return SqliteStore(location, options)


def inspect_postgres(url: str, options: StoreOptions | None = None) -> Inspection:
    """What `dodo-outbox doctor` checks on a PostgreSQL outbox, read without migrating or writing.

    Raises ConfigError when the server refuses the login or has no such database, OutboxError when
    it cannot be reached (see agent/store/postgres/health.py).
    """
    _postgres()
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
    "Location",
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
    "migrate",
    "open_store",
    "outbox_exists",
    "parse_location",
    "quarantine",
    "salvage",
    "show_location",
]
