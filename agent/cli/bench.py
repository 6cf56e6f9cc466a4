"""`dodo-outbox bench`: measure every path on this machine's disk, each beside its baseline."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape

from agent.cli import common
from agent.store.location import is_postgres_url


@click.command()
@click.option("--quick", is_flag=True, help="Smaller sizes (100k-row scale tests): under a minute.")
@click.option("--json", "as_json", is_flag=True, help="Print the raw results as JSON instead of the table.")
@click.option(
    "--only",
    "only",
    multiple=True,
    metavar="NAME",
    help="Run only this group (repeatable): enqueue, http, drain, latency, scale, postgres.",
)
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the temporary outbox files go (default: the current directory, to measure its disk).",
)
@click.option(
    "--scale",
    "scale_factor",
    type=click.FloatRange(min=0.001, max=10.0),
    default=1.0,
    show_default=True,
    help="Multiply every size (e.g. 0.05 for a smoke test; figures get noisier).",
)
@click.option(
    "--postgres",
    "postgres_url",
    metavar="URL",
    default=None,
    help=(
        "The PostgreSQL server of the postgres group (postgresql://…); it creates schemas there and "
        "drops them afterwards. Default: a throwaway cluster, when PostgreSQL (initdb) is installed."
    ),
)
def bench(
    quick: bool,
    as_json: bool,
    only: tuple[str, ...],
    directory: Path | None,
    scale_factor: float,
    postgres_url: str | None,
) -> None:
    """Benchmark the outbox on this machine: enqueue, HTTP intake, drain, latency, scale, memory,
    and the outbox on PostgreSQL.

    Every figure is a ratio against a baseline measured in the same run (raw sqlite3, persist-queue,
    a bare delivery loop, the same HTTP stack without storing), so noisy machines still compare fairly.
    Uses a temporary outbox in --dir (removed afterwards), an emulator of Dodo on 127.0.0.1, and a load
    generator in a separate process; nothing leaves the machine (unless --postgres names another
    host). Prints a table (or --json); progress goes to stderr. Exit 0 whether or not targets are
    met: the table says which are. A figure that could not be measured (no request succeeded in a
    busy round, persist-queue, pgmq or procrastinate not installed: they come with
    `pip install 'dodo-outbox[bench]'`) is marked so instead of pass/miss. Exit 1 only when a
    benchmark group broke (its error is printed; the other groups' figures are still reported).

    The postgres group measures what the transactional outbox adds to an app's own transactions
    (8 clients) against pgmq's send and procrastinate's defer, one agent draining against a pgmq
    read+delete loop, a fleet of 1, 2 and 4 agent processes against as many pgmq consumers, and 3
    agents' worst request window against one shared budget. It runs on --postgres URL, else on a
    throwaway cluster; with neither, its rows read "no PostgreSQL".

    \b
    Example:
      dodo-outbox bench --quick
      dodo-outbox bench --only enqueue --only drain --json > results.json
      dodo-outbox bench --only postgres --postgres postgresql://bench@localhost/benchdb
    """
    from agent import logs
    from agent.bench.runner import GROUPS, render_table, run_benchmarks

    unknown = [name for name in only if name not in GROUPS]
    if unknown:
        raise click.BadParameter(
            f"{', '.join(unknown)}; choose from {', '.join(GROUPS)}", param_hint="--only"
        )
    if postgres_url is not None and not is_postgres_url(postgres_url):
        raise click.BadParameter(
            "not a PostgreSQL URL (it must start with postgresql:// or postgres://); "
            "give e.g. postgresql://user@host/database",
            param_hint="--postgres",
        )
    logs.configure("auto", "warning")
    document = run_benchmarks(
        quick=quick,
        only=only,
        directory=directory,
        scale_factor=scale_factor,
        postgres_url=postgres_url,
        progress=lambda text: common.err.print(f"[dim]bench:[/dim] {escape(text)}", highlight=False),
    )
    if as_json:
        common.print_json(document)
    else:
        # Off a terminal (a file, a CI log) rich would wrap the table at 80 columns.
        console = common.out if common.out.is_terminal else Console(width=180, highlight=False)
        render_table(document, console)
    if document["failures"]:
        # The figures above are kept; a group that broke is not a miss, it is an error to look at.
        for group, error in document["failures"].items():
            common.err.print(f"error: bench: the {group} benchmark failed: {escape(error)}", highlight=False)
        raise SystemExit(1)


COMMANDS: list[click.Command] = [bench]
