"""Helpers for the hot-path statements written as SQL instead of ORM queries.

``conversations/queries.py`` (the reply path) and ``pipeline/queries.py``
(the steps) write their one-row statements once per process, because
compiling the ORM query cost more CPU than running it; the webhooks insert
their deliveries many rows at a time (``webhooks/handoff.py``). All bind
values the way the ORM does and run on Django's own connection (its
transaction, its ``django.db`` errors), on PostgreSQL and SQLite alike.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connection, connections
from django.db.models import Model
from django.db.models.base import ModelState
from django.db.models.signals import post_init, pre_init


def connection_release() -> None:
    """Give this thread's database connection back (to the pool, or closed).

    For a thread about to wait (a model call, a CPU slot): the next query
    takes a connection again. Kept inside a transaction, on SQLite (no server
    connection to give back) and with persistent connections (CONN_MAX_AGE).
    """
    if (
        connection.vendor != "sqlite"
        and not connection.in_atomic_block
        and not settings.DATABASES["default"].get("CONN_MAX_AGE")
    ):
        connection.close()


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


@functools.lru_cache(maxsize=256)
def insert_plan(
    model: type[Model], vendor: str, count: int = 1
) -> tuple[str, list[Any], bool]:
    """Return (SQL, fields, whether the database numbers the rows) to insert
    ``count`` rows of ``model``; no RETURNING."""
    meta = model._meta
    auto = meta.pk.db_returning  # an AutoField: the database numbers the row
    fields = [f for f in meta.concrete_fields if not (auto and f is meta.pk)]
    row = f"({', '.join(['%s'] * len(fields))})"
    sql = (
        f"INSERT INTO {quote(meta.db_table)}"  # noqa: S608 - our names
        f" ({', '.join(quote(f.column) for f in fields)})"
        f" VALUES {', '.join([row] * count)}"
    )
    return sql, fields, auto


def insert_params(instance: Model, fields: list[Any]) -> list[Any]:
    """The values save() would write for a new ``instance`` (defaults,
    ``auto_now_add``, field adapters)."""
    # The connection itself, not django.db.connection: every attribute read
    # through that proxy is a lookup in the thread's connections (~40 a row).
    conn = connections[DEFAULT_DB_ALIAS]
    return [f.get_db_prep_save(f.pre_save(instance, True), conn) for f in fields]


_IMMUTABLE = (str, int, float, bool, type(None))


@functools.cache
def _defaults(
    model: type[Model],
) -> tuple[tuple[tuple[str, Any, Any], ...], frozenset[str]]:
    """Return each concrete field's (attname, constant default, default maker)
    and the attnames: a default that is None, a string or a number is the
    same object each time (what ``get_default()`` returns for it), kept; any
    other (a callable such as uuid4 or dict, a database default) is made by
    ``get_default()`` for every instance, as __init__ does."""
    fields = []
    for f in model._meta.concrete_fields:
        value = f.get_default()
        constant = (
            not (f.has_default() and callable(f.default))
            and not f.has_db_default()
            and isinstance(value, _IMMUTABLE)
        )
        fields.append((f.attname, value, None if constant else f.get_default))
    return tuple(fields), frozenset(name for name, _, _ in fields)


def instance_new(model: type[Model], **values: Any) -> Model:
    """Return ``model(**values)``, unsaved, without Model.__init__'s cost.

    ``values`` are field attnames (``conversation_id``, not ``conversation``);
    every other field gets its default, as __init__ gives it. ~12 us instead
    of ~21 for a webhook delivery, a third of it its uuid4 (__init__: a
    setattr per field, the init signals, the keyword checks). With a
    receiver of the model's init signals, or a name that is not a field's, it
    is ``model(**values)``.
    """
    fields, names = _defaults(model)
    if (
        pre_init.has_listeners(model)
        or post_init.has_listeners(model)
        or not values.keys() <= names
    ):
        return model(**values)
    instance = model.__new__(model)
    instance._state = ModelState()
    instance.__dict__.update(
        {
            name: values[name]
            if name in values
            else (value if make is None else make())
            for name, value, make in fields
        }
    )
    return instance


def inserted(instance: Model) -> None:
    """Mark ``instance`` as saved, as save() does."""
    instance._state.adding = False
    # django.db.connection is the default database's: its alias, without a
    # lookup through the proxy (~5 us a row, a thread-local per attribute).
    instance._state.db = DEFAULT_DB_ALIAS


def row_insert(instance: Model) -> None:
    """Insert ``instance`` as ``save()`` does for a new row (defaults,
    ``auto_now_add``, field adapters), in one statement compiled once.

    For the models of the hot paths only: no save signals are sent (none are
    connected to them), and a duplicate raises IntegrityError as save() does.
    """
    sql, fields, auto = insert_plan(type(instance), connection.vendor)
    if auto:
        sql += f" RETURNING {quote(instance._meta.pk.column)}"
    with connection.cursor() as cursor:
        cursor.execute(sql, insert_params(instance, fields))
        if auto:
            (instance.pk,) = cursor.fetchone()  # an integer on every backend
    inserted(instance)


def rows_insert(instances: Sequence[Model]) -> None:
    """Insert ``instances`` (one model, primary keys set by the application,
    not numbered by the database) in one statement, as :func:`row_insert`
    inserts one: all of them or, on an error, none."""
    model = type(instances[0])
    sql, fields, auto = insert_plan(model, connection.vendor, len(instances))
    if auto or any(type(i) is not model for i in instances):
        raise TypeError("rows_insert takes rows of one model with their own keys")
    params = [
        value for instance in instances for value in insert_params(instance, fields)
    ]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
    for instance in instances:
        inserted(instance)
