"""Settings: the example file agrees with the model; every error names its key and value."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from agent import config
from agent.errors import ConfigError

EXAMPLE = Path(__file__).parent.parent / "config" / "agent.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_example_documents_every_key_with_its_default() -> None:
    document = tomllib.loads(EXAMPLE.read_text())
    defaults = config.Settings()
    for name, attr in config.SECTIONS.items():
        table = document
        for part in name.split("."):
            table = table[part]
        section = getattr(defaults, attr)
        model_keys = {f.name for f in dataclasses.fields(section)}
        example_keys = {k for k, v in table.items() if not isinstance(v, dict)}
        assert example_keys == model_keys, f"[{name}] differs: {example_keys ^ model_keys}"
        for key in model_keys:
            assert table[key] == getattr(section, key), f"[{name}] {key}: example differs from default"
    assert config.load(EXAMPLE, environ={}).delivery == defaults.delivery


def test_defaults_without_a_file() -> None:
    settings = config.load(None, environ={})
    assert settings.dodo.url == "https://test.dodopayments.com"
    assert settings.outbox_path.name in ("dodo-outbox.db", "outbox.db")
    assert settings.source == "defaults"


def test_environment_and_base_url() -> None:
    settings = config.load(None, environ={"DODO_OUTBOX_DODO_ENVIRONMENT": "live_mode"})
    assert settings.dodo.url == "https://live.dodopayments.com"
    env = {"DODO_OUTBOX_DODO_BASE_URL": "http://127.0.0.1:8791/", "DODO_PAYMENTS_BASE_URL": "http://x"}
    assert config.load(None, environ=env).dodo.url == "http://127.0.0.1:8791"


def test_environment_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, "[delivery]\nbatch_max_events = 10\n[intake.http]\nenabled = true\n")
    env = {
        "DODO_OUTBOX_DELIVERY_BATCH_MAX_EVENTS": "20",
        "DODO_OUTBOX_INTAKE_HTTP_ENABLED": "false",
        "DODO_OUTBOX_INTAKE_HTTP_LISTEN": "unix:/tmp/x.sock",
    }
    settings = config.load(path, environ=env)
    assert settings.delivery.batch_max_events == 20
    assert settings.intake_http.enabled is False
    assert settings.intake_http.listen == "unix:/tmp/x.sock"


def test_config_path_from_environment(tmp_path: Path) -> None:
    path = write(tmp_path, "[outbox]\npath = '/tmp/x.db'\n")
    assert config.load(None, environ={"DODO_OUTBOX_CONFIG": str(path)}).outbox_path == Path("/tmp/x.db")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[delivery]\nbatch_max_events = 1001\n",
            r"\[delivery\] batch_max_events = 1001 is above the maximum 1000",
        ),
        (
            "[delivery]\nbatch_max_events = 'ten'\n",
            r"\[delivery\] batch_max_events = 'ten' must be a whole number",
        ),
        ("[delivery]\nlate_events = 'drop'\n", r"late_events = 'drop' is not one of: restamp, dead_letter"),
        (
            "[delivery]\nbatch_max_event = 5\n",
            r"\[delivery\] batch_max_event: unknown key; did you mean 'batch_max_events'",
        ),
        ("[delivry]\n", r"\[delivry\]: unknown section; did you mean \[delivery\]"),
        ("[dodo]\nenvironment = 'prod'\n", r"environment = 'prod' is not one of: test_mode, live_mode"),
        ("[intake.http]\nenabled = 'yes'\n", r"enabled = 'yes' must be true or false"),
        ("[outbox]\nsynchronous = 'off'\n", r"synchronous = 'off' is not one of: full, normal"),
        (
            "[delivery]\nbackoff_initial_seconds = 10\nbackoff_max_seconds = 5\n",
            "backoff_initial_seconds is larger",
        ),
        ("[delivery\n", "not valid TOML"),
        ("stray = 1\n", "keys belong inside a"),
    ],
)
def test_errors_name_the_key_and_value(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config.load(write(tmp_path, text), environ={})


def test_bad_environment_value_names_the_variable() -> None:
    with pytest.raises(
        ConfigError, match="DODO_OUTBOX_DELIVERY_TIMEOUT_SECONDS = 'soon' is not a valid float"
    ):
        config.load(None, environ={"DODO_OUTBOX_DELIVERY_TIMEOUT_SECONDS": "soon"})


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        config.load("/nonexistent/agent.toml", environ={})


def test_secret_token_is_redacted_in_errors_and_describe(tmp_path: Path) -> None:
    path = write(tmp_path, "[intake.http]\ntoken = 'hunter2'\n")
    described = config.describe(config.load(path, environ={}))
    assert described["intake.http"]["token"] == "***"
    assert "hunter2" not in repr(described)


def test_api_key_sources_in_order(tmp_path: Path) -> None:
    keyfile = tmp_path / "key"
    keyfile.write_text("sk_file\n")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "dodo_api_key").write_text("sk_cred")
    env = {"CREDENTIALS_DIRECTORY": str(creds), "DODO_PAYMENTS_API_KEY": "sk_env"}
    with_file = config.load(write(tmp_path, f"[dodo]\napi_key_file = '{keyfile}'\n"), environ={})
    key, where = config.read_api_key(with_file, env)
    assert (key, where) == ("sk_file", str(keyfile))
    assert "sk_file" not in repr(key)
    plain = config.load(None, environ={})
    assert config.read_api_key(plain, env)[0] == "sk_cred"
    assert config.read_api_key(plain, {"DODO_PAYMENTS_API_KEY": "sk_env"})[0] == "sk_env"
    missing, why = config.read_api_key(plain, {})
    assert missing is None and "DODO_PAYMENTS_API_KEY" in why
    keyfile.unlink()
    missing, why = config.read_api_key(with_file, env)
    assert missing is None and "cannot be read" in why
