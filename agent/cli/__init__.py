"""The `dodo-outbox` command: a thin layer over the library.

Library errors become one plain line on stderr and an exit code (see agent/cli/common.py); no traceback
for anything raised on purpose. Each command lives in the module of its concern.
"""

from __future__ import annotations

import sys
from typing import Any, NoReturn

import click
from rich.markup import escape

from agent import __version__
from agent.cli import bench, billing, common, core, doctor, drain, migrate, ops, run
from agent.cli import meters as meters_cli
from agent.errors import ConfigError, DodoOutboxError, OutboxCorruptError, OutboxError


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            _fail(exc, common.EXIT_USAGE)
        except OutboxCorruptError as exc:  # before OutboxError: retrying a damaged file never helps
            _fail(exc, common.EXIT_DATAERR)
        except OutboxError as exc:
            _fail(exc, common.EXIT_TEMPFAIL)
        except DodoOutboxError as exc:
            _fail(exc, common.EXIT_FAILED)


def _fail(exc: Exception, code: int) -> NoReturn:
    common.err.print(f"[red]error:[/red] {escape(str(exc))}")
    sys.exit(code)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="dodo-outbox")
def cli() -> None:
    """A durable local outbox for Dodo Payments usage events.

    Events are validated and committed to a local SQLite file before they are acknowledged; a worker
    delivers them to Dodo in batches, retrying what can be retried and parking the rest.

    \b
    Example:
      dodo-outbox enqueue events.ndjson
      dodo-outbox status
    """


for module in (core, run, drain, ops, meters_cli, billing, bench, doctor, migrate):
    for command in module.COMMANDS:
        cli.add_command(command)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="dodo-outbox")
