"""Meter commands: `meters pull`, `meters check`, and `verify` (read delivered events back from Dodo)."""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import quote

import click
import orjson

from agent import durations
from agent.cli import common
from agent.delivery.pacing import TokenBucket
from agent.errors import ConfigError, DeliveryError
from agent.meters import dodo_client, fetch_meters, known_meters, meter_to_row, paced_get
from agent.meters.report import keys_by_name, report
from agent.store.location import Location
from agent.timestamps import from_us, to_us


def parse_since(text: str, now: float) -> float:
    """`--since` as epoch seconds: a duration ago (`90s`, `30m`, `1h`, `2d`, plain seconds) or an
    ISO 8601 time, read by `agent.durations.parse_since`. Raises click.BadParameter naming the value.
    """
    try:
        return from_us(durations.parse_since(text, now))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from None


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _bucket(config_path: Path | None) -> TokenBucket:
    delivery = common.load_settings(config_path).delivery
    return TokenBucket(delivery.requests_per_minute, delivery.burst)


@click.group("meters")
def meters_group() -> None:
    """Dodo's meters: pull them, and check recent events against them.

    Dodo accepts an event whose event_name matches no meter, or whose aggregated key is missing or a
    string, and never bills it. These commands find such events before the invoice does.

    \b
    Example:
      dodo-outbox meters pull
      dodo-outbox meters check --since 1h
    """


@meters_group.command("pull")
@click.option("--json", "as_json", is_flag=True, help="Print the meters as JSON.")
@common.create_option
@common.outbox_option
def meters_pull(as_json: bool, create: bool, config_path: Path | None, outbox_path: Location | None) -> None:
    """Fetch every active meter from Dodo (GET /meters) and cache it in the outbox.

    The enqueue-time checks and `meters check` use the cached meters (plus any [[meters]] of the
    config). Pages through from page 0 until an empty page, within the [delivery] rate budget.

    \b
    Example:
      dodo-outbox meters pull --config /etc/dodo-outbox/agent.toml
    """
    settings = common.load_settings(config_path)
    # Refuse a mistyped --outbox before asking Dodo, not after.
    common.check_creatable(settings, common.resolve_location(settings, outbox_path), outbox_path, create)
    with dodo_client(settings) as client:
        meters = fetch_meters(client, _bucket(config_path))
    now_us = to_us(time.time())
    with common.open_store(config_path, outbox_path, must_exist=False, create=create) as store:
        store.replace_meters([meter_to_row(m, i, now_us) for i, m in enumerate(meters)], now_us)
    if as_json:
        common.print_json(
            [
                {"id": m.meter_id, "name": m.name, "event_name": m.event_name, "aggregation": m.aggregation}
                | {"key": m.key, "filter": m.filter}
                for m in meters
            ]
        )
        return
    common.out.print(f"pulled {len(meters)} meters from {settings.dodo.url}", markup=False)
    for m in meters:
        over = f" over {m.key}" if m.aggregated_key else ""
        extra = "  (filtered)" if m.filter else ""
        common.out.print(f"  {m.event_name:<32} {m.aggregation}{over}  [{m.label}]{extra}", markup=False)


@meters_group.command("check")
@click.option(
    "--since", "since", default="1h", show_default=True, help="Events enqueued since: 30m, 1h, 2d, or a time."
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@common.outbox_option
def meters_check(since: str, as_json: bool, config_path: Path | None, outbox_path: Location | None) -> None:
    """Report recent events by name against the meters: what would not be billed, and why.

    Uses the meters cached by `meters pull` plus the config's [[meters]]. Exit 0 when every recent
    event would be billed, 1 when some would not.

    \b
    Example:
      dodo-outbox meters check --since 24h
      dodo-outbox meters check --json | jq '.names[] | select(.billable | not)'
    """
    settings = common.load_settings(config_path)
    start = parse_since(since, time.time())
    with common.open_store(config_path, outbox_path) as store:
        meters = known_meters(settings, store)
        if meters is None:
            raise ConfigError(
                "no meters known: run `dodo-outbox meters pull`, or list them as [[meters]] in the config"
            )
        stats = store.recent_events_by_name(to_us(start), keys_by_name(meters))
    entries = report(stats, meters)
    seen = {entry["event_name"] for entry in entries}
    idle = sorted({m.event_name for m in meters} - seen)
    failing = [entry for entry in entries if not entry["billable"]]
    if as_json:
        common.print_json(
            {"since": _iso(start), "meters": len(meters), "names": entries, "not_billable": len(failing)}
            | {"meters_without_events": idle}
        )
    else:
        common.out.print(f"events since {_iso(start)} against {len(meters)} meters", markup=False)
        for entry in entries:
            mark = "ok  " if entry["billable"] else "FAIL"
            common.out.print(f"{mark} {entry['event_name']:<32} {entry['events']} events", markup=False)
            for problem in entry["problems"]:
                example = f" (e.g. {problem['example_event_id']})" if problem["example_event_id"] else ""
                line = f"       {problem['events']} {problem['reason']}{example}: {problem['message']}"
                common.out.print(line, markup=False)
        if idle:
            common.out.print(f"meters with no events in this window: {', '.join(idle)}", markup=False)
        if not entries:
            common.out.print("no events in this window", markup=False)
    if failing:
        sys.exit(common.EXIT_FAILED)


@click.command("verify")
@click.option(
    "--sample", default=100, show_default=True, type=click.IntRange(1, 100_000), help="Events to read back."
)
@click.option(
    "--since", "since", default="24h", show_default=True, help="Delivered since: 30m, 1h, 2d, or a time."
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@common.outbox_option
def verify(
    sample: int, since: str, as_json: bool, config_path: Path | None, outbox_path: Location | None
) -> None:
    """Read a random sample of delivered events back from Dodo (GET /events/{event_id}).

    Reports every sampled event Dodo does not have, or has under another customer or name (its
    event_id was used before by something else, so this usage was ignored). Requests stay within
    the [delivery] rate budget, which the running agent shares. Exit 0 when all were found, 1 when
    any is missing or different, 75 when Dodo could not be read for some (unreachable, or the key
    refused), 2 without an API key. With --json the result is printed as JSON in every case, its
    `error` naming what stopped the reads and `unread` how many sampled events were not read.

    \b
    Example:
      dodo-outbox verify --sample 200 --since 6h
    """
    start = parse_since(since, time.time())
    try:
        settings = common.load_settings(config_path)
        with common.open_store(config_path, outbox_path) as store:
            chosen = store.delivered_sample(to_us(start), limit=sample)
    except ConfigError as exc:  # a bad config or no outbox: still JSON with --json
        if not as_json:
            raise
        common.print_json({"since": _iso(start), "checked": 0, "error": str(exc)})
        sys.exit(common.EXIT_USAGE)
    result: dict[str, Any] = {"since": _iso(start), "checked": len(chosen), "found": 0}
    result |= {"missing": [], "different": [], "errors": [], "unread": 0, "error": None}
    try:
        client = dodo_client(settings)
    except ConfigError as exc:  # no API key: nothing was read
        _finish_verify(result | {"unread": len(chosen), "error": str(exc)}, as_json, common.EXIT_USAGE)
    bucket = _bucket(config_path)
    # Paced within the rate budget, a sample of 100 takes about 25 s at Dodo's default tier: show it.
    with client, common.counting_bar("verify", disable=as_json) as bar:
        task = bar.add_task("verify", total=len(chosen))
        for done, (event_id, _name, payload) in enumerate(chosen):
            bar.advance(task)
            try:
                response = paced_get(client, f"/events/{quote(event_id, safe='')}", bucket)
            except DeliveryError as exc:
                # Dodo unreachable or the key refused: every further read would fail the same way.
                result |= {"unread": len(chosen) - done, "error": f"{exc} (Dodo at {settings.dodo.url})"}
                break
            if response.status_code == 404:
                result["missing"].append(event_id)
            elif response.status_code != 200:
                result["errors"].append({"event_id": event_id, "status": response.status_code})
            else:
                ours, theirs = orjson.loads(payload), response.json()
                fields = ("customer_id", "event_name")
                if any(ours.get(f) != theirs.get(f) for f in fields):
                    result["different"].append(
                        {"event_id": event_id}
                        | {f: {"ours": ours.get(f), "dodo": theirs.get(f)} for f in fields}
                    )
                else:
                    result["found"] += 1
    if result["missing"] or result["different"]:
        code = common.EXIT_FAILED
    elif result["errors"] or result["error"]:
        code = common.EXIT_TEMPFAIL
    else:
        code = common.EXIT_OK
    _finish_verify(result, as_json, code)


def _finish_verify(result: dict[str, Any], as_json: bool, code: int) -> NoReturn:
    """Print the result (JSON with --json, whatever went wrong) and exit with `code`."""
    if as_json:
        common.print_json(result)
    else:
        _print_verify(result)
    sys.exit(code)


def _print_verify(result: dict[str, Any]) -> None:
    out = common.out
    missing, different, errors = (len(result[k]) for k in ("missing", "different", "errors"))
    out.print(
        f"checked {result['checked']} events delivered since {result['since']}: {result['found']} found, "
        f"{missing} missing, {different} different, {errors + result['unread']} unreadable",
        markup=False,
    )
    for event_id in result["missing"]:
        out.print(f"  missing   {event_id}: Dodo has no such event; it was never billed", markup=False)
    for item in result["different"]:
        out.print(f"  different {item['event_id']}: {item}", markup=False)
    for item in result["errors"]:
        out.print(f"  error     {item['event_id']}: GET answered {item['status']}", markup=False)
    if result["error"]:
        common.err.print(
            f"error: could not read {result['unread']} of the sampled events from Dodo: {result['error']}",
            markup=False,
        )


COMMANDS: list[click.Command] = [meters_group, verify]
