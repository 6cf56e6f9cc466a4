"""The PostgreSQL schema: a migrated one equals a fresh one, and (v2) the hot table holds only
undelivered rows while every read still sees the delivered ones."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from agent.errors import EventConflictError
from agent.store import StoreOptions, migrate, open_store
from agent.store.postgres import PostgresStore
from agent.store.postgres import schema as pg_schema_module
from agent.store.postgres.queue import MOVE_SQL
from tests.store.helpers import BIG, LEASE, NOW_US, US, events
from tests.store.pg_catalog import build_at, catalog
from tests.waiting import wait_until


@pytest.fixture
def schemas(postgres_url: str) -> Iterator[list[str]]:
    """Names for as many fresh schemas as a test needs (append to take one), all dropped after."""
    names: list[str] = []
    yield names
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        for name in names:
            conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")


def new_schema(names: list[str]) -> str:
    names.append("m_" + uuid.uuid4().hex[:16])
    return names[-1]


def fill_v1(postgres_url: str, schema: str) -> None:
    """Rows in every state, written as a v1 agent wrote them (delivered rows in the events table)."""
    with psycopg.connect(postgres_url) as conn:
        conn.execute(
            f"INSERT INTO {schema}.dodo_outbox_events (event_id, event_name, ts, payload, enqueued_at, "
            "state, settled_at, restamped, attempts) VALUES "
            "('p', 'api.call', 1, '{}', 1, 'pending', NULL, false, 0), "
            "('d1', 'api.call', 2, '{}', 2, 'delivered', 5, true, 1), "
            "('d2', 'api.call', 3, '{}', 3, 'delivered', 6, false, 2), "
            "('x', 'api.call', 4, '{}', 4, 'dead', 7, false, 3)"
        )


def catalog_of(postgres_url: str, schema: str) -> dict[str, Any]:
    with psycopg.connect(postgres_url) as conn:
        return catalog(conn, schema)


@pytest.mark.parametrize("version", range(1, pg_schema_module.SCHEMA_VERSION))
def test_a_schema_migrated_from_an_older_version_equals_a_fresh_one(
    postgres_url: str, schemas: list[str], version: int
) -> None:
    fresh, old = new_schema(schemas), new_schema(schemas)
    assert migrate(postgres_url, StoreOptions(schema=fresh)) == (0, pg_schema_module.SCHEMA_VERSION)
    build_at(postgres_url, old, version)
    if version == 1:
        fill_v1(postgres_url, old)
    assert migrate(postgres_url, StoreOptions(schema=old)) == (version, pg_schema_module.SCHEMA_VERSION)
    want, got = catalog_of(postgres_url, fresh), catalog_of(postgres_url, old)
    for part in want:
        assert got[part] == want[part], part
    now = pg_schema_module.SCHEMA_VERSION
    assert migrate(postgres_url, StoreOptions(schema=old)) == (now, now)  # nothing left to do


def test_migrating_v1_moves_its_delivered_rows_and_keeps_every_row(
    postgres_url: str, schemas: list[str]
) -> None:
    old = new_schema(schemas)
    build_at(postgres_url, old, 1)
    fill_v1(postgres_url, old)
    with open_store(postgres_url, StoreOptions(schema=old)) as store:
        assert store.counts() == {"pending": 1, "inflight": 0, "delivered": 2, "dead": 1}
        d1 = store.get("d1")
        assert d1 is not None and d1.state == "delivered" and d1.restamped and d1.settled_at_us == 5
        assert d1.attempts == 1
    with psycopg.connect(postgres_url) as conn:
        hot = conn.execute(f"SELECT event_id FROM {old}.dodo_outbox_events ORDER BY 1").fetchall()
    assert [r[0] for r in hot] == ["p", "x"]


def hot_and_delivered(pg: PostgresStore) -> tuple[list[str], list[str]]:
    with pg.read() as conn:
        hot = conn.execute(pg.q("SELECT event_id FROM {ev} ORDER BY 1")).fetchall()
        done = conn.execute(pg.q("SELECT event_id FROM {dv} ORDER BY 1")).fetchall()
    return [r[0] for r in hot], [r[0] for r in done]


def deliver(pg: PostgresStore, owner: str = "w") -> int:
    rows = pg.claim(now_us=NOW_US, limit=100, max_bytes=BIG, lease_us=LEASE, owner=owner)
    return pg.mark_delivered([r.id for r in rows], owner=owner, now_us=NOW_US)


def test_delivery_moves_rows_out_of_the_hot_table_and_every_read_still_sees_them(pg: PostgresStore) -> None:
    pg.insert_groups([(events("a", "b"), "cli")], NOW_US)
    assert deliver(pg) == 2
    assert hot_and_delivered(pg) == ([], ["a", "b"])
    record = pg.get("a")
    assert record is not None and record.state == "delivered" and record.settled_at_us == NOW_US
    assert pg.counts()["delivered"] == 2 and pg.backlog() == 0
    assert sorted(e for e, _, _ in pg.delivered_sample(0, limit=10)) == ["a", "b"]
    assert sorted(r[0] for r in pg.billable_rows(0, 1 << 62)) == ["a", "b"]
    assert set(pg.rows_by_event_id(["a", "b", "zz"])) == {"a", "b"}
    [stats] = pg.recent_events_by_name(0, {})
    assert stats.events == 2


def test_a_repeat_of_a_delivered_event_is_a_duplicate_or_a_conflict_on_every_insert_path(
    pg: PostgresStore, postgres_url: str
) -> None:
    pg.insert_groups([(events("a", "b"), "cli")], NOW_US)
    assert deliver(pg) == 2
    [same] = pg.insert_groups([(events("a"), "cli")], NOW_US)
    assert not isinstance(same, EventConflictError) and same.duplicates == ["a"] and same.new == []
    results = pg.insert_groups([(events("b", "c"), "cli"), (events("a", kind="other"), "cli")], NOW_US)
    assert not isinstance(results[0], EventConflictError) and results[0].duplicates == ["b"]
    assert isinstance(results[1], EventConflictError) and list(results[1].event_ids) == ["a"]
    with psycopg.connect(postgres_url) as app:
        on_app = pg.insert_on(app, events("a", "d"), "library", NOW_US)
        assert on_app.duplicates == ["a"] and on_app.new == ["d"]
        with pytest.raises(EventConflictError):
            pg.insert_on(app, events("b", other=1), "library", NOW_US)
        app.rollback()
    assert hot_and_delivered(pg) == (["c"], ["a", "b"])


def test_an_enqueue_racing_the_move_stores_a_second_copy_that_delivers_harmlessly(
    pg: PostgresStore, postgres_url: str
) -> None:
    """The race insert.py names: the move is uncommitted while the same event_id is enqueued again."""
    pg.insert_groups([(events("a"), "cli")], NOW_US)
    [row] = pg.claim(now_us=NOW_US, limit=1, max_bytes=BIG, lease_us=LEASE, owner="w")
    results: list[Any] = []
    with psycopg.connect(postgres_url) as mover:
        params = {"owner": "w", "ids": [row.id], "now": NOW_US, "restamped": []}
        assert mover.execute(pg.q(MOVE_SQL), params).fetchone() == (1,)  # moved, not committed
        thread = threading.Thread(
            target=lambda: results.append(pg.insert_groups([(events("a"), "cli")], NOW_US))
        )
        thread.start()
        with psycopg.connect(postgres_url, autocommit=True) as watcher:
            wait_until(
                lambda: watcher.execute("SELECT count(*) FROM pg_locks WHERE NOT granted").fetchone() != (0,),
                what="the enqueue to wait on the row being moved",
            )
        mover.commit()
        thread.join(60)
    [[again]] = results
    assert not isinstance(again, EventConflictError) and again.new == ["a"]  # the race: stored again
    assert pg.counts()["delivered"] == 1 and pg.counts()["pending"] == 1
    # Sent again (Dodo ignores a known event_id), its move keeps the first delivered copy.
    assert deliver(pg, "w2") == 1
    assert hot_and_delivered(pg) == ([], ["a"])


def test_retention_prunes_the_delivered_table_in_bounded_chunks(pg: PostgresStore) -> None:
    pg.insert_groups([(events(*[f"e{i}" for i in range(5)]), "cli")], NOW_US)
    rows = pg.claim(now_us=NOW_US, limit=100, max_bytes=BIG, lease_us=LEASE, owner="w")
    pg.mark_delivered([r.id for r in rows[:3]], owner="w", now_us=NOW_US)
    pg.mark_delivered([r.id for r in rows[3:]], owner="w", now_us=NOW_US + 100 * US)
    assert pg.prune_delivered(NOW_US + 1, chunk=2, max_chunks=1) == 2  # one chunk of two
    assert pg.prune_delivered(NOW_US + 1, chunk=2) == 1
    assert hot_and_delivered(pg) == ([], ["e3", "e4"])
