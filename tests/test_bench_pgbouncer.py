"""The throwaway PgBouncer (agent/bench/pgbouncer.py): transaction pooling, a clear reason when absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.bench.pgbouncer import PGBOUNCER_ENV, Bouncer, find_pgbouncer
from agent.bench.pgcluster import REQUIRE_ENV, Unavailable


def test_a_pgbouncer_that_is_not_there_is_a_reason_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PGBOUNCER_ENV, str(tmp_path / "no-pgbouncer"))
    with pytest.raises(Unavailable, match=f"{PGBOUNCER_ENV}=.*no-pgbouncer is not an executable file"):
        find_pgbouncer()


def test_the_bouncer_pools_by_transaction(postgres_url: str) -> None:
    """Two clients share one server connection between transactions: what session state a client leaves
    behind is seen by the next (the reason the agent must keep none, prepared statements included)."""
    import psycopg

    try:
        bouncer = Bouncer(postgres_url, pool_size=1)
    except Unavailable as exc:
        if os.environ.get(REQUIRE_ENV):
            pytest.fail(f"{REQUIRE_ENV} is set but the PgBouncer tests cannot run: {exc}")
        pytest.skip(f"no PgBouncer for the tests: {exc}")
    try:
        with (
            psycopg.connect(bouncer.url, autocommit=True) as first,
            psycopg.connect(bouncer.url, autocommit=True) as second,
        ):
            row = first.execute(
                "SELECT pg_backend_pid(), set_config('dodo.left_behind', 'yes', false)"
            ).fetchone()
            assert row is not None
            seen = second.execute(
                "SELECT pg_backend_pid(), current_setting('dodo.left_behind', true)"
            ).fetchone()
            assert seen == (row[0], "yes")
            second.execute("RESET dodo.left_behind")
    finally:
        bouncer.stop()
    assert not bouncer.root.exists()
