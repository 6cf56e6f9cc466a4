"""Whether a PostgreSQL outbox exists, checked without creating anything (the CLI's typo guard)."""

from __future__ import annotations

import psycopg

from agent.errors import OutboxError
from agent.store.location import check_schema_name, mask_url
from agent.store.postgres.connection import _detail

CONNECT_TIMEOUT_SECONDS = 10


def outbox_exists(url: str, schema: str) -> bool:
    """Whether `schema` on the database at `url` holds an outbox (its events table).

    Raises OutboxError naming the masked URL when the database cannot be reached.
    """
    check_schema_name(schema)
    try:
        with psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT_SECONDS, autocommit=True) as conn:
            row = conn.execute("SELECT to_regclass(%s)", (f"{schema}.dodo_outbox_events",)).fetchone()
    except psycopg.Error as exc:
        raise OutboxError(f"cannot open the outbox {mask_url(url)}: {_detail(exc)}") from None
    return row is not None and row[0] is not None
