"""The settings: one frozen dataclass per config section, their defaults and limits, and
`describe` (the effective settings as plain data for `config check`).

Section and key names are a public contract (users' units and scripts depend on them): add keys,
never rename them. Each field's metadata (`_opt`) tells the loader its range, choices and kind.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.errors import ConfigError
from agent.store.location import Location, mask_url

ENVIRONMENTS = {"test_mode": "https://test.dodopayments.com", "live_mode": "https://live.dodopayments.com"}


def _opt(
    default: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    choices: tuple[str, ...] | None = None,
    secret: bool = False,
    url: bool = False,
    duration: bool = False,
) -> Any:
    meta = {"low": low, "high": high, "choices": choices, "secret": secret, "url": url, "duration": duration}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class DodoSettings:
    environment: str = _opt("test_mode", choices=tuple(ENVIRONMENTS))
    base_url: str = _opt("", url=True)
    api_key_file: str = _opt("")

    @property
    def url(self) -> str:
        """Where events go: base_url when set, otherwise the environment's URL."""
        return (self.base_url or ENVIRONMENTS[self.environment]).rstrip("/")


@dataclass(frozen=True)
class OutboxSettings:
    path: str = _opt("")
    url: str = _opt("")
    """A postgresql:// URL: the outbox on PostgreSQL instead of the SQLite file `path`."""
    schema: str = _opt("dodo_outbox")
    synchronous: str = _opt("full", choices=("full", "normal"))
    max_events: int = _opt(1_000_000, low=1)
    max_bytes: int = _opt(0, low=0)
    delivered_retention_hours: float = _opt(168.0, low=0)
    prepared_statements: bool = _opt(True)
    """PostgreSQL only: false behind a PgBouncer in transaction pooling that does not track them."""


@dataclass(frozen=True)
class DeliverySettings:
    batch_max_events: int = _opt(1000, low=1, high=1000)
    batch_max_bytes: int = _opt(1_000_000, low=1024)
    interval_seconds: float = _opt(1.0, low=0.01)
    idle_interval_max_seconds: float = _opt(5.0, low=0.01)
    """Idle polling backs off from interval_seconds up to this; work or a local enqueue resets it."""
    max_in_flight: int = _opt(2, low=1, high=64)
    requests_per_minute: float = _opt(240.0, low=0)
    burst: int = _opt(40, low=1)
    backoff_initial_seconds: float = _opt(1.0, low=0.001)
    backoff_max_seconds: float = _opt(300.0, low=0.001)
    timeout_seconds: float = _opt(30.0, low=0.1)
    late_events: str = _opt("restamp", choices=("restamp", "dead_letter"))
    late_margin_seconds: float = _opt(300.0, low=0)
    lease_seconds: float = _opt(120.0, low=1)
    auth_retry_seconds: float = _opt(60.0, low=0.01)
    window_seconds: float = _opt(3600.0, low=1)


@dataclass(frozen=True)
class IntakeSettings:
    """`[intake]`: rules every intake applies (library, HTTP, drop directory, CLI)."""

    # Seconds, or a duration string ("24h", "2d"). Older timestamps are refused; restamped at delivery
    # they would be billed in the current period.
    max_event_age: float = _opt(86400.0, low=1, duration=True)


@dataclass(frozen=True)
class HttpIntakeSettings:
    enabled: bool = _opt(True)
    listen: str = _opt("127.0.0.1:8790")
    token: str = _opt("", secret=True)
    max_body_bytes: int = _opt(5_000_000, low=1024)
    read_timeout_seconds: float = _opt(30.0, low=0.1)


@dataclass(frozen=True)
class DropdirSettings:
    enabled: bool = _opt(False)
    path: str = _opt("spool")
    scan_interval_seconds: float = _opt(5.0, low=0.05)
    done_retention_hours: float = _opt(24.0, low=0)


@dataclass(frozen=True)
class LogSettings:
    format: str = _opt("auto", choices=("auto", "json", "console"))
    level: str = _opt("info", choices=("debug", "info", "warning", "error"))


@dataclass(frozen=True)
class MeterCheckSettings:
    enabled: bool = _opt(True)
    strict_meters: bool = _opt(False)
    warn_interval_seconds: float = _opt(60.0, low=0)


METER_AGGREGATIONS = ("count", "sum", "max", "last")


@dataclass(frozen=True)
class MeterSpec:
    """One `[[meters]]` table: a meter known offline (what `GET /meters` would return)."""

    event_name: str
    aggregation: str
    key: str | None = None
    name: str | None = None
    filter: Mapping[str, Any] | None = None
    """The meter's filter in Dodo's shape, already checked (see agent/meters/filters.py)."""


@dataclass(frozen=True)
class Settings:
    dodo: DodoSettings = field(default_factory=DodoSettings)
    outbox: OutboxSettings = field(default_factory=OutboxSettings)
    delivery: DeliverySettings = field(default_factory=DeliverySettings)
    intake: IntakeSettings = field(default_factory=IntakeSettings)
    intake_http: HttpIntakeSettings = field(default_factory=HttpIntakeSettings)
    intake_dropdir: DropdirSettings = field(default_factory=DropdirSettings)
    log: LogSettings = field(default_factory=LogSettings)
    meter_checks: MeterCheckSettings = field(default_factory=MeterCheckSettings)
    meters: tuple[MeterSpec, ...] = ()
    source: str = "defaults"
    warnings: tuple[str, ...] = ()
    """Problems that do not stop the agent (an unknown DODO_OUTBOX_* variable); the CLI prints them."""

    @property
    def outbox_location(self) -> Location:
        """The outbox: the `[outbox] url` (PostgreSQL) when set, else the SQLite file `outbox_path`."""
        return self.outbox.url or self.outbox_path

    @property
    def on_postgres(self) -> bool:
        """Whether the outbox is on PostgreSQL (`[outbox] url` is set)."""
        return bool(self.outbox.url)

    @property
    def outbox_path(self) -> Path:
        """The SQLite outbox file; under systemd's $STATE_DIRECTORY when no path is set.

        Raises ConfigError when `[outbox] url` is set (a PostgreSQL outbox has no file): code that
        works on both backends asks for `outbox_location`.
        """
        if self.outbox.url:
            raise ConfigError(
                "[outbox] url is set, so the outbox is on PostgreSQL and has no file; "
                "this needs an SQLite outbox ([outbox] path)"
            )
        return Path(self.outbox.path) if self.outbox.path else default_outbox_path(os.environ)


SECTIONS: dict[str, str] = {
    "dodo": "dodo",
    "outbox": "outbox",
    "delivery": "delivery",
    "intake": "intake",
    "intake.http": "intake_http",
    "intake.dropdir": "intake_dropdir",
    "log": "log",
    "meter_checks": "meter_checks",
}


def default_outbox_path(environ: Mapping[str, str]) -> Path:
    state = environ.get("STATE_DIRECTORY", "").split(":")[0]
    return Path(state) / "outbox.db" if state else Path("dodo-outbox.db")


def describe(settings: Settings) -> dict[str, dict[str, Any]]:
    """The effective settings as plain data, secrets redacted (for `config check`)."""
    out: dict[str, dict[str, Any]] = {}
    for name, attr in SECTIONS.items():
        section = getattr(settings, attr)
        values: dict[str, Any] = {}
        for f in dataclasses.fields(section):
            value = getattr(section, f.name)
            values[f.name] = "***" if f.metadata.get("secret") and value else value
        out[name] = values
    if settings.outbox.url:
        out["outbox"]["url"] = mask_url(settings.outbox.url)
    else:
        out["outbox"]["path"] = str(settings.outbox_path)
    out["dodo"]["url"] = settings.dodo.url
    return out
