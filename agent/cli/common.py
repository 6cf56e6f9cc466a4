"""What every command shares: the --config/--outbox options, opening the outbox, printing."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from agent import config as config_module
from agent.config import Settings
from agent.errors import ConfigError
from agent.meters import build_checker
from agent.outbox import Outbox
from agent.store import OutboxStore, StoreOptions, outbox_exists
from agent.store import open_store as open_outbox_store
from agent.store.location import Location, is_postgres_url, parse_location, show_location

F = TypeVar("F", bound=Callable[..., Any])

EXIT_OK = 0
EXIT_FAILED = 1
"""Some of the work was refused (invalid events, a failed check, a paused delivery)."""
EXIT_USAGE = 2
"""Bad arguments or configuration."""
EXIT_DATAERR = 65
"""The outbox file is damaged (EX_DATAERR): retrying will not help; see `dodo-outbox doctor`."""
EXIT_TEMPFAIL = 75
"""The outbox is full or locked: try again later (EX_TEMPFAIL)."""

err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)


def config_option(func: F) -> F:
    """`--config PATH` (else $DODO_OUTBOX_CONFIG, else defaults)."""
    return click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="Config file (TOML). Default: $DODO_OUTBOX_CONFIG, else built-in defaults.",
    )(func)


def _as_location(_ctx: click.Context, _param: click.Parameter, value: str | None) -> Location | None:
    return None if value is None else parse_location(value)


def outbox_option(func: F) -> F:
    """`--outbox PATH|URL`, overriding [outbox] path / url: the command gets a Location (or None)."""
    return click.option(
        "--outbox",
        "outbox_path",
        metavar="PATH|URL",
        default=None,
        callback=_as_location,
        help="Outbox: an SQLite file, or a postgresql:// URL (its schema is [outbox] schema). "
        "Default: [outbox] url, else [outbox] path of the config.",
    )(config_option(func))


def create_option(func: F) -> F:
    """`--create`: allow `--outbox PATH` to name a file that does not exist yet."""
    return click.option(
        "--create",
        is_flag=True,
        help="Create the --outbox file (or PostgreSQL schema) if it does not exist (without it, a "
        "missing outbox is an error, so a typo cannot start a new, empty outbox).",
    )(func)


def load_settings(config_path: Path | None) -> Settings:
    """The settings, with every warning of the load (an unknown DODO_OUTBOX_* variable) on stderr."""
    settings = config_module.load(config_path)
    for warning in settings.warnings:
        err.print(f"warning: {warning}", markup=False)
    return settings


def resolve_location(settings: Settings, outbox: Location | None) -> Location:
    """The outbox a command works on: `--outbox` when given, else the configured one."""
    return outbox if outbox is not None else settings.outbox_location


def store_options(settings: Settings) -> StoreOptions:
    """The configured options of the outbox: SQLite's `synchronous`, PostgreSQL's `schema` and
    `prepared_statements`."""
    outbox = settings.outbox
    return StoreOptions(
        synchronous=outbox.synchronous, schema=outbox.schema, prepared_statements=outbox.prepared_statements
    )


def _where(location: Location, settings: Settings) -> str:
    shown = show_location(location)
    return f"{shown} (schema {settings.outbox.schema})" if is_postgres_url(location) else shown


def _is_configured(settings: Settings, location: Location) -> bool:
    configured = settings.outbox_location
    if is_postgres_url(location) or is_postgres_url(configured):
        return location == configured
    return Path(location).absolute() == Path(configured).absolute()


def check_creatable(settings: Settings, location: Location, given: Location | None, create: bool) -> None:
    """A missing outbox may be created only when it is the configured one or `--create` was given.

    Raises ConfigError naming it otherwise: a typo in `--outbox` would start a new, empty outbox that
    no agent drains, and the events written to it would never be delivered. Raises OutboxError when a
    PostgreSQL outbox cannot be reached to check.
    """
    if create or given is None or _is_configured(settings, location):
        return
    if outbox_exists(location, store_options(settings)):
        return
    raise ConfigError(
        f"no outbox at {_where(location, settings)} (--outbox): check it for a typo, or pass --create "
        f"to start a new, empty outbox there (the configured outbox is "
        f"{_where(settings.outbox_location, settings)})"
    )


def open_store(
    config_path: Path | None, outbox_path: Location | None, *, must_exist: bool = True, create: bool = False
) -> OutboxStore:
    """Open the outbox for a read or maintenance command. Raises ConfigError when it is missing
    (`must_exist`), or missing and neither configured nor `create` (see `check_creatable`)."""
    settings = load_settings(config_path)
    location = resolve_location(settings, outbox_path)
    options = store_options(settings)
    if must_exist and not outbox_exists(location, options):
        key = "[outbox] url / schema" if is_postgres_url(location) else "[outbox] path"
        raise ConfigError(
            f"no outbox at {_where(location, settings)}; enqueue an event first, or point --outbox / "
            f"{key} at it"
        )
    check_creatable(settings, location, outbox_path, create)
    return open_outbox_store(location, options)


def open_outbox(
    config_path: Path | None, outbox_path: Location | None, source: str, *, create: bool = False
) -> Outbox:
    """Open the outbox for writing events; a missing outbox follows `check_creatable`."""
    settings = load_settings(config_path)
    location = resolve_location(settings, outbox_path)
    check_creatable(settings, location, outbox_path, create)
    outbox = Outbox(
        location,
        schema=settings.outbox.schema,
        synchronous=settings.outbox.synchronous,
        max_events=settings.outbox.max_events,
        max_bytes=settings.outbox.max_bytes,
        source=source,
        max_event_age=settings.intake.max_event_age,
    )
    outbox.set_checker(build_checker(settings, outbox.store))
    return outbox


def print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=False, default=str))


def human_age(seconds: float | None) -> str:
    """`3h 12m`, `42s`, or `-`."""
    if seconds is None:
        return "-"
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60}s"
    if seconds < 86400:
        return f"{seconds // 3600}h {seconds % 3600 // 60}m"
    return f"{seconds // 86400}d {seconds % 86400 // 3600}h"


def show_progress() -> bool:
    """Progress bars only on a terminal: logs and pipes stay clean."""
    return sys.stderr.isatty()


def counting_bar(label: str, *, disable: bool = False) -> Progress:
    """A `label  ━━━━  12/100  0:00:07` bar on stderr; silent off a terminal or when `disable`."""
    return Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        disable=disable or not show_progress(),
    )
