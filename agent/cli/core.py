"""Core commands: enqueue, events show, config check (status lives in agent/cli/ops.py)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import click
from rich.progress import BarColumn, Progress, TextColumn, TransferSpeedColumn

from agent import config as config_module
from agent.cli import common
from agent.errors import EventConflictError, InvalidEventError, Problem
from agent.events import Event, check_event
from agent.intake.records import ParseProblem, read_records
from agent.meters import MeterChecker
from agent.outbox import Outbox
from agent.store.location import Location

CHUNK_EVENTS = 1000


@click.command()
@click.argument("source", default="-", type=click.Path(allow_dash=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@common.create_option
@common.outbox_option
def enqueue(
    source: Path, as_json: bool, create: bool, config_path: Path | None, outbox_path: Location | None
) -> None:
    """Validate events from FILE (or stdin) and store them in the outbox.

    FILE holds a JSON object, a JSON array, a Dodo body {"events": [...]} or NDJSON (one event per
    line). Valid events are stored in chunks of 1000, each chunk all or nothing; every invalid event
    is listed with its line. Exit 0 when all were stored, 1 when some were refused. An --outbox file
    that does not exist is refused unless --create is given (the configured outbox is always created).

    \b
    Example:
      dodo-outbox enqueue usage.ndjson
      dodo-outbox enqueue --outbox /tmp/try.db --create usage.ndjson
      echo '{"event_id":"r1","customer_id":"cus_1","event_name":"api.call"}' | dodo-outbox enqueue
    """
    stream: IO[bytes]
    if str(source) == "-":
        stream, total = sys.stdin.buffer, None
    else:
        try:
            stream, total = source.open("rb"), source.stat().st_size
        except OSError as exc:
            raise click.UsageError(f"cannot read {source}: {exc.strerror}") from None
    outbox = common.open_outbox(config_path, outbox_path, source="cli", create=create)
    if isinstance(outbox.checker, MeterChecker):
        # Each meter warning is printed once, below, as `warning: ...`: the checker's log line would
        # repeat it (and, with logging unconfigured, land on stdout inside the --json output).
        outbox.checker.log_warnings = False
    summary: dict[str, Any] = {
        "stored": 0, "duplicates": 0, "refused": 0, "warnings": 0, "late": 0, "notes": []
    }  # fmt: skip
    problems: list[Problem] = []
    with outbox, stream:
        progress = Progress(
            TextColumn("enqueue"),
            BarColumn(),
            TransferSpeedColumn(),
            TextColumn("{task.fields[stored]} stored"),
            console=common.err,
            disable=not common.show_progress() or (total or 0) < 1 << 20,
        )
        with progress:
            task = progress.add_task("enqueue", total=total, stored=0)
            for chunk, found in _chunks(stream, time.time(), outbox.max_event_age):
                problems.extend(found)
                summary["refused"] += len({p.path.split(".")[0] for p in found})
                _store(outbox, chunk, summary, problems)
                position = stream.tell() if stream.seekable() else None
                progress.update(task, completed=position, stored=summary["stored"])
    summary["problems"] = [{"where": p.path, "problem": p.message} for p in problems]
    if as_json:
        common.print_json(summary)
    else:
        for problem in problems:
            common.err.print(f"{source}: {problem}", markup=False)
        line = (
            f"stored {summary['stored']} new, {summary['duplicates']} duplicates already stored, "
            f"{summary['refused']} refused"
        )
        if summary["late"]:
            line += f", {summary['late']} older than Dodo's 1-hour window (the late-event policy applies)"
        common.err.print(line, markup=False)
    if summary["refused"]:
        sys.exit(common.EXIT_FAILED)


def _chunks(
    stream: IO[bytes], now: float, max_age: float
) -> Iterator[tuple[list[tuple[int, Event]], list[Problem]]]:
    """Validated events with their lines, in chunks of CHUNK_EVENTS, with the problems found on the way."""
    events: list[tuple[int, Event]] = []
    problems: list[Problem] = []
    count = 0
    for record in read_records(stream):
        if isinstance(record, ParseProblem):
            problems.append(Problem(f"line {record.line}", record.message))
            continue
        count += 1
        event, found = check_event(record.value, now, f"line {record.line}", max_age)
        if event is None:
            problems.extend(found)
        else:
            events.append((record.line, event))
        if len(events) >= CHUNK_EVENTS:
            yield events, problems
            events, problems = [], []
    yield events, problems


def _store(
    outbox: Outbox, chunk: list[tuple[int, Event]], summary: dict[str, Any], problems: list[Problem]
) -> None:
    try:
        result = outbox.enqueue_validated([e for _, e in chunk])
    except InvalidEventError as exc:
        # strict_meters: the chunk holds events no meter would bill; none of it was stored.
        problems.extend(exc.problems)
        summary["refused"] += len(chunk)
        return
    except EventConflictError as exc:
        # One conflicting event must not block the rest of the chunk: store the others. Every refused
        # event is named by its line (both lines of a clash inside the input).
        conflicts = exc.located([e.event_id for _, e in chunk])
        refused = {c.index for c in conflicts}
        for conflict in conflicts:
            other = None if conflict.other is None else f"line {chunk[conflict.other][0]}"
            problems.append(Problem(f"line {chunk[conflict.index][0]}.event_id", conflict.reason(other)))
        summary["refused"] += len(refused)
        rest = [item for i, item in enumerate(chunk) if i not in refused]
        if rest:
            _store(outbox, rest, summary, problems)
        return
    summary["stored"] += len(result.new)
    summary["duplicates"] += len(result.duplicates)
    summary["warnings"] += len(result.warnings)
    summary["late"] += len(result.late)
    for warning in result.warnings:
        common.err.print(f"warning: {warning}", markup=False)
    for retimed in result.retimed:
        earlier = None if retimed.earlier is None else f"line {chunk[retimed.earlier][0]}"
        note = retimed.note(f"line {chunk[retimed.index][0]}.timestamp", earlier)
        summary["notes"].append({"where": note.path, "note": note.message})
        common.err.print(f"note: {note}", markup=False)


@click.group()
def events() -> None:
    """Look up events in the outbox."""


@events.command("show")
@click.argument("event_id")
@click.option("--json", "as_json", is_flag=True, help="Print the record as JSON.")
@common.outbox_option
def events_show(event_id: str, as_json: bool, config_path: Path | None, outbox_path: Location | None) -> None:
    """Show one event: its state, attempts, timestamps and last error.

    \b
    Example:
      dodo-outbox events show req_8c1f
    """
    with common.open_store(config_path, outbox_path) as store:
        record = store.get(event_id)
    if record is None:
        common.err.print(f"no event with event_id {event_id!r} in the outbox", markup=False)
        sys.exit(common.EXIT_FAILED)
    document = record.as_document()
    if as_json:
        common.print_json(document)
        return
    for key, value in document.items():
        if value is not None and key != "event":
            common.out.print(f"{key:<18} {value}", markup=False, highlight=False)
    common.out.print(f"{'event':<18} {record.payload}", markup=False, highlight=False)


@click.group("config")
def config_group() -> None:
    """Inspect the configuration."""


@config_group.command("check")
@click.option("--json", "as_json", is_flag=True, help="Print the effective settings as JSON.")
@common.config_option
def config_check(as_json: bool, config_path: Path | None) -> None:
    """Validate the configuration and print the effective settings (secrets redacted).

    Exits 2 with the key and value at fault when the configuration is wrong.

    \b
    Example:
      dodo-outbox config check --config /etc/dodo-outbox/agent.toml
    """
    from agent.preflight import check_settings

    settings = common.load_settings(config_path)
    check_settings(settings)  # the same checks `run` makes before it starts
    document: dict[str, Any] = {"source": settings.source, **config_module.describe(settings)}
    _key, where = config_module.read_api_key(settings)
    document["dodo"]["api_key"] = f"found ({where})" if _key else f"missing: {where}"
    if as_json:
        common.print_json(document)
        return
    common.out.print(f"# configuration from {settings.source}: OK", markup=False)
    for section, values in document.items():
        if isinstance(values, dict):
            common.out.print(f"[{section}]", markup=False)
            for key, value in values.items():
                common.out.print(f"{key} = {toml_value(value)}", markup=False, highlight=False)


def toml_value(value: Any) -> str:
    """`value` written as TOML: `true`, `1.0`, `"a \\"quoted\\" string"` (anything else as a string)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)  # 1000, 1.0, 1e-05, inf, nan: all TOML
    # A JSON string is a TOML basic string, except that TOML also forbids a raw DEL character.
    return json.dumps(value if isinstance(value, str) else str(value)).replace("\x7f", "\\u007f")


COMMANDS: list[click.Command] = [enqueue, events, config_group]
