"""What Dodo should bill: `meters preview` (local totals per meter and customer) and `reconcile`."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from agent.cli import common
from agent.cli.meters import _bucket, _iso, meters_group, parse_since
from agent.config import Settings
from agent.errors import ConfigError, DeliveryError
from agent.meters import Meter, dodo_client, known_meters
from agent.meters.filters import ASSUMPTIONS as FILTER_ASSUMPTIONS
from agent.meters.preview import Preview
from agent.meters.reconcile import ASSUMPTIONS, Reconciler, dodo_meters, fetch_meter_events, read_back_event
from agent.store import OutboxStore
from agent.store.location import Location
from agent.timestamps import parse_timestamp, to_us


def resolve_range(since: str | None, start: str | None, until: str | None, now: float) -> tuple[float, float]:
    """`--since` (default 24h) or `--from`/`--until` (until defaults to now) as epoch seconds."""
    if since is not None and (start is not None or until is not None):
        raise click.UsageError("give --since, or --from/--until, not both")

    def moment(text: str, hint: str) -> float:
        try:
            return parse_timestamp(text).timestamp()
        except ValueError:
            raise click.BadParameter(f"{text!r} is not an ISO 8601 time", param_hint=hint) from None

    if start is None and until is None:
        return parse_since(since or "24h", now), now
    end = now if until is None else moment(until, "--until")
    begin = end - 86400.0 if start is None else moment(start, "--from")
    if begin >= end:
        raise click.BadParameter(
            f"--from {_iso(begin)} is not before --until {_iso(end)}", param_hint="--from"
        )
    return begin, end


def select_meters(meters: Sequence[Meter], name: str | None) -> list[Meter]:
    """The meters `--meter NAME` picks (by name, id or event name); all without it."""
    if name is None:
        return list(meters)
    chosen = [m for m in meters if name in (m.name, m.meter_id, m.event_name)]
    if not chosen:
        known = ", ".join(sorted({m.label for m in meters})) or "none"
        raise ConfigError(f"--meter {name!r}: no meter has that name, id or event name; meters: {known}")
    return chosen


def _meters_or_fail(settings: Settings, store: OutboxStore) -> list[Meter]:
    meters = known_meters(settings, store)
    if meters is None:
        raise ConfigError(
            "no meters known: run `dodo-outbox meters pull`, or list them as [[meters]] in the config"
        )
    return meters


_RANGE_OPTIONS = [
    click.option(
        "--since", "since", default=None, help="Events whose time is within: 30m, 24h, 7d (default 24h)."
    ),
    click.option("--from", "start", default=None, help="Range start, an ISO 8601 time (inclusive)."),
    click.option(
        "--until", "until", default=None, help="Range end, an ISO 8601 time (exclusive; default now)."
    ),
    click.option("--customer", default=None, help="One customer_id only."),
    click.option("--meter", "meter_name", default=None, help="One meter only (its name, id or event name)."),
    click.option("--json", "as_json", is_flag=True, help="Print the result as JSON."),
]


def range_options(func: Any) -> Any:
    """--since/--from/--until/--customer/--meter/--json, shared by `meters preview` and `reconcile`."""
    for option in reversed(_RANGE_OPTIONS):
        func = option(func)
    return func


@meters_group.command("preview")
@range_options
@common.outbox_option
def meters_preview(
    since: str | None,
    start: str | None,
    until: str | None,
    customer: str | None,
    meter_name: str | None,
    as_json: bool,
    config_path: Path | None,
    outbox_path: Location | None,
) -> None:
    """What each meter should add up to, per customer, over the outbox's events.

    Counts delivered and pending events (dead ones are not billed) whose event time falls in the
    range, with each meter's filter and aggregation. Below the table: the events no meter counts,
    by name, with the closest meter; and the assumptions made where Dodo's docs are silent.

    \b
    Example:
      dodo-outbox meters preview --since 24h
      dodo-outbox meters preview --from 2026-11-01T00:00:00Z --until 2026-12-01T00:00:00Z --json
      dodo-outbox meters preview --since 7d --customer cus_a --meter tokens
    """
    settings = common.load_settings(config_path)
    begin, end = resolve_range(since, start, until, time.time())
    with common.open_store(config_path, outbox_path) as store:
        meters = _meters_or_fail(settings, store)
        preview = Preview(meters, shown=select_meters(meters, meter_name), customer=customer)
        preview.add_rows(store.billable_rows(to_us(begin), to_us(end)))
    document = preview.document(_iso(begin), _iso(end))
    if as_json:
        common.print_json(document)
        return
    _print_preview(document, preview.hints())


def _print_preview(document: dict[str, Any], hints: dict[str, str]) -> None:
    say = common.out.print
    say(f"events from {document['from']} until {document['until']}", markup=False)
    for meter in document["meters"]:
        over = f" over {meter['key']}" if meter["key"] else ""
        say(f"\n{meter['name']}  ({meter['aggregation']}{over} of {meter['event_name']})", markup=False)
        say(f"  {'customer':<32} {'events':>10} {'value':>16}", markup=False)
        for customer, total in meter["customers"].items():
            value = "-" if total["value"] is None else str(total["value"])
            say(f"  {customer:<32} {total['events']:>10} {value:>16}", markup=False)
        if not meter["customers"]:
            say("  (no events counted)", markup=False)
        skipped = meter["skipped"]
        notes = (
            [f"{meter['excluded_by_filter']} excluded by the filter"] if meter["excluded_by_filter"] else []
        )
        notes += [f"{n} skipped: {reason}" for reason, n in skipped.items() if n]
        if notes:
            say(f"  ({'; '.join(notes)})", markup=False)
    if document["unmatched"]:
        say("\nevents no meter counts (Dodo accepts them and never bills them):", markup=False)
        for name, count in document["unmatched"].items():
            say(f"  {count:>10}  {name}: {hints.get(name, '')}", markup=False)
    say("\nassumptions:", markup=False)
    for text in document["assumptions"]:
        say(f"  - {text}", markup=False)


@click.command("reconcile")
@range_options
@click.option(
    "--page-size",
    default=100,
    show_default=True,
    type=click.IntRange(1, 100),
    help="Events per GET /events page.",
)
@common.outbox_option
def reconcile(
    since: str | None,
    start: str | None,
    until: str | None,
    customer: str | None,
    meter_name: str | None,
    as_json: bool,
    page_size: int,
    config_path: Path | None,
    outbox_path: Location | None,
) -> None:
    """Compare, per pulled meter, the delivered events the outbox counts with Dodo's own list.

    Reads GET /events?meter_id=...&start=...&end=... page by page (from 0 until an empty page),
    within the [delivery] rate budget the running agent shares. Lists the ids Dodo has that the
    outbox does not, and the ids delivered that Dodo's meter does not count, each with its likely
    reason (filter, late, unknown customer, ...). Exit 0 when they agree, 1 when they differ, 75
    when Dodo cannot be read.

    \b
    Example:
      dodo-outbox meters pull && dodo-outbox reconcile --since 24h
      dodo-outbox reconcile --meter tokens --customer cus_a --json
    """
    settings = common.load_settings(config_path)
    begin, end = resolve_range(since, start, until, time.time())
    window = (to_us(begin), to_us(end))
    with common.open_store(config_path, outbox_path) as store:
        chosen = select_meters(dodo_meters(_meters_or_fail(settings, store)), meter_name)
        if not chosen:
            raise ConfigError("no pulled meters to reconcile: run `dodo-outbox meters pull` first")
        reconciler = Reconciler(chosen, window, customer)
        reconciler.add_rows(store.billable_rows(*window))
        bucket = _bucket(config_path)
        try:
            with dodo_client(settings) as client:
                read_back = read_back_event(client, bucket)
                for comparison in reconciler.comparisons:
                    meter_id = comparison.meter.meter_id or ""
                    dodo = fetch_meter_events(client, bucket, meter_id, window, customer, page_size)
                    reconciler.compare(comparison, dodo, store.rows_by_event_id, read_back)
        except DeliveryError as exc:
            common.err.print(f"error: Dodo could not be read, nothing compared: {exc}", markup=False)
            sys.exit(common.EXIT_TEMPFAIL)
    agree = all(c.agree for c in reconciler.comparisons)
    document = {
        "from": _iso(begin),
        "until": _iso(end),
        "agree": agree,
        "meters": [c.document() for c in reconciler.comparisons],
        "assumptions": [*ASSUMPTIONS, *FILTER_ASSUMPTIONS],
    }
    if as_json:
        common.print_json(document)
    else:
        _print_reconcile(document)
    if not agree:
        sys.exit(common.EXIT_FAILED)


def _print_reconcile(document: dict[str, Any]) -> None:
    say = common.out.print
    say(f"delivered events from {document['from']} until {document['until']} against Dodo", markup=False)
    for meter in document["meters"]:
        mark = "ok  " if meter["agree"] else "DIFF"
        say(
            f"{mark} {meter['name']} [{meter['id']}]: outbox {meter['outbox']}, Dodo {meter['dodo']}, "
            f"both {meter['matched']}",
            markup=False,
        )
        for side, label in (("only_in_dodo", "Dodo only  "), ("only_in_outbox", "outbox only")):
            for item in meter[side]:
                say(f"       {label} {item['event_id']}: {item['reason']}: {item['detail']}", markup=False)
    if document["agree"]:
        say("the outbox and Dodo agree", markup=False)
    else:
        say("the outbox and Dodo differ: see each id's reason above", markup=False)
    say("assumptions:", markup=False)
    for text in document["assumptions"]:
        say(f"  - {text}", markup=False)


COMMANDS: list[click.Command] = [reconcile]
