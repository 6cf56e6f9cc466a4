"""`dodo-outbox migrate`, run as a deploy step runs it (a real subprocess), on PostgreSQL and SQLite."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from agent.store import Store


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", "migrate", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def with_password(url: str) -> str:
    """The test server's URL with a password in it (the test cluster trusts local users: it is ignored)."""
    head, rest = url.split("://", 1)
    user, host = rest.split("@", 1)
    return f"{head}://{user}:s3cr3t-pw@{host}"


def test_migrate_brings_a_schema_1_outbox_to_the_current_one_and_never_prints_the_password(
    postgres_url: str, pg_schema: str
) -> None:
    from agent.store.postgres.schema import SCHEMA_VERSION as NOW
    from tests.store.pg_catalog import build_at

    build_at(postgres_url, pg_schema, 1)
    url = with_password(postgres_url)
    env = {"DODO_OUTBOX_OUTBOX_SCHEMA": pg_schema}
    first = run("--outbox", url, env=env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith(f"migrated {pg_schema} from schema 1 to {NOW} (postgresql://postgres:***@")
    again = run("--outbox", url, "--json", env=env)
    assert again.returncode == 0, again.stderr
    doc = json.loads(again.stdout)
    assert (doc["schema"], doc["from_version"], doc["to_version"]) == (pg_schema, NOW, NOW)
    assert ":***@" in doc["outbox"]
    for proc in (first, again):
        assert "s3cr3t-pw" not in proc.stdout + proc.stderr


def test_migrate_reports_an_unreachable_server_without_the_password(tmp_path: Path) -> None:
    url = f"postgresql://app:s3cr3t-pw@/db?host={tmp_path}&port=1"  # no server on that socket
    proc = run("--outbox", url)
    assert proc.returncode == 75, proc.stderr
    assert "cannot open the outbox postgresql://app:***@" in proc.stderr
    assert "s3cr3t-pw" not in proc.stdout + proc.stderr


def test_migrate_on_sqlite_creates_only_with_create_then_has_nothing_to_do(tmp_path: Path) -> None:
    db = tmp_path / "o.db"
    refused = run("--outbox", str(db))
    assert refused.returncode == 2 and "--create" in refused.stderr and not db.exists()
    created = run("--outbox", str(db), "--create")
    assert created.returncode == 0, created.stderr
    with Store(db) as store:
        now = store.schema_versions[1]
    assert created.stdout.strip() == f"created {db} at schema {now}"
    assert run("--outbox", str(db)).stdout.strip() == f"{db}: already at schema {now}"
