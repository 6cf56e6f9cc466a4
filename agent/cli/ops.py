"""Operations commands: `status` (with `--check` for monitoring) and the dead-letter tools `dlq ...`
(defined in agent/cli/dlq.py).

They read and change the outbox file directly, so they work whether or not the agent is running.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from agent.cli import common
from agent.cli.dlq import dlq
from agent.ops import status as status_module
from agent.store.location import Location

SPARK = "▁▂▃▄▅▆▇█"


def sparkline(values: list[int]) -> str:
    """One block character per value, scaled to the largest; a blank for zero."""
    top = max(values, default=0)
    if top <= 0:
        return " " * len(values)
    return "".join(" " if v <= 0 else SPARK[min(7, (v * 8 - 1) // top)] for v in values)


def _percent(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2%}"


# -- status ----------------------------------------------------------------------------------------


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the status document (as GET /v1/status).")
@click.option("--check", is_flag=True, help="Exit 1 when a threshold below is crossed, saying which.")
@click.option(
    "--max-backlog-age",
    type=click.FloatRange(min=0),
    default=status_module.DEFAULT_MAX_BACKLOG_AGE,
    show_default=True,
    help="--check: seconds the oldest undelivered event may wait (Dodo refuses events over 1 h old).",
)
@click.option("--max-dead", type=click.IntRange(min=0), help="--check: most dead-lettered events allowed.")
@click.option(
    "--min-success-rate",
    type=click.FloatRange(0, 1),
    help="--check: lowest delivery success ratio (delivered / (delivered + dead)), e.g. 0.99.",
)
@click.option(
    "--window",
    type=click.Choice(list(status_module.WINDOWS)),
    default="1h",
    show_default=True,
    help="--check: the period --min-success-rate is measured over (the status rates of that window).",
)
@common.outbox_option
def status(
    as_json: bool,
    check: bool,
    max_backlog_age: float,
    max_dead: int | None,
    min_success_rate: float | None,
    window: str,
    config_path: Path | None,
    outbox_path: Location | None,
) -> None:
    """Show the outbox: events by state, delivery and success rates, backlog age, pause, dead letters.

    Reads the outbox file, so it works whether or not the agent is running. With --check it exits 1
    when the oldest undelivered event is older than --max-backlog-age, when there are more than
    --max-dead dead letters, when the success ratio over --window is below --min-success-rate, or
    when delivery is paused, or on a PostgreSQL outbox when a database warning shows (dead tuples
    outnumbering live ones, a transaction open for over 5 minutes); each crossed threshold is named
    (for cron and monitoring plugins).

    \b
    Example:
      dodo-outbox status
      dodo-outbox status --json | jq '.rates["1h"]'
      dodo-outbox status --check --max-backlog-age 1800 --max-dead 0 --min-success-rate 0.99
    """
    settings = common.load_settings(config_path)
    with common.open_store(config_path, outbox_path) as store:
        document = status_module.build(store, settings=settings)
    failures = (
        status_module.check(
            document,
            max_backlog_age=max_backlog_age,
            max_dead=max_dead,
            min_success_rate=min_success_rate,
            window=window,
        )
        if check
        else []
    )
    if as_json:
        if check:
            document["check"] = {"ok": not failures, "failures": failures}
        common.print_json(document)
    else:
        render_status(document)
        if check:
            for failure in failures:
                common.out.print(f"[red]CHECK FAILED[/red]: {escape(failure)}")
            if not failures:
                common.out.print("[green]CHECK OK[/green]: no threshold crossed")
    if failures:
        sys.exit(common.EXIT_FAILED)


def render_status(document: dict[str, Any]) -> None:
    """The compact terminal view of a status document."""
    out = common.out
    if document["paused"]:
        since = document.get("paused_since")
        ago = f" for {common.human_age(time.time() - since)}" if since else ""
        by = document.get("paused_by")
        seen = f" (seen by {escape(str(by))}; every agent on this outbox is paused)" if by else ""
        state = f"[bold red]PAUSED[/bold red]{ago}: {escape(str(document['paused_reason']))}{seen}"
    else:
        state = "[green]running[/green]"
    # Every text that comes from outside (paths, pause and dead reasons) is escaped: rich would read a
    # `[dodo]` in it as markup and drop it.
    out.print(f"[bold]dodo-outbox[/bold]  {escape(str(document['outbox']))}")
    out.print(f"delivery  {state}")
    counts = Table(box=None, pad_edge=False, show_edge=False)
    for name in ("pending", "inflight", "delivered", "dead"):
        counts.add_column(name, justify="right", style="red" if name == "dead" and document[name] else None)
    counts.add_row(*(f"{document[n]:,}" for n in ("pending", "inflight", "delivered", "dead")))
    out.print(counts)
    age = document["oldest_pending_age_seconds"]
    style = "red" if age is not None and age > status_module.DEFAULT_MAX_BACKLOG_AGE else "default"
    if age is None:
        out.print("oldest undelivered event  none: everything is delivered or dead")
    else:
        out.print(f"oldest undelivered event  [{style}]{common.human_age(age)}[/{style}] old (event time)")
    rates = Table(box=None, pad_edge=False, show_edge=False)
    for title in ("", "delivered", "per min", "dead", "success", "requests ok"):
        rates.add_column(title, justify="right")
    for name, r in document["rates"].items():
        rates.add_row(
            f"last {name}",
            f"{r['delivered']:,}",
            f"{r['delivered_per_minute']:,.1f}",
            f"{r['dead']:,}",
            _percent(r["delivery_success_ratio"]),
            f"{r['requests_ok']:,}/{r['requests']:,} ({_percent(r['request_success_ratio'])})",
        )
    out.print(rates)
    per_minute = document["delivered_per_minute"]
    peak = max(per_minute, default=0)
    out.print(f"delivered/min, last hour  [cyan]{sparkline(per_minute)}[/cyan]  peak {peak:,}")
    if document["top_dead_reasons"]:
        shown = ", ".join(f"{r['reason']} {r['count']:,}" for r in document["top_dead_reasons"])
        out.print(f"top dead-letter reasons  {shown}", markup=False)
    unmatched = document.get("meter_checks", {}).get("unmatched_by_name")
    if unmatched:
        shown = ", ".join(f"{name} {count:,}" for name, count in unmatched.items())
        out.print(f"no meter counts (last hour)  {shown}", markup=False)
    for warning in document.get("warnings", ()):
        out.print(f"[bold yellow]WARNING[/bold yellow]: {escape(warning)}")
    render_agents(document.get("agents") or [])


def render_agents(agents: list[dict[str, Any]]) -> None:
    """The agents working on the outbox: where, last seen, and each one's share of the deliveries."""
    if not agents:
        return
    table = Table(box=None, pad_edge=False, show_edge=False, title_justify="left")
    for title, justify in (
        ("agent", "left"),
        ("state", "left"),
        ("last seen", "right"),
        ("claimed", "right"),
        ("delivered", "right"),
        ("share", "right"),
    ):
        table.add_column(title, justify=justify)  # type: ignore[arg-type]
    styles = {"active": "green", "stopped": "default", "gone": "red"}
    for agent in agents:
        style = styles.get(agent["state"], "default")
        share = agent["delivered_share"]
        table.add_row(
            escape(f"{agent['host']} pid {agent['pid']}"),
            f"[{style}]{agent['state']}[/{style}]",
            f"{common.human_age(agent['last_seen_seconds_ago'])} ago",
            f"{agent['claimed']:,}",
            f"{agent['delivered']:,}",
            "-" if share is None else f"{share:.0%}",
        )
    common.out.print(f"agents on this outbox  {sum(a['state'] == 'active' for a in agents)} active")
    common.out.print(table)


COMMANDS: list[click.Command] = [status, dlq]
