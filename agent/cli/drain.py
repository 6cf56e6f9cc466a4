"""Delivery commands: `drain` (deliver the outbox now) and `fake-dodo` (a local Dodo to deliver to)."""

from __future__ import annotations

import re
import sys
import threading
import time
from pathlib import Path
from typing import Any

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from agent import logs
from agent.cli import common
from agent.delivery.batch import DrainReport
from agent.delivery.client import DodoClient
from agent.delivery.worker import Worker
from agent.store.location import Location

EXIT_PAUSED = 3
"""`drain`: delivery is paused (no key, a refused key, a wrong base URL); the reason is printed."""


@click.command()
@click.option("--once", is_flag=True, help="Deliver until nothing is due, then exit with a summary.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@common.outbox_option
def drain(once: bool, as_json: bool, config_path: Path | None, outbox_path: Location | None) -> None:
    """Deliver the outbox to Dodo now, with the same code path as the running agent.

    With --once: send batches until nothing is due (events waiting for a retry stay pending), then
    print a summary. Without it: keep delivering until Ctrl-C. Exit 0, or 3 when delivery is paused
    (no API key, a key Dodo refuses, a base URL that answers 404): the reason is printed.

    \b
    Example:
      DODO_PAYMENTS_API_KEY=... dodo-outbox drain --once
      dodo-outbox drain --once --json --outbox ./dodo-outbox.db
    """
    settings = common.load_settings(config_path)
    progress_on = common.show_progress() and not as_json
    # Per-batch lines would tear a progress bar apart; warnings (retries, pauses) still show.
    logs.configure(settings.log.format, "warning" if progress_on else settings.log.level)
    store = common.open_store(config_path, outbox_path)
    worker = Worker(store, settings, DodoClient.from_settings(settings))
    stop = threading.Event()
    total = DrainReport()
    try:
        with _progress(progress_on, store.backlog()) as (progress, task):

            def advance(report: DrainReport) -> None:
                total.add(report)
                progress.update(
                    task, advance=report.delivered + report.dead, dead=total.dead, retrying=total.retried
                )

            while True:
                last = worker.drain_until_idle(stop, advance)
                total.paused, total.next_due = last.paused, last.next_due
                if once:
                    break
                time.sleep(_idle_wait(last, settings.delivery.interval_seconds))
    except KeyboardInterrupt:
        stop.set()
        common.err.print("interrupted: events being sent stay leased and are sent again later", markup=False)
    finally:
        worker.close()
        pending = store.backlog()
        store.close()
    _summarize(total, pending, as_json)
    if total.paused is not None:
        sys.exit(EXIT_PAUSED)


class _progress:
    """A rich progress bar on stderr, or a do-nothing one (not a terminal, or --json)."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.bar = Progress(
            TextColumn("drain"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[dead]} dead, {task.fields[retrying]} retrying"),
            TimeElapsedColumn(),
            console=common.err,
            disable=not enabled,
        )
        self.total = total

    def __enter__(self) -> tuple[Progress, Any]:
        self.bar.__enter__()
        return self.bar, self.bar.add_task("drain", total=self.total or None, dead=0, retrying=0)

    def __exit__(self, *exc: object) -> None:
        self.bar.__exit__(None, None, None)


def _idle_wait(report: DrainReport, interval: float) -> float:
    """How long a continuous drain sleeps after an idle burst: until the next due time, within
    [0.05 s, interval]."""
    if report.next_due is None:
        return interval
    return min(interval, max(0.05, report.next_due - time.time()))


def _summarize(total: DrainReport, pending: int, as_json: bool) -> None:
    if as_json:
        common.print_json({**total.as_dict(), "pending": pending})
        return
    line = (
        f"delivered {total.delivered}, dead-lettered {total.dead}, scheduled for retry {total.retried} "
        f"in {total.sent} requests"
    )
    if total.duplicates_ignored:
        line += f"; {total.duplicates_ignored} already at Dodo (ignored as duplicates)"
    if total.restamped:
        line += f"; {total.restamped} sent without their too-old timestamp (restamped)"
    line += f"; {pending} still pending"
    if pending and total.next_due is not None and total.paused is None:
        line += f", next due in {max(0.0, total.next_due - time.time()):.1f} s"
    common.out.print(line, markup=False, highlight=False)
    if total.dead:
        common.err.print("see the dead events with: dodo-outbox dlq list", markup=False)
    if total.paused is not None:
        common.err.print(f"delivery paused: {total.paused}", markup=False)


def _error_rate(_ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]) -> dict[int, float]:
    rates: dict[int, float] = {}
    for value in values:
        status, sep, rate = value.partition("=")
        try:
            if not sep:
                raise ValueError
            rates[int(status)] = float(rate)
        except ValueError:
            raise click.BadParameter(f"{value!r}: use STATUS=RATE, e.g. 503=0.1") from None
    return rates


@click.command("fake-dodo")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8791, show_default=True, type=click.IntRange(0, 65535), help="Port.")
@click.option(
    "--key", "keys", multiple=True, help="An API key that may ingest (repeatable). Default: test_key."
)
@click.option("--read-only-key", "read_only_keys", multiple=True, help="A key that gets 403 on ingest.")
@click.option(
    "--meters",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Meters JSON for GET /meters: a list of {event_name, aggregation: {type, key}} (see "
    "config/meters.example.json).",
)
@click.option(
    "--reject-event-ids",
    "reject_event_ids",
    multiple=True,
    help="Refuse events with these event_ids with 400, as Dodo refuses an invalid event: poison events "
    "for dead-letter tests (comma list, repeatable).",
)
@click.option(
    "--poison-customer",
    "poison_customers",
    multiple=True,
    help="Refuse every event of this customer_id with 400 (comma list, repeatable).",
)
@click.option("--window-seconds", type=float, default=3600.0, show_default=True, help="Oldest timestamp.")
@click.option("--max-body-bytes", type=int, default=5_000_000, show_default=True, help="Larger: 413.")
@click.option("--no-rate-limit", is_flag=True, help="Do not answer 429 (headers are still sent).")
@click.option("--rate-per-second", type=float, default=40.0, show_default=True, help="Burst limit.")
@click.option("--rate-per-minute", type=float, default=240.0, show_default=True, help="Sustained limit.")
@click.option(
    "--fault-error-rate",
    "error_rates",
    multiple=True,
    callback=_error_rate,
    help="STATUS=RATE: answer STATUS to that share of requests, e.g. 503=0.1 (repeatable).",
)
@click.option("--fault-timeout-rate", type=float, default=0.0, help="Share of requests left hanging.")
@click.option("--fault-drop-rate", type=float, default=0.0, help="Share of connections cut unanswered.")
@click.option("--fault-ack-lost-rate", type=float, default=0.0, help="Share stored, then cut unanswered.")
@click.option("--fault-latency-ms", type=float, default=0.0, help="Delay every ingest answer.")
@click.option("--fault-script", default="", help="Outcomes of the next requests in order, e.g. 503,drop,200.")
@click.option("--fault-outage-seconds", type=float, default=0.0, help="Answer 503 for this long at start.")
@click.option("--seed", type=int, default=None, help="Seed the random faults (reproducible runs).")
def fake_dodo(
    host: str,
    port: int,
    keys: tuple[str, ...],
    read_only_keys: tuple[str, ...],
    meters: Path | None,
    reject_event_ids: tuple[str, ...],
    poison_customers: tuple[str, ...],
    window_seconds: float,
    max_body_bytes: int,
    no_rate_limit: bool,
    rate_per_second: float,
    rate_per_minute: float,
    error_rates: dict[int, float],
    fault_timeout_rate: float,
    fault_drop_rate: float,
    fault_ack_lost_rate: float,
    fault_latency_ms: float,
    fault_script: str,
    fault_outage_seconds: float,
    seed: int | None,
) -> None:
    """Run a local fake of Dodo's ingestion API in the foreground (Ctrl-C stops it).

    It enforces Dodo's contract (key, limits, timestamp window, duplicate ids, rate limit), keeps
    events idempotently by event_id, and can inject faults. Point the agent at it with
    [dodo] base_url = "http://127.0.0.1:8791" and use one of its keys. Its admin API is under
    /_emulator/ (GET /_emulator/ lists every route with an example body). The banner is printed
    once the port accepts connections.

    \b
    Example:
      dodo-outbox fake-dodo --key test_key --fault-error-rate 503=0.2
      dodo-outbox fake-dodo --meters config/meters.example.json --reject-event-ids bad_1,bad_2
      DODO_PAYMENTS_API_KEY=test_key DODO_OUTBOX_DODO_BASE_URL=http://127.0.0.1:8791 dodo-outbox drain --once
    """
    # Imported here: the emulator pulls in uvicorn and starlette, which other commands do not need.
    from agent.emulator import EmulatorConfig, serve

    poison_ids = _comma_list(reject_event_ids)
    config = EmulatorConfig(
        keys=keys or ("test_key",),
        read_only_keys=read_only_keys,
        window_seconds=window_seconds,
        max_body_bytes=max_body_bytes,
        rate_limit=not no_rate_limit,
        rate_per_second=rate_per_second,
        rate_per_minute=rate_per_minute,
        meters_file=meters,
        seed=seed,
        reject_event_ids="^(?:" + "|".join(map(re.escape, poison_ids)) + ")$" if poison_ids else None,
        reject_customer_ids=_comma_list(poison_customers),
    )
    faults: dict[str, Any] = {
        name: value
        for name, value in (
            ("error_rates", error_rates),
            ("timeout_rate", fault_timeout_rate),
            ("drop_rate", fault_drop_rate),
            ("ack_lost_rate", fault_ack_lost_rate),
            ("latency_ms", fault_latency_ms),
            ("script", [item.strip() for item in fault_script.split(",") if item.strip()]),
            ("outage_seconds", fault_outage_seconds),
        )
        if value
    }
    if host not in ("127.0.0.1", "localhost", "::1"):
        common.err.print(f"warning: listening on {host}: the fake Dodo has no TLS", markup=False)

    def banner(url: str) -> None:
        poison = f"; refusing {len(poison_ids)} event_id(s)" if poison_ids else ""
        poison += f", {len(config.reject_customer_ids)} customer(s)" if config.reject_customer_ids else ""
        common.err.print(
            f"fake Dodo on {url} ({len(config.keys)} key(s){poison}); admin API under {url}/_emulator/",
            markup=False,
        )

    try:
        serve(host, port, config, faults=faults | {"seed": seed} if faults else None, on_ready=banner)
    except ValueError as exc:  # a bad meters file or fault setting, named by the emulator
        raise click.UsageError(str(exc)) from None
    except OSError as exc:  # the port is taken, or the host is not ours
        raise click.UsageError(f"{exc} (--host / --port)") from None


def _comma_list(values: tuple[str, ...]) -> tuple[str, ...]:
    """`("a,b", "c")` -> `("a", "b", "c")`, blanks dropped."""
    return tuple(item.strip() for value in values for item in value.split(",") if item.strip())


COMMANDS: list[click.Command] = [drain, fake_dodo]
