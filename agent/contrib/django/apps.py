"""The Django app `agent.contrib.django` (add it to INSTALLED_APPS for its migration)."""

from __future__ import annotations

from django.apps import AppConfig


class DodoOutboxConfig(AppConfig):
    name = "agent.contrib.django"
    label = "dodo_outbox"
    verbose_name = "Dodo outbox"
