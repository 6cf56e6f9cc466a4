"""The outbox of a Django project: DODO_OUTBOX in settings, opened once per process on Django's database.

    DODO_OUTBOX = {
        "database": "default",  # the DATABASES alias the events are written in (default "default")
        "schema": "dodo_outbox",  # the schema the agent drains (default: the config's, else dodo_outbox)
        "config": "/etc/dodo-outbox/agent.toml",  # optional: the agent's config file
    }

With "config", the agent's `[outbox] schema` and `[intake] max_event_age` apply here too (an explicit
"schema" wins). The outbox connects with Django's own credentials for that database (read from its
live connection), so it is the same database whatever the config's `[outbox] url` says; it keeps one
connection of its own, which creates and migrates the schema when it opens. Every enqueue writes on
Django's connection, in its transaction.
"""

from __future__ import annotations

import os
import threading
from typing import Any
from urllib.parse import quote, urlencode

from django.conf import settings
from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper

from agent.errors import ConfigError
from agent.outbox import Outbox

SETTING = "DODO_OUTBOX"
KEYS = ("config", "database", "schema")

_lock = threading.Lock()
_opened: dict[tuple[str, int], Outbox] = {}


def options() -> dict[str, str]:
    """DODO_OUTBOX, checked: a dict of the KEYS with string values; "database" filled in."""
    given: Any = getattr(settings, SETTING, {})
    if not isinstance(given, dict):
        raise ConfigError(f"settings.{SETTING} is {type(given).__name__}; make it a dict (keys {KEYS})")
    unknown = sorted(set(given) - set(KEYS))
    if unknown:
        raise ConfigError(f"settings.{SETTING} has unknown keys {unknown}; the keys are {list(KEYS)}")
    for key, value in given.items():
        if not isinstance(value, str | os.PathLike):
            raise ConfigError(f"settings.{SETTING}[{key!r}] is {value!r}; give a string")
    found = {key: os.fspath(value) for key, value in given.items()}
    found.setdefault("database", "default")
    return found


def wrapper(using: str | None = None) -> BaseDatabaseWrapper:
    """Django's connection to the outbox database (`using`, else DODO_OUTBOX["database"]), checked to
    be PostgreSQL on psycopg 3. Raises ConfigError naming the alias and what it is instead."""
    alias = using or options()["database"]
    if alias not in connections:
        raise ConfigError(f"settings.{SETTING}['database'] names {alias!r}, which is not in DATABASES")
    connection = connections[alias]
    if connection.vendor != "postgresql":
        raise ConfigError(
            f"DATABASES[{alias!r}] is {connection.vendor} ({connection.settings_dict['ENGINE']}); the "
            f"outbox is written in PostgreSQL: point settings.{SETTING}['database'] at a database with "
            "ENGINE 'django.db.backends.postgresql' (on psycopg 3)"
        )
    return connection


def driver_connection(connection: BaseDatabaseWrapper) -> Any:
    """The psycopg 3 connection under Django's `connection` (connecting it if needed)."""
    import psycopg

    connection.ensure_connection()
    raw = connection.connection
    if not isinstance(raw, psycopg.Connection):
        raise ConfigError(
            f"DATABASES[{connection.alias!r}] runs on {type(raw).__module__} (psycopg2); the outbox "
            "writes through psycopg 3: `pip install 'dodo-outbox[django]'` (Django 4.2+ uses psycopg 3 "
            "when it is installed)"
        )
    return raw


def get_outbox(using: str | None = None) -> Outbox:
    """This process's Outbox for the DODO_OUTBOX database, opened (and its schema migrated) on first use.

    Reopened in a forked child (a pool is never shared across fork). Raises ConfigError for bad
    settings, OutboxError when the outbox cannot open.
    """
    connection = wrapper(using)
    key = (connection.alias, os.getpid())
    with _lock:
        outbox = _opened.get(key)
        if outbox is None or outbox.store.closed:
            outbox = _opened[key] = open_outbox(connection)
        return outbox


def open_outbox(connection: BaseDatabaseWrapper) -> Outbox:
    """A new Outbox on the database of Django's `connection`, in the DODO_OUTBOX schema (migrated)."""
    found = options()
    url = url_of(driver_connection(connection))
    kwargs: dict[str, Any] = {"schema": found["schema"]} if "schema" in found else {}
    if "config" in found:
        return Outbox.open(url, config=found["config"], **kwargs)
    return Outbox(url, **kwargs)


def close() -> None:
    """Close the outboxes this process opened (the next enqueue opens again)."""
    with _lock:
        opened = list(_opened.values())
        _opened.clear()
    for outbox in opened:
        outbox.close()


def url_of(raw: Any) -> str:
    """A postgresql:// URL for the server, database and user of the psycopg connection `raw`."""
    info = raw.info
    params = {k: v for k, v in info.get_parameters().items() if k not in ("user", "dbname")}
    user = info.user or ""
    password = info.password or ""
    auth = quote(user, safe="") + (":" + quote(password, safe="") if password else "") + "@" if user else ""
    query = "?" + urlencode(params, quote_via=quote) if params else ""  # libpq reads no "+" as a space
    return f"postgresql://{auth}/{quote(info.dbname or '', safe='')}{query}"


def migrate_schema(apps: Any, schema_editor: Any) -> None:
    """The migration's step: open the outbox of the DODO_OUTBOX database (which creates or migrates its
    schema) when Django migrates that database; other databases are left alone."""
    del apps
    connection = schema_editor.connection
    if connection.alias != options()["database"]:
        return
    open_outbox(wrapper(connection.alias)).close()
