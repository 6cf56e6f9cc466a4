"""Loading the settings: a TOML file plus environment overrides, validated once at start.

Every error names the key, the bad value and what is allowed.

Environment overrides: `DODO_OUTBOX_<SECTION>_<KEY>`, with dots in the section written as `_`, e.g.
`DODO_OUTBOX_DELIVERY_BATCH_MAX_EVENTS=500` or `DODO_OUTBOX_INTAKE_HTTP_LISTEN=0.0.0.0:8790`.
The config file path comes from `--config` or `DODO_OUTBOX_CONFIG`.

`DODO_PAYMENTS_BASE_URL` is deliberately NOT read: apps use it to point the official SDK at this
agent, and an agent that shares their environment must not deliver to itself.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from agent.config.settings import (
    METER_AGGREGATIONS,
    SECTIONS,
    MeterSpec,
    Settings,
)
from agent.durations import parse_duration
from agent.errors import ConfigError
from agent.store.location import check_schema_name, is_postgres_url, mask_url

ENV_PREFIX = "DODO_OUTBOX_"
OTHER_ENV = frozenset(
    {
        "DODO_OUTBOX_CONFIG",
        "DODO_OUTBOX_CHAOS",
        "DODO_OUTBOX_CHAOS_SEED",
        "DODO_OUTBOX_TEST_POSTGRES_URL",
        "DODO_OUTBOX_REQUIRE_POSTGRES",
    }
)
"""`DODO_OUTBOX_*` variables that are not settings overrides: the config file path and the test
suite's knobs (tests/reliability/test_chaos.py; the PostgreSQL server of agent/bench/pgcluster.py).
Any other unknown one gets a warning."""


def _coerce(where: str, value: Any, f: dataclasses.Field[Any], from_env: bool) -> Any:
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    meta = f.metadata
    shown = "***" if meta.get("secret") else repr(value)
    if meta.get("duration") and isinstance(value, str):
        try:  # a number of seconds (from the environment, or quoted), or a duration string
            value = float(value)
            if not math.isfinite(value):
                raise ConfigError(f"{where} = {shown} must be a finite number of seconds")
        except ValueError:
            try:
                value = parse_duration(value)
            except ValueError:
                raise ConfigError(
                    f'{where} = {shown} is not a duration; give seconds (86400) or e.g. "24h", "2d"'
                ) from None
    elif from_env:
        text = str(value).strip()
        try:
            if kind == "bool":
                if text.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                    raise ValueError
                value = text.lower() in ("1", "true", "yes", "on")
            elif kind == "int":
                value = int(text)
            elif kind == "float":
                value = float(text)
        except ValueError:
            raise ConfigError(f"{where} = {shown} is not a valid {kind}") from None
    if kind == "bool" and not isinstance(value, bool):
        raise ConfigError(f"{where} = {shown} must be true or false")
    if kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{where} = {shown} must be a whole number")
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where} = {shown} must be a number")
        value = float(value)
    if kind == "str" and not isinstance(value, str):
        raise ConfigError(f"{where} = {shown} must be a string (in quotes)")
    if meta.get("choices") and value not in meta["choices"]:
        raise ConfigError(f"{where} = {shown} is not one of: {', '.join(meta['choices'])}")
    if meta.get("low") is not None and value < meta["low"]:
        raise ConfigError(f"{where} = {shown} is below the minimum {meta['low']}")
    if meta.get("high") is not None and value > meta["high"]:
        raise ConfigError(f"{where} = {shown} is above the maximum {meta['high']}")
    if meta.get("url") and value:
        _check_url(where, value)
    return value


def _check_url(where: str, value: str) -> None:
    """An http(s) URL with a host, or ConfigError: without a scheme every request fails forever."""
    try:
        parts = urlsplit(value.strip())
        scheme, host = parts.scheme.lower(), parts.hostname
        _ = parts.port  # raises ValueError for a port that is not a number
    except ValueError:
        scheme, host = "", None
    if scheme not in ("http", "https") or not host:
        raise ConfigError(
            f"{where} = {value!r} is not an http:// or https:// URL with a host; write it in full, "
            "e.g. http://127.0.0.1:8791 (a local emulator) or https://test.dodopayments.com"
        )


def _section(name: str, cls: type[Any], table: Mapping[str, Any], environ: Mapping[str, str]) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in table:
        if key not in fields:
            hint = difflib.get_close_matches(key, fields, n=1)
            also = f"; did you mean {hint[0]!r}?" if hint else f"; known keys: {', '.join(fields)}"
            raise ConfigError(f"[{name}] {key}: unknown key{also}")
    values: dict[str, Any] = {}
    for key, f in fields.items():
        env_name = ENV_PREFIX + f"{name}_{key}".replace(".", "_").upper()
        if env_name in environ:
            values[key] = _coerce(env_name, environ[env_name], f, True)
        elif key in table:
            values[key] = _coerce(f"[{name}] {key}", table[key], f, False)
    return cls(**values)


def load(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read settings from `path` (or $DODO_OUTBOX_CONFIG, or defaults) and the environment.

    Raises ConfigError naming the key and value at the first problem found.
    """
    environ = os.environ if environ is None else environ
    chosen = path or environ.get("DODO_OUTBOX_CONFIG") or None
    document: dict[str, Any] = {}
    if chosen:
        try:
            document = tomllib.loads(Path(chosen).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(
                f"config file {chosen} does not exist; pass --config PATH or unset DODO_OUTBOX_CONFIG"
            ) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read config file {chosen}: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {chosen} is not valid TOML: {exc}") from None
    # `[[meters]]` is an array of tables, not a section: read it on its own.
    meters = _meters(document.pop("meters", None))
    tables = _flatten(document)
    for name in tables:
        if name not in SECTIONS:
            hint = difflib.get_close_matches(name, SECTIONS, n=1)
            also = f"; did you mean [{hint[0]}]?" if hint else f"; sections: {', '.join(SECTIONS)}"
            raise ConfigError(f"[{name}]: unknown section{also}")
    parts = {
        attr: _section(name, type(getattr(Settings(), attr)), tables.get(name, {}), environ)
        for name, attr in SECTIONS.items()
    }
    settings = Settings(
        **parts,
        meters=meters,
        source=str(chosen) if chosen else "defaults",
        warnings=unknown_environment(environ),
    )
    _check_outbox(settings)
    if settings.delivery.backoff_initial_seconds > settings.delivery.backoff_max_seconds:
        raise ConfigError(
            "[delivery] backoff_initial_seconds is larger than backoff_max_seconds; make it smaller"
        )
    return settings


def _check_outbox(settings: Settings) -> None:
    """`[outbox] url` and `path` name two different outboxes: exactly one may be set."""
    outbox = settings.outbox
    if outbox.url and outbox.path:
        raise ConfigError(
            "[outbox] path and [outbox] url are both set (path names an SQLite file, url a PostgreSQL "
            "database; environment DODO_OUTBOX_OUTBOX_PATH / DODO_OUTBOX_OUTBOX_URL); set only one"
        )
    if outbox.url and not is_postgres_url(outbox.url):
        raise ConfigError(
            f"[outbox] url = {mask_url(outbox.url)!r} is not a postgresql:// URL; "
            "e.g. postgresql://user@host:5432/db (an SQLite file goes in [outbox] path)"
        )
    check_schema_name(outbox.schema)


def environment_names() -> set[str]:
    """Every `DODO_OUTBOX_*` variable the agent reads: one override per key, plus OTHER_ENV."""
    names = set(OTHER_ENV)
    for name, attr in SECTIONS.items():
        for f in dataclasses.fields(type(getattr(Settings(), attr))):
            names.add(ENV_PREFIX + f"{name}_{f.name}".replace(".", "_").upper())
    return names


def unknown_environment(environ: Mapping[str, str]) -> tuple[str, ...]:
    """A warning for each `DODO_OUTBOX_*` variable nothing reads (a typo would silently do nothing)."""
    known = environment_names()
    # Compare without the shared prefix, or every name would look close to every other.
    suffixes = {name.removeprefix(ENV_PREFIX): name for name in known}
    found: list[str] = []
    for variable in sorted(environ):
        if not variable.startswith(ENV_PREFIX) or variable in known:
            continue
        hint = difflib.get_close_matches(variable.removeprefix(ENV_PREFIX), suffixes, n=1)
        also = (
            f"; did you mean {suffixes[hint[0]]}?"
            if hint
            else "; overrides are named DODO_OUTBOX_<SECTION>_<KEY>, e.g. DODO_OUTBOX_INTAKE_HTTP_LISTEN"
        )
        found.append(f"environment variable {variable}: unknown, it is ignored{also}")
    return tuple(found)


def _meters(value: Any) -> tuple[MeterSpec, ...]:
    """The `[[meters]]` array of tables. Raises ConfigError naming the meter (#1 is the first) and key."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ConfigError(
            "meters must be an array of tables: write each meter as [[meters]] with event_name, "
            "aggregation and key"
        )
    fields = {f.name for f in dataclasses.fields(MeterSpec)}
    specs: list[MeterSpec] = []
    for index, item in enumerate(value):
        where = f"[[meters]] #{index + 1}"
        if not isinstance(item, dict):
            raise ConfigError(f"{where}: must be a table with event_name, aggregation and key")
        for key in item:
            if key not in fields:
                hint = difflib.get_close_matches(key, fields, n=1)
                known = ", ".join(sorted(fields))
                also = f"; did you mean {hint[0]!r}?" if hint else f"; known keys: {known}"
                raise ConfigError(f"{where} {key}: unknown key{also}")
        for key in fields - {"filter"}:
            if key in item and not isinstance(item[key], str):
                raise ConfigError(f"{where} {key} = {item[key]!r} must be a string (in quotes)")
        if not item.get("event_name"):
            raise ConfigError(f"{where} event_name: required, the meter's event name (case-sensitive)")
        aggregation = item.get("aggregation")
        if aggregation not in METER_AGGREGATIONS:
            shown = "missing" if aggregation is None else f"= {aggregation!r}"
            raise ConfigError(f"{where} aggregation {shown}: use one of {', '.join(METER_AGGREGATIONS)}")
        if aggregation != "count" and not item.get("key"):
            raise ConfigError(
                f"{where} key: required for aggregation {aggregation!r}, the metadata key it aggregates"
            )
        if item.get("name"):
            where += f" ({item['name']})"
        specs.append(
            MeterSpec(
                item["event_name"],
                aggregation,
                item.get("key") or None,
                item.get("name"),
                _filter(item, where),
            )
        )
    return tuple(specs)


def _filter(item: Mapping[str, Any], where: str) -> Mapping[str, Any] | None:
    """A meter's `[meters.filter]`, checked in Dodo's shape. Raises ConfigError naming meter and path."""
    if "filter" not in item:
        return None
    # Imported here: agent.meters imports this module (its meters come from the config).
    from agent.meters.filters import FilterError, filter_to_json, parse_filter

    try:
        return filter_to_json(parse_filter(item["filter"]))
    except FilterError as exc:
        raise ConfigError(f"{where} {exc}") from None


def _flatten(document: Mapping[str, Any], prefix: str = "") -> dict[str, dict[str, Any]]:
    """`{"intake": {"http": {...}}}` → `{"intake.http": {...}}`; plain values stay in their table."""
    tables: dict[str, dict[str, Any]] = {}
    for key, value in document.items():
        name = f"{prefix}{key}"
        if not isinstance(value, dict):
            raise ConfigError(f"{name} = {value!r}: keys belong inside a [section]")
        nested = {k: v for k, v in value.items() if isinstance(v, dict) and f"{name}.{k}" in SECTIONS}
        plain = {k: v for k, v in value.items() if k not in nested}
        if plain or name in SECTIONS or not nested:
            tables[name] = plain
        tables.update(_flatten(nested, f"{name}."))
    return tables
