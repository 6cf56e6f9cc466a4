"""Helpers for the frameworks apps write their transactions with (imported only by such apps).

- `agent.contrib.django`: enqueue on Django's own database connection inside `transaction.atomic()`,
  an installable app whose migration creates the outbox schema.

SQLAlchemy needs no helper: `outbox.enqueue(event, conn=session_or_connection)` unwraps it
(agent/store/caller.py).
"""
