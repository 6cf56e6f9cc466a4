"""`dodo-outbox migrate`: create the outbox or bring its schema forward, as a deploy step.

The agent and the library migrate on first open anyway (under an advisory lock on PostgreSQL); this
command is for teams that run migrations before they roll out. The store does the work
(`agent.store.migrate`); a URL's password is never printed.
"""

from __future__ import annotations

from pathlib import Path

import click

from agent.cli import common
from agent.store import is_postgres_url, show_location
from agent.store import migrate as migrate_store
from agent.store.location import Location


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@common.create_option
@common.outbox_option
def migrate(as_json: bool, create: bool, config_path: Path | None, outbox_path: Location | None) -> None:
    """Create the outbox's tables or migrate them to this version's schema, then exit.

    On PostgreSQL the tables live in the schema [outbox] schema names (default dodo_outbox). Safe to
    run more than once (a second run has nothing to do) and while agents of this version run; stop
    agents of an older version first (they would keep writing the old schema's way).

    \b
    Example:
      dodo-outbox migrate --outbox postgresql://app@db.internal:5432/app
      dodo-outbox migrate --json
    """
    settings = common.load_settings(config_path)
    location = common.resolve_location(settings, outbox_path)
    options = common.store_options(settings)
    common.check_creatable(settings, location, outbox_path, create)
    shown = show_location(location)
    name = options.schema if is_postgres_url(location) else shown
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
