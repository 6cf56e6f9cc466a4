"""agent.contrib.django against the suite's PostgreSQL: events written on Django's own connection
inside `transaction.atomic()` commit or vanish with the block's writes; outside a block, on SQLite, or
with bad settings it refuses and stores nothing; its migration creates the schema the agent drains."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from django.db import connection, connections, transaction
from django.test import override_settings

import agent.contrib.django as dodo
from agent.errors import ConfigError, EventConflictError, InvalidEventError
from agent.store.postgres.schema import SCHEMA_VERSION
from tests.builders import raw_event
from tests.contrib import django_project
from tests.contrib.conftest import stored

ROOT = Path(__file__).resolve().parents[2]


class Abort(Exception):
    """Raised in a block to make Django roll it back."""


@pytest.fixture
def schema(postgres_url: str, pg_schema: str) -> Iterator[str]:
    """DODO_OUTBOX on a fresh schema, with the app's `orders` table in it; closed afterwards."""
    django_project.configure(postgres_url)
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {pg_schema}")
        conn.execute(f"CREATE TABLE {pg_schema}.orders (ref text PRIMARY KEY)")
    with override_settings(DODO_OUTBOX={"schema": pg_schema}):
        dodo.get_outbox()  # the outbox tables exist before the test, as after `manage.py migrate`
        yield pg_schema
    dodo.close()
    connections.close_all()


def add_order(schema: str, ref: str) -> None:
    """The app's own write, on Django's connection (raw SQL: the test project has no models)."""
    with connection.cursor() as cursor:
        cursor.execute(f"INSERT INTO {schema}.orders (ref) VALUES (%s)", [ref])


def test_a_committed_block_keeps_exactly_its_events_with_the_apps_row(postgres_url: str, schema: str) -> None:
    with transaction.atomic():
        add_order(schema, "o1")
        assert dodo.enqueue(raw_event("e1")).new == ["e1"]
        assert dodo.enqueue_many([raw_event("e2"), raw_event("e3")]).new == ["e2", "e3"]
        assert stored(postgres_url, schema) == ([], [])  # in Django's transaction, not committed by us
    assert stored(postgres_url, schema) == (["e1", "e2", "e3"], ["o1"])
    assert dodo.get_outbox().store.counts()["pending"] == 3


def test_a_rolled_back_block_leaves_neither(postgres_url: str, schema: str) -> None:
    with pytest.raises(Abort), transaction.atomic():
        add_order(schema, "o1")
        dodo.enqueue(raw_event("gone"))
        raise Abort
    assert stored(postgres_url, schema) == ([], [])


def test_an_inner_block_rolled_back_drops_only_its_event(postgres_url: str, schema: str) -> None:
    with transaction.atomic():
        dodo.enqueue(raw_event("outer"))
        with pytest.raises(Abort), transaction.atomic():  # a savepoint on the same connection
            add_order(schema, "inner")
            dodo.enqueue(raw_event("inner"))
            raise Abort
        add_order(schema, "outer")
    assert stored(postgres_url, schema) == (["outer"], ["outer"])


def test_duplicates_and_conflicts_follow_the_outbox_rules(postgres_url: str, schema: str) -> None:
    with transaction.atomic():
        dodo.enqueue(raw_event("kept", metadata={"n": 1}))
    with transaction.atomic():
        assert dodo.enqueue(raw_event("kept", metadata={"n": 1})).duplicates == ["kept"]
    with pytest.raises(EventConflictError) as refused, transaction.atomic():
        add_order(schema, "o1")
        dodo.enqueue_many([raw_event("new"), raw_event("kept", metadata={"n": 2})])
    assert refused.value.event_ids == ("kept",)  # the error left the block, so Django rolled it back
    with pytest.raises(InvalidEventError), transaction.atomic():
        dodo.enqueue({"event_id": "bad"})
    assert stored(postgres_url, schema) == (["kept"], [])


def test_outside_an_atomic_block_it_refuses_and_stores_nothing(postgres_url: str, schema: str) -> None:
    with pytest.raises(transaction.TransactionManagementError, match="part of no transaction"):
        dodo.enqueue(raw_event("e1"))
    with pytest.raises(transaction.TransactionManagementError, match=r"outside transaction\.atomic"):
        dodo.enqueue_many([raw_event("e2")])
    with transaction.atomic():  # a block marked for rollback is refused as Django refuses queries
        transaction.set_rollback(True)
        with pytest.raises(transaction.TransactionManagementError):
            dodo.enqueue(raw_event("e3"))
    assert stored(postgres_url, schema) == ([], [])


def test_a_database_that_is_not_postgresql_is_refused(schema: str) -> None:
    with (
        pytest.raises(ConfigError, match=r"DATABASES\['lite'\] is sqlite.*django\.db\.backends\.postgresql"),
        transaction.atomic(using=django_project.LITE),
    ):
        dodo.enqueue(raw_event("e1"), using=django_project.LITE)
    with (
        override_settings(DODO_OUTBOX={"database": "nowhere"}),
        pytest.raises(ConfigError, match="'nowhere', which is not in DATABASES"),
    ):
        dodo.get_outbox()


def test_bad_settings_are_refused_naming_the_key(schema: str) -> None:
    with override_settings(DODO_OUTBOX={"schma": "x"}), pytest.raises(ConfigError, match=r"\['schma'\]"):
        dodo.get_outbox()
    with override_settings(DODO_OUTBOX=["x"]), pytest.raises(ConfigError, match="make it a dict"):
        dodo.get_outbox()


def test_the_agents_config_file_names_the_schema(postgres_url: str, schema: str, tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(f'[outbox]\nurl = "postgresql://elsewhere/db"\nschema = "{schema}"\n')
    with override_settings(DODO_OUTBOX={"config": str(config)}):
        dodo.close()
        with transaction.atomic():
            dodo.enqueue(raw_event("configured"))
        # Written in Django's database whatever the config's url says; in the config's schema.
        assert stored(postgres_url, schema) == (["configured"], [])


def test_the_migration_creates_the_schema_the_agent_drains(postgres_url: str, pg_schema: str) -> None:
    """`manage.py migrate` in a fresh process (Django's own tables in a schema of their own)."""
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {pg_schema}_app")
    script = textwrap.dedent(
        f"""
        import json, sys
        from tests.contrib import django_project
        from django.core.management import call_command
        databases = django_project.databases({postgres_url!r})
        databases["default"]["OPTIONS"] = {{"options": "-c search_path={pg_schema}_app"}}
        from django.conf import settings
        settings.configure(DATABASES=databases, INSTALLED_APPS=["agent.contrib.django"],
                           DODO_OUTBOX={{"schema": {pg_schema!r}}})
        import django
        django.setup()
        call_command("migrate", verbosity=0)
        call_command("migrate", verbosity=0)  # applied once: nothing to do
        from django.db.migrations.recorder import MigrationRecorder
        from django.db import connection
        applied = sorted(MigrationRecorder(connection).applied_migrations())
        call_command("migrate", "dodo_outbox", "zero", verbosity=0)  # reversing keeps the outbox
        print(json.dumps(applied))
        """
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", script],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == [["dodo_outbox", "0001_outbox_schema"]]
        # Read without opening a store (which would create the schema itself): the migration made it,
        # and `migrate dodo_outbox zero` left it.
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            version = conn.execute(
                f"SELECT value FROM {pg_schema}.dodo_outbox_kv WHERE key = 'schema_version'"
            ).fetchone()
            assert conn.execute(f"SELECT count(*) FROM {pg_schema}.dodo_outbox_events").fetchone() == (0,)
        assert version == (str(SCHEMA_VERSION),)
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {pg_schema}_app CASCADE")
