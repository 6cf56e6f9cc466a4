"""`dodo-outbox doctor` on a PostgreSQL outbox: connectivity, the schema version, the claim index and
the claim's plan, table bloat and the oldest open transaction, each problem with what to do.

Reads only (agent/store/postgres/health.py holds the SQL, reached through `agent.store`): it never
creates or migrates the schema, so it can look at an outbox that this dodo-outbox cannot open.
Exit 0 healthy, 1 problems found, 2 the login was refused or the database does not exist, 75 the
server cannot be reached (the codes every command uses for configuration and unavailability).
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any

from agent.cli import common
from agent.errors import ConfigError, OutboxError
from agent.ops import dbhealth
from agent.store import StoreOptions, inspect_postgres, mask_url

if TYPE_CHECKING:
    from agent.store.postgres.health import Inspection, TableHealth

HOT_TABLE = "dodo_outbox_events"
PLAN_ROWS = 10_000
"""Below this many live rows the planner may rightly scan the table instead of the index."""


def run(url: str, schema: str, *, as_json: bool) -> None:
    """Check the PostgreSQL outbox at `url`, print the result, exit with its code."""
    shown = mask_url(url)
    try:
        found = inspect_postgres(url, StoreOptions(schema=schema))
    except (ConfigError, OutboxError) as exc:
        code = common.EXIT_USAGE if isinstance(exc, ConfigError) else common.EXIT_TEMPFAIL
        if as_json:
            common.print_json(
                {"outbox": shown, "schema": schema, "ok": False, "connected": False, "problems": [str(exc)]}
            )
        else:
            common.err.print(f"error: {exc}", markup=False)
        sys.exit(code)
    problems = find_problems(found)
    if as_json:
        common.print_json(document(shown, found, problems))
    else:
        render(shown, found, problems)
    if problems:
        sys.exit(common.EXIT_FAILED)


def _hot(found: Inspection) -> TableHealth | None:
    return next((t for t in found.tables if t.name == HOT_TABLE), None)


def plan_uses_index(found: Inspection) -> bool:
    return any(found.claim_index.name in line for line in found.claim_plan)


def find_problems(found: Inspection) -> list[str]:
    """One sentence per problem: what is wrong and what to do."""
    problems: list[str] = []
    qualified = f"{found.schema}.{HOT_TABLE}"
    if found.schema_version is None:
        problems.append(
            f"schema {found.schema!r} of database {found.database!r} holds no outbox: check [outbox] schema "
            "and the database in the URL, or create it with `dodo-outbox migrate --outbox URL`"
        )
        return problems
    if found.schema_version > found.known_version:
        problems.append(
            f"the outbox's schema is version {found.schema_version}, newer than this dodo-outbox knows "
            f"({found.known_version}): upgrade dodo-outbox"
        )
    elif found.schema_version < found.known_version:
        problems.append(
            f"the outbox's schema is version {found.schema_version}, older than this dodo-outbox's "
            f"({found.known_version}): run `dodo-outbox migrate --outbox URL` (the agent also migrates "
            "at start)"
        )
    index = found.claim_index
    if not index.present:
        problems.append(
            f"the claim index {found.schema}.{index.name} is missing: every claim scans the whole table. "
            "Run `dodo-outbox migrate --outbox URL` to create it"
        )
    elif not index.valid:
        problems.append(
            f"the claim index {found.schema}.{index.name} is invalid (pg_index.indisvalid is false, e.g. "
            "after a failed CREATE INDEX CONCURRENTLY): the planner ignores it. Run "
            f"`REINDEX INDEX CONCURRENTLY {found.schema}.{index.name}`"
        )
    hot = _hot(found)
    if found.plan_error is not None:
        problems.append(f"the claim could not be explained: {found.plan_error}")
    elif index.valid and not plan_uses_index(found) and hot is not None and hot.live_tuples >= PLAN_ROWS:
        problems.append(
            f"the claim's plan does not use {index.name} on a table of {hot.live_tuples:,} rows: the "
            f"statistics may be stale. Run `ANALYZE {qualified}` and check again"
        )
    if hot is not None and not hot.autovacuum_enabled:
        problems.append(
            f"autovacuum is off for {qualified} (autovacuum_enabled = false): dead rows pile up and the "
            f"claim slows down. Run `ALTER TABLE {qualified} RESET (autovacuum_enabled)`"
        )
    if not found.autovacuum_on:
        problems.append(
            "autovacuum is off on the server (autovacuum = off): dead rows of the queue are never "
            "reclaimed. Turn it on in postgresql.conf, or VACUUM the outbox tables on a schedule"
        )
    problems.extend(dbhealth.warnings(found.vacuum))
    return problems


def document(shown: str, found: Inspection, problems: list[str]) -> dict[str, Any]:
    """The `--json` document."""
    return {
        "outbox": shown,
        "schema": found.schema,
        "ok": not problems,
        "connected": True,
        "problems": problems,
        "server_version": found.server_version,
        "database": found.database,
        "user": found.user,
        "schema_version": found.schema_version,
        "known_schema_version": found.known_version,
        "claim_index": {
            "name": found.claim_index.name,
            "present": found.claim_index.present,
            "valid": found.claim_index.valid,
            "ready": found.claim_index.ready,
            "used_by_claim": plan_uses_index(found),
        },
        "claim_plan": found.claim_plan,
        "tables": [
            {
                "name": t.name,
                "live_tuples": t.live_tuples,
                "dead_tuples": t.dead_tuples,
                "last_autovacuum": t.last_autovacuum,
                "last_vacuum": t.last_vacuum,
                "last_autoanalyze": t.last_autoanalyze,
                "last_analyze": t.last_analyze,
                "autovacuum_enabled": t.autovacuum_enabled,
                "table_bytes": t.table_bytes,
                "index_bytes": t.index_bytes,
            }
            for t in found.tables
        ],
        "autovacuum": found.autovacuum_on,
        "oldest_transaction": {
            "age_seconds": found.vacuum.oldest_transaction_age_seconds,
            "pid": found.vacuum.oldest_transaction_pid,
            "state": found.vacuum.oldest_transaction_state,
        },
    }


def render(shown: str, found: Inspection, problems: list[str]) -> None:
    def line(label: str, text: str) -> None:
        common.out.print(f"{label:<18} {text}", markup=False)

    line("outbox", f"{shown} (schema {found.schema})")
    line("server", f"PostgreSQL {found.server_version}, database {found.database}, user {found.user}")
    version = "none" if found.schema_version is None else str(found.schema_version)
    line("schema version", f"{version} (this dodo-outbox: {found.known_version})")
    index = found.claim_index
    state = "missing" if not index.present else ("valid" if index.valid else "INVALID")
    used = "used by the claim" if plan_uses_index(found) else "NOT used by the claim"
    line("claim index", f"{index.name} {state}, {used}")
    now = time.time()
    for t in found.tables:
        line(
            f"table {t.name.removeprefix('dodo_outbox_')}",
            f"{t.live_tuples:,} live, {t.dead_tuples:,} dead; {_size(t.table_bytes)} + "
            f"{_size(t.index_bytes)} indexes; autovacuum {_ago(now, t.last_autovacuum)}, "
            f"autoanalyze {_ago(now, t.last_autoanalyze)}",
        )
    age = found.vacuum.oldest_transaction_age_seconds
    if age is None:
        line("oldest transaction", "none open")
    else:
        line(
            "oldest transaction",
            f"{common.human_age(age)} (pid {found.vacuum.oldest_transaction_pid}, "
            f"{found.vacuum.oldest_transaction_state})",
        )
    if not problems:
        line("result", "ok")
        return
    line("result", f"{len(problems)} problem(s)")
    for problem in problems:
        common.err.print(f"problem: {problem}", markup=False)


def _ago(now: float, at: float | None) -> str:
    return "never" if at is None else f"{common.human_age(now - at)} ago"


def _size(n: int) -> str:
    if n < 1024:
        return f"{n:,} B"
    value = n / 1024
    for unit in ("KiB", "MiB"):
        if value < 1024:
            return f"{value:,.1f} {unit}"
        value /= 1024
    return f"{value:,.1f} GiB"
