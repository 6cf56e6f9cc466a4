"""PostgreSQL health on the suite's real server: `status` warns when an open transaction or dead
tuples threaten the claim, `doctor` checks the schema version, the claim index and its plan, bloat,
and says clearly when the server cannot be reached or refuses the login; a password in the URL is
never shown.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result

from agent.cli import cli
from agent.ops import dbhealth, dbmetrics, status
from agent.store import OutboxStore, StoreOptions, VacuumHealth, open_store
from agent.store.postgres.schema import SCHEMA_VERSION
from tests.waiting import wait_until

SECRET = "s3cr3t-hunter2"


@pytest.fixture
def pg(postgres_url: str, pg_schema: str) -> Iterator[OutboxStore]:
    store = open_store(postgres_url, StoreOptions(schema=pg_schema))
    yield store
    store.close()


def with_password(url: str) -> str:
    """The suite's URL with a password in it (the test server trusts its socket: any password works)."""
    scheme, rest = url.split("://", 1)
    user, host = rest.split("@", 1)
    return f"{scheme}://{user.split(':', 1)[0]}:{SECRET}@{host}"


def command(name: str, url: str, schema: str, *args: str, by_config: bool = False) -> Result:
    """`dodo-outbox NAME --outbox URL` (or with `[outbox] url` from the environment), schema `schema`."""
    env = {"DODO_OUTBOX_OUTBOX_SCHEMA": schema, "DODO_OUTBOX_CONFIG": None, "DODO_OUTBOX_OUTBOX_URL": None}
    if by_config:
        env["DODO_OUTBOX_OUTBOX_URL"] = url
    where = [] if by_config else ["--outbox", url]
    return CliRunner().invoke(cli, [name, *where, *args], env=env)


def doctor(url: str, schema: str, *args: str, by_config: bool = False) -> Result:
    return command("doctor", url, schema, *args, by_config=by_config)


def doctor_json(url: str, schema: str) -> tuple[int, dict[str, Any]]:
    result = doctor(url, schema, "--json")
    assert "Traceback" not in result.output, result.output
    return result.exit_code, json.loads(result.stdout)


def transaction_warnings(document: dict[str, Any]) -> list[str]:
    return [w for w in document["warnings"] if "a transaction has been open" in w]


def dead_warnings(document: dict[str, Any]) -> list[str]:
    return [w for w in document["warnings"] if "dead row versions" in w]


# -- status ------------------------------------------------------------------------------------------


def test_an_old_open_transaction_makes_status_warn_until_it_ends(pg: OutboxStore, postgres_url: str) -> None:
    quick = dbhealth.Limits(max_transaction_age=1.0)  # the default is 300 s; the rule is the same
    assert transaction_warnings(status.build(pg, limits=quick)) == []
    with psycopg.connect(postgres_url) as other:
        other.execute("SELECT txid_current()")  # an open transaction holding an xid: vacuum waits for it
        pid = other.info.backend_pid
        found: dict[str, Any] = {}

        def warned() -> bool:
            found.update(status.build(pg, limits=quick))
            return bool(transaction_warnings(found))

        wait_until(warned, what="the old-transaction warning")
        [warning] = transaction_warnings(found)
        assert f"pid {pid}" in warning and "pg_stat_activity" in warning
        assert found["database"]["oldest_transaction_pid"] == pid
        assert found["database"]["oldest_transaction_age_seconds"] > 1.0
        assert warning in status.check(found)  # `status --check` fails on it
        assert transaction_warnings(status.build(pg)) == []  # younger than the default 5 minutes
        gauges = {m.name: m.samples[0].value for m in dbmetrics.families(pg)}
        assert gauges["dodo_outbox_oldest_transaction_age_seconds"] > 1.0
        other.rollback()
    wait_until(lambda: not transaction_warnings(status.build(pg, limits=quick)), what="the warning to clear")


def test_dead_tuples_outnumbering_live_ones_make_status_warn(
    pg: OutboxStore, postgres_url: str, pg_schema: str
) -> None:
    table = f"{pg_schema}.dodo_outbox_events"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")
        conn.execute(
            f"INSERT INTO {table} (event_id, event_name, ts, payload, enqueued_at) "
            "SELECT 'e' || g, 'api.call', g, '{}', g FROM generate_series(1, 3000) AS g"
        )
    wait_until(lambda: pg.vacuum_health().live_tuples == 3000, what="the inserts in the statistics")  # type: ignore[union-attr]
    assert dead_warnings(status.build(pg)) == []
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        for _ in range(4):  # ts is indexed: no HOT update, every row leaves a dead version each time
            conn.execute(f"UPDATE {table} SET ts = ts + 1")
    found: dict[str, Any] = {}

    def warned() -> bool:
        found.update(status.build(pg))
        return bool(dead_warnings(found))

    wait_until(warned, what="the dead-tuple warning")
    assert found["database"]["dead_tuples"] > 10_000 > found["database"]["live_tuples"]
    assert "VACUUM" in dead_warnings(found)[0]
    gauges = {m.name: m.samples[0].value for m in dbmetrics.families(pg)}
    assert gauges["dodo_outbox_dead_tuples"] > 10_000
    shown = command("status", postgres_url, pg_schema, "--check")
    assert shown.exit_code == 1 and "WARNING" in shown.stdout and "dead row versions" in shown.stdout
    code, report = doctor_json(postgres_url, pg_schema)
    assert code == 1
    assert any("autovacuum is off for" in p and "RESET (autovacuum_enabled)" in p for p in report["problems"])
    assert any("dead row versions" in p for p in report["problems"])
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"VACUUM {table}")
    wait_until(lambda: not dead_warnings(status.build(pg)), what="the warning to clear after VACUUM")


@pytest.mark.parametrize(
    ("live", "dead", "warns"),
    [(100, 10_001, True), (0, 10_000, False), (20_000, 15_000, False), (20_000, 20_001, True)],
)
def test_the_dead_tuple_threshold_is_more_dead_than_live_and_over_10k(
    live: int, dead: int, warns: bool
) -> None:
    health = VacuumHealth(live, dead, None, None, None, None)
    assert bool(dbhealth.warnings(health)) is warns


def test_sqlite_reports_no_database_section(tmp_path: Path) -> None:
    with open_store(tmp_path / "o.db") as store:
        document = status.build(store)
        assert store.vacuum_health() is None and dbmetrics.families(store) == []
    assert document["database"] is None and document["warnings"] == []


def test_status_never_shows_the_password(pg: OutboxStore, postgres_url: str, pg_schema: str) -> None:
    text = command("status", with_password(postgres_url), pg_schema)
    as_json = command("status", with_password(postgres_url), pg_schema, "--json")
    assert text.exit_code == as_json.exit_code == 0, text.output + as_json.output
    assert json.loads(as_json.stdout)["database"]["dead_tuples"] == 0  # the PostgreSQL section is there
    for result in (text, as_json):
        assert SECRET not in result.output and ":***@" in result.output


# -- doctor ------------------------------------------------------------------------------------------


def test_doctor_json_names_the_schema_version_and_the_claim_index(
    pg: OutboxStore, postgres_url: str, pg_schema: str
) -> None:
    code, report = doctor_json(postgres_url, pg_schema)
    assert code == 0, report["problems"]
    assert report["ok"] and report["connected"] and report["problems"] == []
    assert report["schema_version"] == report["known_schema_version"] == SCHEMA_VERSION
    assert report["claim_index"] == {
        "name": "dodo_outbox_claim",
        "present": True,
        "valid": True,
        "ready": True,
        "used_by_claim": True,
    }
    assert any("dodo_outbox_claim" in line for line in report["claim_plan"])
    assert report["server_version"].split(".")[0].isdigit()
    [events] = [t for t in report["tables"] if t["name"] == "dodo_outbox_events"]
    assert events["autovacuum_enabled"] and events["index_bytes"] > 0
    assert report["oldest_transaction"].keys() == {"age_seconds", "pid", "state"}


def test_doctor_finds_an_invalid_claim_index(pg: OutboxStore, postgres_url: str, pg_schema: str) -> None:
    table = f"{pg_schema}.dodo_outbox_events"
    with psycopg.connect(postgres_url, autocommit=True) as conn:  # what a failed CONCURRENTLY leaves
        conn.execute(
            f"INSERT INTO {table} (event_id, event_name, ts, payload, enqueued_at) "
            "VALUES ('a', 'same', 1, '{}', 1), ('b', 'same', 2, '{}', 2)"
        )
        conn.execute(f"DROP INDEX {pg_schema}.dodo_outbox_claim")
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(
                f"CREATE UNIQUE INDEX CONCURRENTLY dodo_outbox_claim ON {table} (event_name) "
                "WHERE state = 'pending'"
            )
    code, report = doctor_json(postgres_url, pg_schema)
    assert code == 1
    assert report["claim_index"]["present"] and not report["claim_index"]["valid"]
    assert not report["claim_index"]["used_by_claim"]
    assert any(
        "invalid" in p and f"REINDEX INDEX CONCURRENTLY {pg_schema}.dodo_outbox_claim" in p
        for p in report["problems"]
    )
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"DROP INDEX {pg_schema}.dodo_outbox_claim")
    code, report = doctor_json(postgres_url, pg_schema)
    assert code == 1 and not report["claim_index"]["present"]
    assert any("is missing" in p and "dodo-outbox migrate" in p for p in report["problems"])


@pytest.mark.parametrize(("delta", "advice"), [(1, "upgrade dodo-outbox"), (-1, "dodo-outbox migrate")])
def test_doctor_compares_the_schema_version_with_its_own(
    pg: OutboxStore, postgres_url: str, pg_schema: str, delta: int, advice: str
) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(
            f"UPDATE {pg_schema}.dodo_outbox_kv SET value = %s WHERE key = 'schema_version'",
            (str(SCHEMA_VERSION + delta),),
        )
    code, report = doctor_json(postgres_url, pg_schema)
    assert code == 1 and report["schema_version"] == SCHEMA_VERSION + delta
    assert any(advice in p for p in report["problems"]), report["problems"]


def test_doctor_on_a_schema_without_an_outbox_says_so_and_creates_nothing(
    postgres_url: str, pg_schema: str
) -> None:
    code, report = doctor_json(postgres_url, pg_schema)
    assert code == 1 and report["schema_version"] is None
    assert any("holds no outbox" in p for p in report["problems"])
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT to_regnamespace(%s)", (pg_schema,)).fetchone() == (None,)


@pytest.mark.parametrize("by_config", [False, True], ids=["--outbox", "[outbox] url"])
def test_doctor_text_shows_the_checks_and_never_the_password(
    pg: OutboxStore, postgres_url: str, pg_schema: str, by_config: bool
) -> None:
    result = doctor(with_password(postgres_url), pg_schema, by_config=by_config)
    assert result.exit_code == 0, result.output
    for label in ("server", "schema version", "claim index", "table events", "oldest transaction"):
        assert label in result.stdout
    assert "dodo_outbox_claim valid, used by the claim" in result.stdout
    assert SECRET not in result.output and ":***@" in result.stdout
    result = doctor(with_password(postgres_url), pg_schema, "--json")
    assert SECRET not in result.output and json.loads(result.stdout)["ok"]


def test_doctor_refuses_salvage_on_a_postgresql_outbox(
    postgres_url: str, pg_schema: str, tmp_path: Path
) -> None:
    result = doctor(with_password(postgres_url), pg_schema, "--salvage", str(tmp_path / "into.db"))
    assert result.exit_code == 2
    assert "--salvage copies rows out of a damaged SQLite file" in result.output
    assert SECRET not in result.output and not (tmp_path / "into.db").exists()


def test_doctor_on_an_unreachable_server_says_so_without_a_traceback(pg_schema: str) -> None:
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"postgresql://agent:{SECRET}@127.0.0.1:{port}/app"
    result = doctor(url, pg_schema)
    assert result.exit_code == 75
    assert f"cannot reach PostgreSQL at postgresql://agent:***@127.0.0.1:{port}/app" in result.stderr
    assert "Traceback" not in result.output and SECRET not in result.output
    code, report = doctor_json(url, pg_schema)
    assert code == 75 and report["connected"] is False and "cannot reach" in report["problems"][0]
    assert SECRET not in json.dumps(report)


def test_doctor_when_the_login_is_refused_names_the_credentials(postgres_url: str, pg_schema: str) -> None:
    scheme, rest = with_password(postgres_url).split("://", 1)
    url = f"{scheme}://nosuchrole{rest[rest.index(':') :]}"  # a role the server does not know
    result = doctor(url, pg_schema)
    assert result.exit_code == 2
    assert "refused the login: check the user and password" in result.stderr
    assert "Traceback" not in result.output and SECRET not in result.output
