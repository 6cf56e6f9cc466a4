"""Conformance: `agent.store.migrate`, the explicit migration (`dodo-outbox migrate`), on every backend."""

from __future__ import annotations

from agent.store import migrate, open_store
from tests.store.conftest import Location
from tests.store.helpers import events


def test_migrate_creates_the_outbox_then_has_nothing_left_to_do(location: Location) -> None:
    found, now = migrate(location.where, location.options)
    assert found == 0 and now >= 1
    assert migrate(location.where, location.options) == (now, now)
    with open_store(location.where, location.options) as store:
        assert store.schema_versions == (now, now)
        store.insert_groups([(events("a"), "cli")], 1)  # a usable outbox
        assert store.counts()["pending"] == 1
