"""The PostgreSQL backend's own mechanics (the conformance suite covers the shared behaviour):
the claim's plan at 100k rows, SKIP LOCKED between concurrent claimers, the migration race, the
masked password, and the `postgres` extra being optional."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import psycopg
import pytest

from agent.errors import ConfigError, OutboxError
from agent.store import OutboxStore, StoreOptions, open_store
from agent.store.postgres import PostgresStore
from agent.store.postgres.schema import SCHEMA_VERSION
from tests.store.helpers import BIG, LEASE, NOW_US, events


@pytest.fixture
def schema(pg_schema: str) -> str:
    """The test's schema (the conftest's `pg` store lives in it)."""
    return pg_schema


def test_the_claim_uses_its_index_at_100k_rows(pg: PostgresStore, postgres_url: str, schema: str) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(
            f"INSERT INTO {schema}.dodo_outbox_events "
            "(event_id, event_name, ts, payload, enqueued_at, state) "
            "SELECT 'e' || g, 'api.call', g, '{}', g, "
            "CASE WHEN g % 10 = 0 THEN 'pending' ELSE 'delivered' END "
            "FROM generate_series(1, 100000) AS g"
        )
        conn.execute(f"ANALYZE {schema}.dodo_outbox_events")
    plan = "\n".join(pg.explain_claim())
    assert "dodo_outbox_claim" in plan, plan
    assert "Seq Scan" not in plan, plan


def test_concurrent_claimers_skip_rows_another_holds(
    pg: PostgresStore, postgres_url: str, schema: str
) -> None:
    pg.insert_groups([(events("a", "b", "c"), "cli")], 1)
    with psycopg.connect(postgres_url) as other:  # another agent, mid-claim, holding the oldest row
        other.execute(
            f"SELECT id FROM {schema}.dodo_outbox_events WHERE event_id = 'a' FOR UPDATE SKIP LOCKED"
        ).fetchall()
        claimed = pg.claim(now_us=NOW_US, limit=10, max_bytes=BIG, lease_us=LEASE, owner="w2")
        assert sorted(c.event_id for c in claimed) == ["b", "c"]  # not blocked, not "a"
        other.rollback()
    [a] = pg.claim(now_us=NOW_US, limit=10, max_bytes=BIG, lease_us=LEASE, owner="w3")
    assert a.event_id == "a"


def test_two_agents_claiming_at_once_never_share_a_row(postgres_url: str, schema: str) -> None:
    stores: list[OutboxStore] = [open_store(postgres_url, StoreOptions(schema=schema)) for _ in range(2)]
    try:
        ids = [f"e{i}" for i in range(600)]
        for start in range(0, len(ids), 200):
            stores[0].insert_groups([(events(*ids[start : start + 200]), "cli")], 1)
        got: list[list[str]] = [[], []]
        barrier = threading.Barrier(4)

        def drain(index: int, store: OutboxStore) -> None:
            barrier.wait()
            while batch := store.claim(
                now_us=NOW_US, limit=7, max_bytes=BIG, lease_us=LEASE, owner=f"w{index}"
            ):
                got[index % 2].extend(c.event_id for c in batch)

        threads = [threading.Thread(target=drain, args=(i, stores[i % 2])) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        claimed = got[0] + got[1]
        assert len(claimed) == len(set(claimed)) == len(ids)
    finally:
        for store in stores:
            store.close()


def test_a_stale_owner_cannot_settle_a_row_claimed_again(pg: PostgresStore) -> None:
    pg.insert_groups([(events("a"), "cli")], 1)
    [first] = pg.claim(now_us=NOW_US, limit=1, max_bytes=BIG, lease_us=1, owner="paused")
    assert pg.release_expired(NOW_US + 10) == 1
    [again] = pg.claim(now_us=NOW_US + 10, limit=1, max_bytes=BIG, lease_us=LEASE, owner="fresh")
    assert again.id == first.id
    assert pg.mark_delivered([first.id], owner="paused", now_us=NOW_US + 20) == 0
    assert (
        pg.mark_dead([first.id], owner="paused", now_us=NOW_US, reason="x", http_status=400, response="") == 0
    )
    record = pg.get("a")
    assert record is not None and record.state == "inflight" and record.attempts == 2
    assert pg.mark_delivered([again.id], owner="fresh", now_us=NOW_US + 30) == 1


def test_processes_opening_a_new_schema_at_once_migrate_it_once(postgres_url: str, schema: str) -> None:
    opened: list[OutboxStore] = []
    failures: list[BaseException] = []
    barrier = threading.Barrier(4)

    def open_one() -> None:
        barrier.wait()
        try:
            opened.append(open_store(postgres_url, StoreOptions(schema=schema)))
        except BaseException as exc:  # reported below
            failures.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    try:
        assert failures == []
        assert len(opened) == 4
        assert {s.kv_get("schema_version") is not None for s in opened} == {True}
        assert all(isinstance(s, PostgresStore) and s.schema_version() == SCHEMA_VERSION for s in opened)
    finally:
        for store in opened:
            store.close()


def test_a_password_in_the_url_never_appears_in_errors_or_reprs(postgres_url: str, schema: str) -> None:
    with pytest.raises(OutboxError) as caught:
        open_store("postgresql://app:s3cr3t-pw@127.0.0.1:1/db", StoreOptions(busy_timeout_ms=1000))
    assert "s3cr3t-pw" not in str(caught.value)
    assert "postgresql://app:***@127.0.0.1:1/db" in str(caught.value)
    assert "s3cr3t-pw" not in repr(caught.value) and caught.value.__cause__ is None
    with_password = postgres_url.replace("postgres@", "postgres:hunter2@", 1)  # trust auth ignores it
    with open_store(with_password, StoreOptions(schema=schema)) as store:
        assert "hunter2" not in repr(store) and "hunter2" not in store.location
        assert "postgres:***@" in repr(store)
    with pytest.raises(OutboxError) as closed:
        store.counts()
    assert "hunter2" not in str(closed.value) and "postgres:***@" in str(closed.value)


def test_a_bad_schema_name_is_a_config_error(postgres_url: str) -> None:
    with pytest.raises(ConfigError, match=r"outbox\.schema"):
        open_store(postgres_url, StoreOptions(schema="x; DROP TABLE users"))


def test_without_the_extra_sqlite_works_and_postgres_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in list(sys.modules):
        if name == "psycopg" or name.startswith(("psycopg.", "psycopg_pool", "agent.store.postgres")):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "psycopg", None)  # `import psycopg` now raises ImportError
    with open_store(tmp_path / "o.db") as store:
        [result] = store.insert_groups([(events("a"), "cli")], 1)
        assert not isinstance(result, Exception) and result.new == ["a"]
    with pytest.raises(ConfigError, match=r"pip install 'dodo-outbox\[postgres\]'"):
        open_store("postgresql://app@127.0.0.1/db")


def test_the_library_enqueues_inside_the_callers_psycopg_transaction(postgres_url: str, schema: str) -> None:
    from agent.outbox import Outbox

    with Outbox(postgres_url, schema=schema) as outbox, psycopg.connect(postgres_url) as app:
        app.execute("CREATE TEMP TABLE orders (id int)")
        app.commit()
        app.execute("INSERT INTO orders VALUES (1)")
        outbox.enqueue({"event_id": "gone", "customer_id": "c", "event_name": "api.call"}, conn=app)
        app.rollback()
        assert outbox.store.get("gone") is None
        app.execute("INSERT INTO orders VALUES (2)")
        result = outbox.enqueue_many(
            [{"event_id": f"k{i}", "customer_id": "c", "event_name": "api.call"} for i in range(3)], conn=app
        )
        assert result.new == ["k0", "k1", "k2"]
        assert outbox.store.get("k0") is None  # not committed yet: enqueue never commits the caller's work
        app.commit()
        assert outbox.store.counts()["pending"] == 3
        plain = outbox.enqueue({"event_id": "own", "customer_id": "c", "event_name": "api.call"})
        assert plain.new == ["own"] and outbox.store.backlog() == 4


def test_config_url_opens_postgres_and_path_with_url_is_refused(
    postgres_url: str, schema: str, tmp_path: Path
) -> None:
    from agent import config
    from agent.outbox import Outbox

    environ = {"DODO_OUTBOX_OUTBOX_URL": postgres_url, "DODO_OUTBOX_OUTBOX_SCHEMA": schema}
    settings = config.load(None, environ)
    assert settings.outbox.url == postgres_url
    assert settings.outbox_location == postgres_url and settings.on_postgres
    with pytest.raises(ConfigError, match=r"has no file"):
        _ = settings.outbox_path  # SQLite-only code refuses instead of writing to a default file
    file = tmp_path / "agent.toml"
    file.write_text(f'[outbox]\nurl = "{postgres_url}"\nschema = "{schema}"\n')
    with Outbox.open(config=file) as outbox:
        outbox.enqueue({"event_id": "cfg", "customer_id": "c", "event_name": "api.call"})
    with open_store(postgres_url, StoreOptions(schema=schema)) as store:
        assert store.get("cfg") is not None
    both = {**environ, "DODO_OUTBOX_OUTBOX_PATH": str(tmp_path / "o.db")}
    with pytest.raises(ConfigError, match=r"\[outbox\] path and \[outbox\] url are both set"):
        config.load(None, both)
    with pytest.raises(ConfigError, match=r"not a postgresql:// URL"):
        config.load(None, {"DODO_OUTBOX_OUTBOX_URL": "mysql://u:pw@h/db"})
    masked = config.describe(config.load(None, {"DODO_OUTBOX_OUTBOX_URL": "postgresql://u:pw9@h/db"}))
    assert masked["outbox"]["url"] == "postgresql://u:***@h/db" and "pw9" not in str(masked)


def test_the_test_suites_postgres_variables_are_no_unknown_override() -> None:
    from agent import config
    from agent.bench.pgcluster import REQUIRE_ENV, URL_ENV

    assert config.load(None, {REQUIRE_ENV: "1", URL_ENV: "postgresql://h/db"}).warnings == ()


def test_an_unreachable_server_is_named_with_its_own_answer_not_the_pools_timeout() -> None:
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"postgresql://postgres:hunter2@127.0.0.1:{port}/postgres"
    with pytest.raises(OutboxError) as caught:
        open_store(url, StoreOptions(busy_timeout_ms=1000))
    message = str(caught.value)
    assert message.startswith(f"cannot open the outbox postgresql://postgres:***@127.0.0.1:{port}/postgres: ")
    assert "Connection refused" in message and "pool initialization" not in message
    assert "hunter2" not in message
