"""`dodo-outbox run`: the long-running agent."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from agent.cli import common


@click.command()
@click.option(
    "--dry-run",
    is_flag=True,
    help="Deliver to a built-in local Dodo emulator instead of Dodo (no account or key needed).",
)
@common.config_option
def run(dry_run: bool, config_path: Path | None) -> None:
    """Run the agent: the local HTTP endpoint, the drop directory and the delivery worker.

    Logs one line when ready and tells systemd READY=1. SIGTERM or SIGINT stops it cleanly (new
    requests get 503, the batch in flight finishes, exit 0); a second signal exits at once. SIGHUP
    re-reads the API key and the log level.

    \b
    Example:
      dodo-outbox run --config /etc/dodo-outbox/agent.toml
      dodo-outbox run --dry-run        # try it out against a local emulator
    """
    from agent import service

    settings = common.load_settings(config_path)
    sys.exit(service.run(settings, dry_run=dry_run))


COMMANDS: list[click.Command] = [run]
