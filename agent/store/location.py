"""Naming an outbox: a file path (SQLite) or a `postgresql://` URL, and showing a URL safely.

No backend imports here: the config, the CLI and the library use these without psycopg installed.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from agent.errors import ConfigError

Location = str | Path
"""Where an outbox lives: an SQLite file (a Path) or a PostgreSQL URL (a str starting `postgresql://`)."""

POSTGRES_SCHEMES = ("postgresql://", "postgres://")
DEFAULT_SCHEMA = "dodo_outbox"
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def is_postgres_url(location: str | Path) -> bool:
    """Whether `location` names a PostgreSQL outbox (a `postgresql://` or `postgres://` URL)."""
    return isinstance(location, str) and location.startswith(POSTGRES_SCHEMES)


def parse_location(text: str | Path) -> Location:
    """`text` as a location: a `postgresql://` URL stays a str, anything else is a file path."""
    return text if isinstance(text, str) and is_postgres_url(text) else Path(text)


def show_location(location: Location) -> str:
    """The location for messages and logs: a file path as it is, a URL with its password masked."""
    return mask_url(location) if isinstance(location, str) and is_postgres_url(location) else str(location)


def mask_url(url: str) -> str:
    """`url` with its password (if any) replaced by `***`: safe for messages, reprs and logs."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "postgresql://***"
    if password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def check_schema_name(schema: str) -> str:
    """The schema name, checked: lower-case letters, digits and underscores (it is spliced into SQL)."""
    if not _SCHEMA_NAME.match(schema):
        raise ConfigError(
            f"outbox.schema = {schema!r} is not a valid schema name; use lower-case letters, digits and "
            "underscores, starting with a letter or underscore (at most 63 characters)"
        )
    return schema
