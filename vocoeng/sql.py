"""Helpers for the hot-path statements written as SQL instead of ORM queries.

``conversations/queries.py`` (the reply path) and ``pipeline/queries.py``
(the steps) write their one-row statements once per process, because
compiling the ORM query cost more CPU than running it. Both bind values the
way the ORM does and run on Django's own connection (its transaction, its
``django.db`` errors), on PostgreSQL and SQLite alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.db import connection
from django.db.models import Model


def quote(name: str) -> str:
    """Return the database's quoting of a table or column name."""
    return connection.ops.quote_name(name)


def db_value(model: type[Model], name: str, value: Any) -> Any:
    """Return ``value`` as the database takes it for ``model.name``."""
    return model._meta.get_field(name).get_db_prep_save(value, connection)


def rows(sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
    """Run ``sql``; return its rows."""
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def rowcount(sql: str, params: Sequence[Any]) -> int:
    """Run ``sql``; return how many rows it changed."""
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount
