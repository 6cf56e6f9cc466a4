"""The PostgreSQL connection: a psycopg_pool pool, the transaction helpers, errors as ours.

psycopg is imported here only (and lazily by `agent.store.open_store`), so the SQLite default runs
without the `postgres` extra. Every psycopg error leaving a helper becomes OutboxError (OutboxFullError
for a full disk), and every message names the outbox by its URL with the password masked.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any, Self

import psycopg
import psycopg.errors
import psycopg_pool

from agent.errors import OutboxClosedError, OutboxError, OutboxFullError
from agent.store.location import check_schema_name, mask_url
from agent.store.records import StoreOptions


class PgBase:
    """A small pool of connections to one PostgreSQL outbox, shared by the threads of one process."""

    def __init__(self, url: str, options: StoreOptions | None = None) -> None:
        self.options = options or StoreOptions()
        self.url = url
        self.shown = mask_url(url)
        self.schema = check_schema_name(self.options.schema)
        s = self.schema
        self.t = {
            "ns": s,
            "ev": f"{s}.dodo_outbox_events",
            "dv": f"{s}.dodo_outbox_delivered",
            "rq": f"{s}.dodo_outbox_requests",
            "kv": f"{s}.dodo_outbox_kv",
            "mt": f"{s}.dodo_outbox_meters",
            "sl": f"{s}.dodo_outbox_slots",
            "ag": f"{s}.dodo_outbox_agents",
        }
        timeout = max(self.options.busy_timeout_ms, 1000) / 1000
        self._pool: psycopg_pool.ConnectionPool[Any] | None = None
        try:
            self._pool = psycopg_pool.ConnectionPool(
                url,
                min_size=1,
                max_size=4,
                timeout=timeout,
                # Retry a lost connection with backoff for this long, then give up and open a fresh one
                # at the next request: psycopg_pool's default (300 s of doubling delays) left the agent
                # waiting 20 s after a 40 s database outage had ended, this about 1 s.
                reconnect_timeout=timeout,
                open=False,
                kwargs={
                    "autocommit": False,
                    "connect_timeout": max(1, int(timeout)),
                    # No session state, so PgBouncer's transaction pooling works: every statement
                    # runs in a transaction, advisory locks are xact-scoped, nothing is SET or
                    # LISTENed; prepared statements (psycopg prepares a query on its 5th run) are
                    # the one session thing left, and [outbox] prepared_statements = false turns
                    # them off for a pooler that does not track them.
                    "prepare_threshold": 5 if self.options.prepared_statements else None,
                },
            )
            self._pool.open(wait=True, timeout=timeout)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            self._close_quietly()
            why = _why_not(url, timeout) if isinstance(exc, psycopg_pool.PoolTimeout) else None
            raise OutboxError(f"cannot open the outbox {self.shown}: {why or _detail(exc)}") from None
        except BaseException:
            self._close_quietly()
            raise

    def q(self, sql: str) -> str:
        """`sql` with {ev}, {dv}, {rq}, {kv}, {mt}, {sl}, {ag} replaced by the schema-qualified table names
        ({ns}: the schema)."""
        return sql.format(**self.t)

    @property
    def location(self) -> str:
        """The URL with its password masked, for messages and status."""
        return self.shown

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.shown!r}, schema={self.schema!r})"

    @property
    def pool(self) -> psycopg_pool.ConnectionPool[Any]:
        if self._pool is None:
            raise OutboxClosedError(f"the outbox {self.shown} is closed")
        return self._pool

    @property
    def closed(self) -> bool:
        return self._pool is None

    def close(self) -> None:
        self._close_quietly()

    def _close_quietly(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            with suppress(Exception):  # closing never raises to the caller
                pool.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def write(self) -> Iterator[psycopg.Connection[Any]]:
        """One transaction: COMMIT on success, ROLLBACK on any error; psycopg errors become ours."""
        with self._translated(), self.pool.connection() as conn:
            yield conn

    read = write
    """Reads use a transaction too (one snapshot per statement under READ COMMITTED)."""

    @contextmanager
    def _translated(self) -> Iterator[None]:
        try:
            yield
        except psycopg.errors.DiskFull as exc:
            raise OutboxFullError(
                f"the disk holding the outbox {self.shown} is full; nothing of this write was stored. "
                "Free space; the agent recovers by itself",
                retry_after=5.0,
            ) from exc
        except psycopg_pool.PoolTimeout as exc:
            raise OutboxError(f"the outbox {self.shown} is unreachable: {_detail(exc)}") from None
        except psycopg.Error as exc:
            raise OutboxError(f"the outbox {self.shown} failed: {_detail(exc)}") from exc

    def translate(self) -> Any:
        """The error translation alone, for work on a caller's connection."""
        return self._translated()


def _why_not(url: str, timeout: float) -> str | None:
    """Why a connection to `url` fails, from one direct attempt: the pool's own timeout ("couldn't get
    a connection after 10 s") hides the server's answer (refused, unknown database, bad password)."""
    try:
        psycopg.connect(url, connect_timeout=max(1, int(timeout))).close()
    except psycopg.Error as exc:
        return _detail(exc)
    return None


def _detail(exc: BaseException) -> str:
    """psycopg's message on one line (its messages carry no password; URLs are never put in them)."""
    return " ".join(str(exc).split()) or type(exc).__name__
