"""`dodo-outbox dlq ...`: list, show, replay, export and purge dead-lettered events.

Dead rows are events Dodo refused for good (or that could not be sent in its window). They stay in the
outbox until replayed (back to pending) or purged (the only delete of a dead row); see
agent/store/sqlite/dlq.py for the SQL and for what `--restamp` does to a payload.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table
from rich.text import Text

from agent import durations
from agent.cli import common
from agent.config import Settings
from agent.store import DeadFilter, EventRecord, OutboxStore
from agent.store.location import Location
from agent.timestamps import from_us, to_us

FIX_ADVICE = (
    "Fix the events and enqueue them again with `dodo-outbox enqueue FILE`. A fixed event with a new "
    "body needs a new event_id: Dodo and the outbox treat a repeated event_id as the same event, so "
    "the fix would be refused as a conflict (or ignored by Dodo). To resend events unchanged, use "
    "`dodo-outbox dlq replay`. Purge the old dead rows when done: `dodo-outbox dlq purge`."
)


def parse_duration(text: str) -> float:
    """A duration in seconds (see agent.durations); a bad one is a usage error."""
    try:
        return durations.parse_duration(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def parse_since(text: str, now: float) -> int:
    """A duration ago or a date-time, in microseconds (see agent.durations); else a usage error."""
    try:
        return durations.parse_since(text, now)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from None


@click.group()
def dlq() -> None:
    """The dead-letter queue: events Dodo refused for good, kept until you replay or purge them.

    \b
    Example:
      dodo-outbox dlq list
      dodo-outbox dlq replay --reason http_410 --dry-run
    """


def _filter_options(func: Any) -> Any:
    func = click.option("--reason", help="Only events dead-lettered for this reason (e.g. rejected).")(func)
    return click.option(
        "--since", help="Only events dead-lettered since: a duration (2h, 7d) or a date-time."
    )(func)


@dlq.command("list")
@_filter_options
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True, help="Rows to show.")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as a JSON array.")
@common.outbox_option
def dlq_list(
    reason: str | None,
    since: str | None,
    limit: int,
    as_json: bool,
    config_path: Path | None,
    outbox_path: Location | None,
) -> None:
    """List dead-lettered events, oldest first: reason, HTTP status, attempts, a response excerpt.

    \b
    Example:
      dodo-outbox dlq list --reason rejected --since 24h
      dodo-outbox dlq list --json | jq -r '.[].event_id'
    """
    where = DeadFilter(reason=reason, all=reason is None, since_us=_since(since))
    with common.open_store(config_path, outbox_path) as store:
        rows = store.dead_rows(where, limit=limit)
        total = store.count_dead(where)
    if as_json:
        common.print_json([r.as_document() for r in rows])
        return
    if not rows:
        common.err.print("the dead-letter queue is empty" + (" for this filter" if reason or since else ""))
        return
    now = time.time()
    cells = [
        (
            r.event_id,
            r.event_name,
            r.reason or "-",
            str(r.http_status or "-"),
            str(r.attempts),
            common.human_age(None if r.settled_at_us is None else now - from_us(r.settled_at_us)),
            (r.response or "").replace("\n", " ")[:80],
        )
        for r in rows
    ]
    table = Table(box=None, pad_edge=False)
    # On a narrow terminal (80 columns, or any pipe) the short columns stay whole, long ids, names and
    # reasons fold onto more lines (never cut: they are what `dlq show` / `--reason` take), and only
    # the response excerpt is cut.
    widest = [max(len(title), *(len(c[i]) for c in cells)) for i, title in enumerate(DLQ_LIST_TITLES)]
    for i, title in enumerate(DLQ_LIST_TITLES):
        if i < 3:
            table.add_column(title, overflow="fold")
        else:
            table.add_column(title, no_wrap=True, min_width=widest[i])
    # The response gets what the others leave (at least 6): rich folds the first three only then.
    gaps = 2 * len(DLQ_LIST_TITLES)
    left = common.out.width - gaps - sum(widest)
    table.add_column("response", no_wrap=True, overflow="ellipsis", max_width=max(6, left))
    for row in cells:
        table.add_row(*(Text(cell) for cell in row))  # Text: a `[dodo]` in an id or reason is no markup
    common.out.print(table)
    if total > len(rows):
        common.err.print(f"{len(rows)} of {total} shown; use --limit or --json for more", markup=False)


DLQ_LIST_TITLES = ("event_id", "event_name", "reason", "http", "attempts", "dead for")


@dlq.command("show")
@click.argument("event_id")
@click.option("--json", "as_json", is_flag=True, help="Print the record as JSON.")
@common.outbox_option
def dlq_show(event_id: str, as_json: bool, config_path: Path | None, outbox_path: Location | None) -> None:
    """Show one dead-lettered event: the event, reason, HTTP status, response, attempts, timestamps.

    \b
    Example:
      dodo-outbox dlq show req_8c1f
    """
    with common.open_store(config_path, outbox_path) as store:
        record = store.get(event_id)
    if record is None or record.state != "dead":
        found = "no event" if record is None else f"the event is {record.state}, not dead-lettered:"
        common.err.print(f"{found} event_id {event_id!r}", markup=False)
        sys.exit(common.EXIT_FAILED)
    document = record.as_document()
    if as_json:
        common.print_json(document)
        return
    for key in ("event_id", "event_name", "reason", "http_status", "attempts", "timestamp", "enqueued_at"):
        common.out.print(f"{key:<12} {document[key]}", markup=False)
    common.out.print(f"{'dead since':<12} {document['settled_at']}", markup=False)
    common.out.print(f"{'response':<12} {record.response or '-'}", markup=False)
    common.out.print(f"{'event':<12} {record.payload}", markup=False)


@dlq.command("replay")
@click.argument("event_ids", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Replay every dead-lettered event.")
@click.option("--reason", help="Replay the events dead-lettered for this reason.")
@click.option("--restamp", is_flag=True, help="Give events past Dodo's 1-hour window the replay time.")
@click.option("--dry-run", is_flag=True, help="Say what would be replayed; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@common.outbox_option
def dlq_replay(
    event_ids: tuple[str, ...],
    all_: bool,
    reason: str | None,
    restamp: bool,
    dry_run: bool,
    as_json: bool,
    config_path: Path | None,
    outbox_path: Location | None,
) -> None:
    """Move dead-lettered events back to pending (attempts reset); the agent delivers them again.

    Choose the events by EVENT_ID..., --reason or --all. Dodo refuses timestamps older than 1 hour:
    --restamp replaces the timestamp of such events by the replay time (the original is kept in the
    event's last_error), as if the producer had sent none. Without it, the agent's late-event policy
    applies at delivery ([delivery] late_events).

    \b
    Example:
      dodo-outbox dlq replay req_8c1f req_9d2a
      dodo-outbox dlq replay --reason http_500 --restamp --dry-run
      dodo-outbox dlq replay --all
    """
    if sum((bool(event_ids), all_, reason is not None)) != 1:
        raise click.UsageError("choose the events to replay: EVENT_ID..., --reason R or --all (one of them)")
    where = DeadFilter(event_ids=event_ids, reason=reason, all=all_)
    settings = common.load_settings(config_path)
    now = time.time()
    cutoff = _restamp_cutoff(settings, now) if restamp else None
    with common.open_store(config_path, outbox_path) as store:
        total = store.count_dead(where)
        late = store.count_late(where, cutoff) if cutoff is not None else 0
        replayed, restamped = (0, 0) if dry_run else _replay_with_progress(store, where, now, cutoff, total)
    result = {"dry_run": dry_run, "matched": total, "replayed": replayed, "restamped": restamped}
    if dry_run:
        result["would_restamp"] = late
    if as_json:
        common.print_json(result)
    elif dry_run:
        common.err.print(
            f"dry run: {total} dead-lettered events would be replayed"
            + (f", {late} of them restamped" if restamp else "")
            + "; nothing changed",
            markup=False,
        )
    else:
        common.err.print(
            f"replayed {replayed} events to pending ({restamped} restamped); a running agent sends them "
            "at its next tick",
            markup=False,
        )
    if event_ids and total < len(set(event_ids)):
        common.err.print(
            f"{len(set(event_ids)) - total} of the event_ids are not dead-lettered", markup=False
        )
        sys.exit(common.EXIT_FAILED)


def _restamp_cutoff(settings: Settings, now: float) -> int:
    d = settings.delivery
    return to_us(now - d.window_seconds + d.late_margin_seconds)


def _replay_with_progress(
    store: OutboxStore, where: DeadFilter, now: float, cutoff: int | None, total: int
) -> tuple[int, int]:
    """Replay chunk by chunk under a progress bar (on a terminal); returns (moved, restamped)."""
    columns = (TextColumn("replay"), BarColumn(), MofNCompleteColumn())
    moved = restamped = 0
    with Progress(*columns, console=common.err, disable=not common.show_progress()) as progress:
        task = progress.add_task("replay", total=total)
        for step in store.replay(where, now_us=to_us(now), restamp_before_us=cutoff):
            moved += step.moved
            restamped += step.restamped
            progress.update(task, completed=moved)
    return moved, restamped


@dlq.command("export")
@_filter_options
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["ndjson", "records"]),
    default="ndjson",
    show_default=True,
    help="ndjson: one event per line, as stored (ready to fix and enqueue). records: one JSON line per "
    "dead letter with its reason, HTTP status and response.",
)
@click.option(
    "--output", "-o", type=click.Path(dir_okay=False, path_type=Path), help="File (default stdout)."
)
@common.outbox_option
def dlq_export(
    reason: str | None,
    since: str | None,
    fmt: str,
    output: Path | None,
    config_path: Path | None,
    outbox_path: Location | None,
) -> None:
    """Write dead-lettered events as NDJSON, to fix them and enqueue them again.

    A fixed event with a new body needs a new event_id: the outbox (and Dodo) treat a repeated
    event_id as the same event. To resend events unchanged, use `dlq replay` instead.

    \b
    Example:
      dodo-outbox dlq export --reason rejected --output dead.ndjson
      dodo-outbox dlq export --format records | jq .reason
    """
    where = DeadFilter(reason=reason, all=reason is None, since_us=_since(since))
    with common.open_store(config_path, outbox_path) as store:
        if output is None:
            count = _export(store.iter_dead(where), fmt, sys.stdout)
        else:
            with output.open("w", encoding="utf-8") as sink:
                count = _export(store.iter_dead(where), fmt, sink)
    common.err.print(f"exported {count} dead-lettered events to {output or 'stdout'}.", markup=False)
    if count:
        common.err.print(FIX_ADVICE, markup=False)


@dlq.command("purge")
@click.option("--older-than", "older_than", required=True, help="Dead for longer than this: 7d, 12h, 30m.")
@click.option("--reason", help="Only events dead-lettered for this reason.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@common.outbox_option
def dlq_purge(
    older_than: str, reason: str | None, yes: bool, config_path: Path | None, outbox_path: Location | None
) -> None:
    """Delete dead-lettered events that died more than DURATION ago. The only way dead rows are deleted.

    Asks for confirmation unless --yes is given. Export first if you may need them.

    \b
    Example:
      dodo-outbox dlq purge --older-than 30d
      dodo-outbox dlq purge --older-than 12h --reason rejected --yes
    """
    seconds = parse_duration(older_than)
    cutoff = to_us(time.time() - seconds)
    where = DeadFilter(reason=reason, all=reason is None)
    with common.open_store(config_path, outbox_path) as store:
        count = store.count_dead(where, older_than_us=cutoff)
        if count == 0:
            common.err.print(
                f"no dead-lettered events older than {older_than}; nothing deleted", markup=False
            )
            return
        if not yes:
            click.confirm(
                f"Delete {count} dead-lettered events older than {older_than}? This cannot be undone",
                abort=True,
                err=True,
            )
        deleted = store.purge_dead(cutoff, reason=reason)
    common.err.print(f"deleted {deleted} dead-lettered events", markup=False)


def _export(records: Iterable[EventRecord], fmt: str, sink: IO[str]) -> int:
    count = 0
    for record in records:
        line = record.payload if fmt == "ndjson" else json.dumps(record.as_document(), default=str)
        sink.write(line + "\n")
        count += 1
    return count


def _since(text: str | None) -> int | None:
    return None if text is None else parse_since(text, time.time())
