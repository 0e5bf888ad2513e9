"""The PostgreSQL connection settings do what settings.py says they do."""

from __future__ import annotations

import pytest
from django.db import connection

from vocoeng.models import Tenant

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.skipif(
        connection.vendor != "postgresql", reason="PostgreSQL connection settings"
    ),
]


def test_a_statement_run_again_is_prepared_on_the_server() -> None:
    # DB_PREPARED_STATEMENTS (default on): the server binds the values, psycopg
    # prepares a statement its connection has run 5 times, and PostgreSQL no
    # longer parses and plans it on every run.
    for n in range(6):
        list(Tenant.objects.filter(slug=f"prepared-{n}"))
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        prepared = [statement for (statement,) in cursor.fetchall()]
    assert any(
        "vocoeng_tenant" in statement and "$1" in statement for statement in prepared
    ), prepared
