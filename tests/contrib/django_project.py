"""A Django project without files: settings for the test server, configured once per test process.

Nothing else in the suite uses Django, so the process-wide `settings.configure` is ours; each test
sets its own DODO_OUTBOX (a fresh schema) with `override_settings`.
"""

from __future__ import annotations

from typing import Any

LITE = "lite"
"""A second database, SQLite, which the outbox must refuse."""


def databases(postgres_url: str) -> dict[str, dict[str, Any]]:
    """DATABASES for the test server's URL (host may be a unix-socket directory), plus LITE."""
    from psycopg.conninfo import conninfo_to_dict

    parts = conninfo_to_dict(postgres_url)
    default = {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": parts.get("dbname", "postgres"),
        "USER": parts.get("user", ""),
        "PASSWORD": parts.get("password", ""),
        "HOST": parts.get("host", ""),
        "PORT": str(parts.get("port", "")),
    }
    return {"default": default, LITE: {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}


def configure(postgres_url: str, **extra: Any) -> None:
    """Configure Django for the test server (once per process) and load its apps."""
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(
            DATABASES=databases(postgres_url),
            INSTALLED_APPS=["agent.contrib.django"],
            USE_TZ=True,
            **extra,
        )
        django.setup()
