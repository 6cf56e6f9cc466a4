"""`dodo-outbox doctor`: check an outbox file's integrity and salvage the rows of a damaged one.

The agent checks its outbox at every start (PRAGMA quick_check) and moves a damaged file aside to
`<name>.corrupt-<time>` before starting on a fresh one; this command is what the operator runs next.
The SQL lives in agent/store/sqlite/salvage.py (reached through `agent.store`). On a PostgreSQL
outbox it checks the server and the schema instead: agent/cli/doctor_pg.py.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click

from agent.cli import common, doctor_pg
from agent.errors import ConfigError
from agent.store import Health, SalvageReport, StoreOptions, check_outbox, open_store, salvage
from agent.store.location import Location, show_location
from agent.timestamps import to_us


@click.command()
@click.option(
    "--salvage",
    "salvage_into",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Copy every readable row into this outbox: created if missing; an existing one (even the one "
    "a running agent uses) keeps its rows and gains the missing event_ids.",
)
@click.option(
    "--quick",
    is_flag=True,
    help="PRAGMA quick_check instead of the slower, full integrity_check (SQLite; PostgreSQL's checks "
    "are all quick).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@common.outbox_option
def doctor(
    salvage_into: Path | None,
    quick: bool,
    as_json: bool,
    config_path: Path | None,
    outbox_path: Location | None,
) -> None:
    """Check the outbox file's integrity; with --salvage, copy the rows it can read into another outbox.

    Reads the file only, never writes it. Rows keep their state (pending, delivered, dead, with their
    reasons); rows that were in flight come back as pending. Exit 0 when the file is healthy (and,
    with --salvage, every row was copied), 1 when damage was found or rows could not be read.

    On a PostgreSQL outbox (a postgresql:// URL) it checks, read-only: the connection and server
    version, the schema version, the claim index (present, valid, used by the claim's plan), dead
    rows and vacuum of the outbox tables, and the oldest open transaction. Exit 0 healthy, 1 problems
    found (each says what to do), 2 the login was refused, 75 the server cannot be reached.

    \b
    Example:
      dodo-outbox doctor
      dodo-outbox doctor --outbox outbox.db.corrupt-20260131T120000Z --salvage outbox.db
      dodo-outbox doctor --outbox postgresql://agent@db.internal:5432/app --json
    """
    settings = common.load_settings(config_path)
    location = common.resolve_location(settings, outbox_path)
    if isinstance(location, str):  # a postgresql:// URL
        if salvage_into is not None:
            raise click.UsageError(
                f"--salvage copies rows out of a damaged SQLite file; {show_location(location)} is a "
                "PostgreSQL outbox, which PostgreSQL itself keeps consistent (restore a damaged one from "
                "its backups). Run doctor without --salvage"
            )
        doctor_pg.run(location, settings.outbox.schema, as_json=as_json)
        return
    path = location
    if not path.is_file():
        raise ConfigError(f"no outbox file at {path}; point --outbox (or [outbox] path) at it")
    health = check_outbox(path, full=not quick)
    report: SalvageReport | None = None
    if salvage_into is not None:
        if salvage_into.exists() and salvage_into.resolve() == path.resolve():
            raise click.UsageError("--salvage must name another file than the one being checked")
        with open_store(salvage_into, StoreOptions(synchronous=settings.outbox.synchronous)) as target:
            report = salvage(path, target, to_us(time.time()))
    if as_json:
        common.print_json(_document(health, report))
    else:
        _print(health, report)
    if not health.ok or (report is not None and not report.complete):
        sys.exit(common.EXIT_FAILED)


def _document(health: Health, report: SalvageReport | None) -> dict[str, Any]:
    document: dict[str, Any] = {
        "outbox": str(health.path),
        "ok": health.ok,
        "problems": health.problems,
        "counts": health.counts,
        "schema_version": health.schema_version,
    }
    if report is not None:
        document["salvage"] = {
            "into": str(report.target),
            "complete": report.complete,
            "copied": report.copied,
            "already_present": report.present,
            "read": report.read,
            "damaged_rows_skipped": report.invalid,
            "unreadable_rowids": len(report.unreadable),
            "unreadable_ranges": report.unreadable_ranges,
            "schema_error": report.schema_error,
        }
    return document


def _print(health: Health, report: SalvageReport | None) -> None:
    out, err = common.out, common.err
    out.print(f"outbox     {health.path}", markup=False)
    if health.ok:
        out.print("integrity  ok", markup=False)
    else:
        out.print(f"integrity  DAMAGED: {len(health.problems)} problem(s)", markup=False)
        for problem in health.problems[:5]:
            out.print(f"           {problem[:200]}", markup=False)
    if health.counts is not None:
        out.print("rows       " + ", ".join(f"{k} {v:,}" for k, v in health.counts.items()), markup=False)
    else:
        out.print("rows       cannot be counted", markup=False)
    if report is None:
        if not health.ok:
            err.print(
                "Stop using this file. Copy its readable rows into a new outbox (or into the live one of "
                f"a running agent) with: dodo-outbox doctor --outbox {health.path} --salvage NEW_PATH",
                markup=False,
            )
        return
    if report.schema_error is not None:
        err.print(
            f"nothing could be salvaged: the file's structure cannot be read ({report.schema_error}). "
            f"If the sqlite3 shell is installed, `sqlite3 {health.path} .recover` may still find rows.",
            markup=False,
        )
        return
    copied = sum(report.copied.values())
    states = ", ".join(f"{k} {v:,}" for k, v in report.copied.items())
    out.print(
        f"salvaged   {copied:,} rows into {report.target} ({states}); {report.present:,} already there",
        markup=False,
    )
    if not report.complete:
        out.print(
            f"lost       {len(report.unreadable):,} unreadable rowids in "
            f"{report.unreadable_ranges} range(s), {report.invalid:,} damaged rows skipped",
            markup=False,
        )


COMMANDS: list[click.Command] = [doctor]
