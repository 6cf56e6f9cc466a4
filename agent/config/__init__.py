"""Typed settings from a TOML file plus environment overrides, validated once at start.

    settings.py   one frozen dataclass per section, defaults and limits; `describe`
    loading.py    `load`: the TOML file, `DODO_OUTBOX_*` overrides, every error naming its key
    api_key.py    `read_api_key`: the Dodo key from a file, a systemd credential or the environment

`from agent.config import Settings, load, read_api_key, ...` is the interface; the modules are
its parts.
"""

from __future__ import annotations

from agent.config.api_key import CREDENTIAL_NAME, ApiKey, read_api_key
from agent.config.loading import ENV_PREFIX, OTHER_ENV, environment_names, load, unknown_environment
from agent.config.settings import (
    ENVIRONMENTS,
    METER_AGGREGATIONS,
    SECTIONS,
    DeliverySettings,
    DodoSettings,
    DropdirSettings,
    HttpIntakeSettings,
    IntakeSettings,
    LogSettings,
    MeterCheckSettings,
    MeterSpec,
    OutboxSettings,
    Settings,
    default_outbox_path,
    describe,
)
from agent.errors import ConfigError

__all__ = [
    "CREDENTIAL_NAME",
    "ENVIRONMENTS",
    "ENV_PREFIX",
    "METER_AGGREGATIONS",
    "OTHER_ENV",
    "SECTIONS",
    "ApiKey",
    "ConfigError",
    "DeliverySettings",
    "DodoSettings",
    "DropdirSettings",
    "HttpIntakeSettings",
    "IntakeSettings",
    "LogSettings",
    "MeterCheckSettings",
    "MeterSpec",
    "OutboxSettings",
    "Settings",
    "default_outbox_path",
    "describe",
    "environment_names",
    "load",
    "read_api_key",
    "unknown_environment",
]
