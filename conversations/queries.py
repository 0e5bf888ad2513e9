"""The statements of every reply, written as SQL.

An ``ai`` worker is one process whose 100 threads share one GIL, so the CPU a
reply costs caps the replies per second (bench/ai_fanout.py). Through the ORM,
compiling these two statements cost more than running them (measured on
PostgreSQL: the claim, a filtered UPDATE, ~450 µs; the inbound message with
its conversation, tenant and channel via select_related ~1,050 µs; the same
statements here ~150-250 µs). Here they are written once per process: the
claim, the read, the reply's INSERT and its two UPDATEs, the usage row. Rows
come back through the same converters and ``Model.from_db`` the ORM uses, and
values go in through the fields' own ``pre_save`` and adapters, so what is
stored and built is what the ORM would store and build. Portable: PostgreSQL
and SQLite >= 3.35 (RETURNING).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from django.db import connection
from django.db.models import Model

from vocoeng.models import Channel, Tenant
from vocoeng.sql import db_value, quote, rowcount
from vocoeng.sql import row_insert as row_insert  # the reply path's inserts

from .models import Conversation, Message

# (model, alias in the SELECT), in the order of the row's columns.
_JOINED: tuple[tuple[type[Model], str], ...] = (
    (Message, "m"),
    (Conversation, "c"),
    (Tenant, "t"),
    (Channel, "a"),
)


@functools.cache
def _select_sql(vendor: str) -> str:
    columns = ", ".join(
        f"{alias}.{quote(f.column)}"
        for model, alias in _JOINED
        for f in model._meta.concrete_fields
    )
    message, conversation = Message._meta, Conversation._meta

    def pk(model: type[Model]) -> str:
        return quote(model._meta.pk.column)

    def fk(meta: Any, name: str) -> str:
        return quote(meta.get_field(name).column)

    return (
        f"SELECT {columns} FROM {quote(message.db_table)} m"  # noqa: S608 - our names
        f" JOIN {quote(conversation.db_table)} c"
        f" ON c.{pk(Conversation)} = m.{fk(message, 'conversation')}"
        f" JOIN {quote(Tenant._meta.db_table)} t"
        f" ON t.{pk(Tenant)} = c.{fk(conversation, 'tenant')}"
        f" LEFT JOIN {quote(Channel._meta.db_table)} a"
        f" ON a.{pk(Channel)} = c.{fk(conversation, 'account')}"
        f" WHERE m.{pk(Message)} = %s"
    )


# Per column: the expression the converters are given, and the converters.
_Column = tuple[Any, list[Callable]]


@functools.cache
def _loaders(vendor: str) -> list[tuple[type[Model], list[str], list[_Column]]]:
    """Per joined model: its attnames and each column's converters.

    The converters are the ones the ORM's compiler applies: the backend's
    (e.g. SQLite's text to datetime / UUID / Decimal) then the field's own
    ``from_db_value`` (JSON, encrypted secrets).
    """
    loaders = []
    for model, _alias in _JOINED:
        names, columns = [], []
        for f in model._meta.concrete_fields:
            col = f.get_col(model._meta.db_table)
            names.append(f.attname)
            converters = [
                *connection.ops.get_db_converters(col),
                *col.get_db_converters(connection),
            ]
            columns.append((col, converters))
        loaders.append((model, names, columns))
    return loaders


def _build(
    model: type[Model], names: list[str], columns: list[_Column], row: Any
) -> Any:
    values = []
    for (col, converters), value in zip(columns, row, strict=True):
        for convert in converters:
            value = convert(value, col, connection)
        values.append(value)
    return model.from_db(connection.alias, names, values)


@functools.cache
def _channel_pk_index() -> int:
    return Channel._meta.concrete_fields.index(Channel._meta.pk)


def message_for_reply(message_id: Any) -> Message | None:
    """Return the message with its conversation, tenant and channel loaded.

    One statement: what ``Message.objects.select_related("conversation__tenant",
    "conversation__account").get(pk=message_id)`` reads. None when missing.
    """
    with connection.cursor() as cursor:
        cursor.execute(
            _select_sql(connection.vendor), [db_value(Message, "id", message_id)]
        )
        row = cursor.fetchone()
    if row is None:
        return None
    instances = []
    start = 0
    for model, names, columns in _loaders(connection.vendor):
        end = start + len(names)
        part: Sequence[Any] = row[start:end]
        start = end
        if model is Channel and part[_channel_pk_index()] is None:  # LEFT JOIN
            instances.append(None)
            continue
        instances.append(_build(model, names, columns, part))
    message, conversation, tenant, account = instances
    conversation.tenant = tenant
    conversation.account = account
    message.conversation = conversation
    return message


@functools.cache
def _claim_sql(vendor: str) -> str:
    status, started = quote("status"), quote("processing_started_at")
    return (
        f"UPDATE {quote(Message._meta.db_table)} SET {status} = %s, {started} = %s"  # noqa: S608 - our names
        f" WHERE {quote(Message._meta.pk.column)} = %s AND {quote('role')} = %s"
        f" AND ({status} = %s OR ({status} = %s AND {started} < %s))"
    )


def message_claim(message_id: Any, *, now: datetime, stale_before: datetime) -> bool:
    """Claim an inbound message: received, or processing since before
    ``stale_before``; set it processing since ``now``. True when claimed."""
    params = [
        Message.Status.PROCESSING,
        db_value(Message, "processing_started_at", now),
        db_value(Message, "id", message_id),
        Message.Role.USER,
        Message.Status.RECEIVED,
        Message.Status.PROCESSING,
        db_value(Message, "processing_started_at", stale_before),
    ]
    return rowcount(_claim_sql(connection.vendor), params) == 1


@functools.cache
def _reply_updates_sql(vendor: str) -> tuple[str, str, str]:
    message, conversation = Message._meta.db_table, Conversation._meta.db_table
    count = quote("message_count")
    return (
        f"UPDATE {quote(message)} SET {quote('status')} = %s"  # noqa: S608 - our names
        f" WHERE {quote(Message._meta.pk.column)} = %s",
        f"UPDATE {quote(message)} SET {quote('status')} = %s, {quote('error')} = %s"  # noqa: S608
        f" WHERE {quote(Message._meta.pk.column)} = %s",
        f"UPDATE {quote(conversation)} SET {count} = {count} + 1,"  # noqa: S608
        f" {quote('last_response')} = %s, {quote('last_activity')} = %s"
        f" WHERE {quote(Conversation._meta.pk.column)} = %s",
    )


def reply_recorded(
    *, inbound: Message, status: str, error: str | None, text: str, now: datetime
) -> None:
    """Mark ``inbound`` with ``status`` (and ``error``) and count the reply
    ``text`` on its conversation: the two UPDATEs that follow a stored reply."""
    status_only, with_error, counters = _reply_updates_sql(connection.vendor)
    pk = db_value(Message, "id", inbound.pk)
    with connection.cursor() as cursor:
        if error is None:
            cursor.execute(status_only, [status, pk])
        else:
            cursor.execute(with_error, [status, error, pk])
        cursor.execute(
            counters,
            [
                text,
                db_value(Conversation, "last_activity", now),
                inbound.conversation_id,
            ],
        )
