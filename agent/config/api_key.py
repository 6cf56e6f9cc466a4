"""The Dodo API key: where it is read from (a file, a systemd credential, the environment), read
fresh on each call, and a `str` whose repr never shows it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from agent.config.settings import Settings

CREDENTIAL_NAME = "dodo_api_key"
"""The systemd credential name (`LoadCredential=dodo_api_key:...`)."""


class ApiKey(str):
    """The Dodo API key. Its repr never shows it."""

    def __repr__(self) -> str:
        return "ApiKey('***')"


def read_api_key(settings: Settings, environ: Mapping[str, str] | None = None) -> tuple[ApiKey | None, str]:
    """The API key and where it came from, read fresh each call (so a fixed key applies at once).

    Order: `[dodo] api_key_file`, `$CREDENTIALS_DIRECTORY/dodo_api_key` (systemd LoadCredential),
    `DODO_PAYMENTS_API_KEY`. Returns (None, explanation) when none is usable. Never logs the key.
    """
    environ = os.environ if environ is None else environ
    candidates: list[Path] = []
    if settings.dodo.api_key_file:
        candidates.append(Path(settings.dodo.api_key_file))
    if environ.get("CREDENTIALS_DIRECTORY"):
        candidates.append(Path(environ["CREDENTIALS_DIRECTORY"]) / CREDENTIAL_NAME)
    for candidate in candidates:
        try:
            text = candidate.read_text(encoding="utf-8").strip()
        except OSError as exc:
            if candidate == Path(settings.dodo.api_key_file or "\0"):
                return None, f"[dodo] api_key_file {candidate} cannot be read ({exc.strerror})"
            continue
        if text:
            return ApiKey(text), str(candidate)
        return None, f"the key file {candidate} is empty"
    value = environ.get("DODO_PAYMENTS_API_KEY", "").strip()
    if value:
        return ApiKey(value), "DODO_PAYMENTS_API_KEY"
    return None, (
        "no API key: set [dodo] api_key_file, the systemd credential dodo_api_key, or DODO_PAYMENTS_API_KEY"
    )
