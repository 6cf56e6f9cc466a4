"""PostgreSQL measurement baselines: the app's business transaction, pgmq and procrastinate. NOT product code.

Like `baselines.py`, this holds SQL on purpose: the application's own tables (an order row and a
per-customer counter, the pgbench-style transaction the outbox rides along with) and the schema
housekeeping of a benchmark run. Our side is only ever measured through the public API
(`Outbox.enqueue(conn=)`, `open_store`, the Worker).

The peers install their SQL from their own PyPI packages (the `bench` extra): pgmq's SQL-only install
(`pgmq.install`, into its `pgmq` schema) and procrastinate's `schema.sql` (into a schema of its own,
reached through the connection's search_path). Whatever a run creates it drops afterwards; pgmq's
schema only when this run installed it.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import httpx
import orjson

from agent.bench.baselines import _client

if TYPE_CHECKING:  # psycopg is the `postgres` extra: imported when the group runs, not before
    import psycopg

BENCH_EXTRA = "pip install 'dodo-outbox[bench]'"
CUSTOMERS = 100
"""Counter rows of the business transaction: few enough to be hot, enough that 8 clients rarely wait."""


def missing_peers() -> list[str]:
    """The PostgreSQL peers (the `bench` extra) that cannot be imported: "pgmq", "procrastinate"."""
    missing: list[str] = []
    try:
        import pgmq.install  # noqa: F401 (imported only to learn whether it is installed)
    except ImportError:
        missing.append("pgmq")
    try:
        import procrastinate  # noqa: F401
    except ImportError:
        missing.append("procrastinate")
    return missing


def connect(url: str, search_path: Sequence[str] = ()) -> psycopg.Connection[Any]:
    """An app's connection as psycopg makes it by default (autocommit off: each `conn.transaction()`
    block is one BEGIN … COMMIT), optionally with a search_path (procrastinate's functions are called
    unqualified), committed so that no transaction is left open."""
    import psycopg

    conn = psycopg.connect(url)
    if search_path:
        conn.execute(f"SET search_path TO {', '.join([*search_path, 'public'])}")
    conn.commit()
    return conn


def new_name(prefix: str) -> str:
    """A schema (or queue) name no other run uses: `prefix` + 8 hex digits."""
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def create_app_tables(conn: psycopg.Connection[Any], schema: str) -> None:
    """The application's schema: `orders` (one row per transaction) and `counters` (one per customer)."""
    conn.execute(f"CREATE SCHEMA {schema}")
    conn.execute(
        f"CREATE TABLE {schema}.orders (id bigserial PRIMARY KEY, customer text NOT NULL, "
        "amount_cents integer NOT NULL, created_at timestamptz NOT NULL DEFAULT now())"
    )
    conn.execute(
        f"CREATE TABLE {schema}.counters (customer text PRIMARY KEY, orders bigint NOT NULL DEFAULT 0, "
        "amount_cents bigint NOT NULL DEFAULT 0)"
    )
    conn.execute(
        f"INSERT INTO {schema}.counters (customer) SELECT 'cus_' || lpad(g::text, 5, '0') "
        f"FROM generate_series(0, {CUSTOMERS - 1}) g"
    )


class BusinessTransaction:
    """The app's own work in one transaction: insert an order, add it to the customer's counter."""

    def __init__(self, schema: str) -> None:
        self.insert = f"INSERT INTO {schema}.orders (customer, amount_cents) VALUES (%s, %s)"
        self.update = (
            f"UPDATE {schema}.counters SET orders = orders + 1, amount_cents = amount_cents + %s "
            "WHERE customer = %s"
        )

    def run(self, conn: psycopg.Connection[Any], customer: str, amount_cents: int) -> None:
        conn.execute(self.insert, (customer, amount_cents))
        conn.execute(self.update, (amount_cents, customer))


def drop_schemas(url: str, schemas: Sequence[str]) -> None:
    """DROP SCHEMA … CASCADE for each (quietly skips those that do not exist)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        for schema in schemas:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


class Pgmq:
    """pgmq on the bench server: its SQL installed from the `pgmq` package unless the server has it."""

    def __init__(self, url: str) -> None:
        import psycopg
        from pgmq import PGMQueue
        from pgmq.install import install_pgmq_from_sql
        from psycopg_pool import ConnectionPool

        self.url = url
        with psycopg.connect(url, autocommit=False) as conn:
            found = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = 'pgmq'").fetchone()
        self.installed_here = found is None
        if self.installed_here:
            with psycopg.connect(url, autocommit=False) as conn:
                self.version = install_pgmq_from_sql(conn=conn)
        else:
            self.version = "already on the server"
        self.pool: ConnectionPool[Any] = ConnectionPool(url, min_size=1, max_size=2, open=True)
        self.client: Any = PGMQueue(pool=self.pool, init_extension=False)
        self.queues: list[str] = []

    def new_queue(self) -> str:
        name = new_name("dodo_bench")
        self.client.create_queue(name)
        self.queues.append(name)
        return name

    def send(self, conn: psycopg.Connection[Any], queue: str, message: dict[str, Any]) -> None:
        """pgmq's `send`, on the app's connection (inside its transaction)."""
        self.client.send(queue, message, conn=conn)

    def fill(self, queue: str, messages: Sequence[dict[str, Any]], chunk: int = 1000) -> None:
        for start in range(0, len(messages), chunk):
            self.client.send_batch(queue, list(messages[start : start + chunk]))

    def drain(self, queue: str, url: str, batch: int = 1000) -> int:
        """read(batch) + POST to `url` + delete_batch, until the queue is empty; the events delivered.

        Raises RuntimeError on a non-2xx answer."""
        return pgmq_drain(self.client, queue, url, batch)

    def close(self) -> None:
        import psycopg

        try:
            for queue in self.queues:
                self.client.drop_queue(queue)
            if self.installed_here:
                with psycopg.connect(self.url, autocommit=True) as conn:
                    conn.execute("DROP SCHEMA IF EXISTS pgmq CASCADE")
        finally:
            self.pool.close()


def pgmq_drain(client: Any, queue: str, url: str, batch: int = 1000) -> int:
    """pgmq's consumer loop with `client` (a `pgmq.PGMQueue`): read(batch) (its visibility timeout,
    `FOR UPDATE SKIP LOCKED`, so several consumers share a queue) + POST to `url` + delete_batch,
    until a read finds nothing; the events delivered. Raises RuntimeError on a non-2xx answer."""
    delivered = 0
    with _client(url) as http:
        while True:
            messages = client.read(queue, vt=30, qty=batch)
            if not messages:
                return delivered
            body = orjson.dumps({"events": [m.message for m in messages]})
            response: httpx.Response = http.post("/events/ingest", content=body)
            if response.status_code // 100 != 2:
                raise RuntimeError(f"pgmq loop: HTTP {response.status_code}: {response.text[:200]}")
            client.delete_batch(queue, [m.msg_id for m in messages])
            delivered += len(messages)


class Procrastinate:
    """procrastinate's schema.sql (from its package) in schema `schema`, and one task to defer."""

    def __init__(self, url: str, schema: str) -> None:
        from importlib import resources

        import procrastinate
        import psycopg

        self.schema = schema
        sql = (resources.files("procrastinate.sql") / "schema.sql").read_text(encoding="utf-8")
        with psycopg.connect(url, autocommit=False) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
            conn.execute(f"SET LOCAL search_path TO {schema}")
            conn.execute(sql.encode())
        self.version = procrastinate.__version__
        app = procrastinate.App(connector=procrastinate.SyncPsycopgConnector(conninfo=url))

        def usage_event(**event: Any) -> None:  # never run: the benchmark only defers
            pass

        self.task: Any = app.task(name="dodo_bench.usage_event", queue="usage")(usage_event)

    def defer(self, conn: psycopg.Connection[Any], event: dict[str, Any]) -> None:
        """procrastinate's defer with the app's connection: the job INSERT joins its transaction."""
        self.task.configure(connection=conn).defer(event=event)
