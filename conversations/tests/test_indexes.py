"""The message table's indexes: each costs every stored message, so none is
redundant, and the reads by conversation still have theirs."""

from __future__ import annotations

import pytest
from django.db import connection

pytestmark = pytest.mark.django_db


def _index_columns(table: str) -> list[tuple[str, ...]]:
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, table)
    return [tuple(c["columns"]) for c in constraints.values() if c["index"]]


def test_reads_by_conversation_have_one_index_and_status_one() -> None:
    columns = _index_columns("conversations_message")

    # history, rate limits, the API and cascades: conversation, then time
    assert ("conversation_id", "created_at") in columns
    assert ("conversation_id",) not in columns  # the composite serves it
    # one plain index on status (db_index adds a LIKE twin on PostgreSQL)
    assert columns.count(("status",)) == 1


@pytest.mark.skipif(
    connection.vendor != "postgresql",
    reason="fillfactor is a PostgreSQL storage parameter; SQLite has none "
    "(the migration does nothing there)",
)
def test_dedup_claims_leave_room_for_their_update_in_each_page() -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT reloptions FROM pg_class WHERE relname = %s",
            ["vocoeng_processedmessage"],
        )
        (options,) = cursor.fetchone()
    assert "fillfactor=50" in options
