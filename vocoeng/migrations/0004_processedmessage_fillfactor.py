"""Leave room in each page of the bridge's dedup claims for their update.

Every claim row is inserted ``pending`` and updated to ``done`` moments later.
With half of each page kept free, that update is a heap-only (HOT) one on
PostgreSQL: the new row version stays on its page and no index is touched.
Other databases have no fillfactor; nothing to do there.
"""

from django.db import migrations


def fillfactor(value: int):
    def apply(apps, schema_editor):
        if schema_editor.connection.vendor != "postgresql":
            return
        table = schema_editor.quote_name("vocoeng_processedmessage")
        schema_editor.execute(f"ALTER TABLE {table} SET (fillfactor = {value})")

    return apply


class Migration(migrations.Migration):
    dependencies = [
        ("vocoeng", "0003_tenant_budget_channel"),
    ]

    operations = [
        migrations.RunPython(fillfactor(50), fillfactor(100)),
    ]
