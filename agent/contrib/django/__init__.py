"""Enqueue usage events in Django's own transaction: the event commits or rolls back with the view's writes.

    from django.db import transaction
    from agent.contrib.django import enqueue

    with transaction.atomic():
        order = Order.objects.create(...)
        enqueue({"event_id": f"order-{order.pk}", "customer_id": ..., "event_name": "order.placed"})

Settings: DODO_OUTBOX (agent/contrib/django/config.py). Add "agent.contrib.django" to INSTALLED_APPS
for its migration, which creates the outbox schema (`manage.py migrate`); the outbox also creates it
when it first opens. Refuses outside `transaction.atomic()` (Django autocommits there, so the event
would be part of no transaction) and on a database that is not PostgreSQL on psycopg 3.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from django.db.transaction import TransactionManagementError

from agent.contrib.django.config import close, driver_connection, get_outbox, wrapper
from agent.outbox import EnqueueResult


def enqueue(
    event: Mapping[str, Any], *, using: str | None = None, source: str | None = None
) -> EnqueueResult:
    """`Outbox.enqueue(event, conn=...)` on Django's connection, inside the open `transaction.atomic()`.

    Raises TransactionManagementError outside an atomic block (or in one that must roll back),
    ConfigError for settings that cannot work, and what Outbox.enqueue raises (InvalidEventError,
    EventConflictError: roll the atomic block back, e.g. by letting the error leave it).
    """
    conn = _in_atomic(using)  # refused before the outbox is opened
    return get_outbox(using).enqueue(event, conn=conn, source=source)


def enqueue_many(
    events: Iterable[Mapping[str, Any]], *, using: str | None = None, source: str | None = None
) -> EnqueueResult:
    """`Outbox.enqueue_many(events, conn=...)` on Django's connection: all or none, with the block."""
    conn = _in_atomic(using)
    return get_outbox(using).enqueue_many(events, conn=conn, source=source)


def _in_atomic(using: str | None) -> Any:
    connection = wrapper(using)
    if not connection.in_atomic_block:
        raise TransactionManagementError(
            f"agent.contrib.django.enqueue was called outside transaction.atomic() on database "
            f"{connection.alias!r}: Django autocommits there, so the event would be committed on its own, "
            "part of no transaction. Call it inside `with transaction.atomic():`, with the writes it "
            "belongs to"
        )
    connection.validate_no_broken_transaction()  # Django's own refusal after an error in the block
    return driver_connection(connection)


__all__ = ["close", "enqueue", "enqueue_many", "get_outbox"]
