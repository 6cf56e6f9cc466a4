"""Create (or migrate) the outbox schema in the database of DODO_OUTBOX["database"].

The work is the store's own migration (agent/store/postgres/schema.py, run when the outbox opens), on
the outbox's own connection, not Django's: so the migration is not atomic in Django's sense. A later
dodo-outbox schema version migrates the same way on the next open (by the agent, the library, or a
later migration of this app).
"""

from __future__ import annotations

from django.db import migrations

from agent.contrib.django.config import migrate_schema


class Migration(migrations.Migration):
    atomic = False
    initial = True
    dependencies = ()
    # Reversing does nothing on purpose: dropping the outbox would lose undelivered billing events.
    operations = (migrations.RunPython(migrate_schema, migrations.RunPython.noop, elidable=False),)
