"""`dodo-outbox migrate`: create the outbox or bring its schema forward, as a deploy step.

The agent and the library migrate on first open anyway (under an advisory lock on PostgreSQL); this
command is for teams that run migrations before they roll out. The store does the work
(`agent.store.migrate`); a URL's password is never printed.
"""

from __future__ import annotations

from pathlib import Path

import click

from agent.cli import common
from agent.store import StoreOptions, is_postgres_url, mask_url
from agent.store import migrate as migrate_store


@click.command()
@click.option(
    "--outbox",
    "outbox",
    default=None,
    metavar="PATH_OR_URL",
    help="Outbox file or postgresql:// URL. Default: [outbox] url, else [outbox] path, of the config.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@common.create_option
@common.config_option
def migrate(outbox: str | None, as_json: bool, create: bool, config_path: Path | None) -> None:
    """Create the outbox's tables or migrate them to this version's schema, then exit.

    On PostgreSQL the tables live in the schema [outbox] schema names (default dodo_outbox). Safe to
    run while agents use the outbox, and more than once: a second run has nothing to do.

    \b
    Example:
      dodo-outbox migrate --outbox postgresql://app@db.internal:5432/app
      dodo-outbox migrate --json
    """
    settings = common.load_settings(config_path)
    location: str | Path = outbox or settings.outbox.url or settings.outbox_path
    options = StoreOptions(schema=settings.outbox.schema, synchronous=settings.outbox.synchronous)
    if is_postgres_url(location):
        name, shown = options.schema, mask_url(str(location))
    else:
        location = Path(location)
        common.check_creatable(settings, location, location if outbox else None, create)
        name = shown = str(location)
    found, now = migrate_store(location, options)
    if as_json:
        common.print_json({"outbox": shown, "schema": name, "from_version": found, "to_version": now})
        return
    where = f" ({shown})" if name != shown else ""
    if found == now:
        click.echo(f"{name}: already at schema {now}{where}")
    elif found == 0:
        click.echo(f"created {name} at schema {now}{where}")
    else:
        click.echo(f"migrated {name} from schema {found} to {now}{where}")


COMMANDS: list[click.Command] = [migrate]
