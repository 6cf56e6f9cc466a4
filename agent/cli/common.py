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
from agent.store import OutboxStore, StoreOptions
from agent.store import open_store as open_outbox_store

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


def outbox_option(func: F) -> F:
    """`--outbox PATH`, overriding [outbox] path."""
    return click.option(
        "--outbox",
        "outbox_path",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="Outbox file. Default: [outbox] path of the config.",
    )(config_option(func))


def create_option(func: F) -> F:
    """`--create`: allow `--outbox PATH` to name a file that does not exist yet."""
    return click.option(
        "--create",
        is_flag=True,
        help="Create the --outbox file if it does not exist (without it, a missing file is an error, "
        "so a typo in the path cannot start a new, empty outbox).",
    )(func)


def load_settings(config_path: Path | None) -> Settings:
    """The settings, with every warning of the load (an unknown DODO_OUTBOX_* variable) on stderr."""
    settings = config_module.load(config_path)
    for warning in settings.warnings:
        err.print(f"warning: {warning}", markup=False)
    return settings


def resolve_outbox_path(settings: Settings, outbox_path: Path | None) -> Path:
    return outbox_path or settings.outbox_path


def check_creatable(settings: Settings, path: Path, outbox_path: Path | None, create: bool) -> None:
    """A missing outbox may be created only when it is the configured one or `--create` was given.

    Raises ConfigError naming the path otherwise: a typo in `--outbox` would start a new, empty
    outbox that no agent drains, and the events written to it would never be delivered.
    """
    if create or outbox_path is None or path.exists():
        return
    if path.absolute() == settings.outbox_path.absolute():
        return
    raise ConfigError(
        f"no outbox at {path} (--outbox): check the path for a typo, or pass --create to start a "
        f"new, empty outbox there (the configured outbox is {settings.outbox_path})"
    )


def open_store(
    config_path: Path | None, outbox_path: Path | None, *, must_exist: bool = True, create: bool = False
) -> OutboxStore:
    """Open the outbox for a read or maintenance command. Raises ConfigError when it is missing
    (`must_exist`), or missing and neither configured nor `create` (see `check_creatable`)."""
    settings = load_settings(config_path)
    path = resolve_outbox_path(settings, outbox_path)
    if must_exist and not path.exists():
        raise ConfigError(
            f"no outbox at {path}; enqueue an event first, or point --outbox / [outbox] path at it"
        )
    check_creatable(settings, path, outbox_path, create)
    options = StoreOptions(
        synchronous=settings.outbox.synchronous, prepared_statements=settings.outbox.prepared_statements
    )
    return open_outbox_store(path, options)


def open_outbox(
    config_path: Path | None, outbox_path: Path | None, source: str, *, create: bool = False
) -> Outbox:
    """Open the outbox for writing events; a missing file follows `check_creatable`."""
    settings = load_settings(config_path)
    path = resolve_outbox_path(settings, outbox_path)
    check_creatable(settings, path, outbox_path, create)
    outbox = Outbox(
        path,
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
