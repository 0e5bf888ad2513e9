"""The statements of every reply, written as SQL.

An ``ai`` worker is one process whose 100 threads share one GIL, so the CPU a
reply costs caps the replies per second (bench/ai_fanout.py). Through the ORM,
compiling these two statements cost more than running them (measured on
PostgreSQL: the claim, a filtered UPDATE, ~450 µs; the inbound message with
its conversation, tenant and channel via select_related ~1,050 µs; the same
statements here ~150-250 µs). Here they are written once per process: the
claim with the read, the history, the reply's INSERT with its two UPDATEs and
the usage rows. On PostgreSQL the claim, its read and the history are one
statement, and so is everything the reply writes (data-modifying WITHs): two
round trips a reply instead of eight, each also a GIL hand-over among the
worker's threads (bench/ai_fanout.py: 7.3 -> 5.9 ms of worker CPU per reply
with three; folding the history into the claim shortened the CPU slot the
claim runs in, 0.61-0.70 -> 0.69-0.80 of ideal in interleaved runs). Rows
come back through the same converters and ``Model.from_db`` the ORM uses, and
values go in through the fields' own ``pre_save`` and adapters, so what is
stored and built is what the ORM would store and build. Portable: PostgreSQL
and SQLite >= 3.35 (RETURNING).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from datetime import datetime
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connection, connections, transaction
from django.db.models import Model

from vocoeng.models import Channel, Tenant
from vocoeng.sql import (
    db_value,
    insert_params,
    insert_plan,
    inserted,
    quote,
    rowcount,
    rows,
)
from vocoeng.sql import row_insert as row_insert  # the reply path's inserts

from .models import AICall, Conversation, Message

# (model, alias in the SELECT), in the order of the row's columns.
_JOINED: tuple[tuple[type[Model], str], ...] = (
    (Message, "m"),
    (Conversation, "c"),
    (Tenant, "t"),
    (Channel, "a"),
)


def _select_from(source: str, where: str, extra: str = "") -> str:
    """The message (read from ``source``, aliased m) with its conversation,
    tenant and channel, ``where`` applied; ``extra`` columns after them."""
    columns = ", ".join(
        f"{alias}.{quote(f.column)}"
        for model, alias in _JOINED
        for f in model._meta.concrete_fields
    )
    if extra:
        columns = f"{columns}, {extra}"
    message, conversation = Message._meta, Conversation._meta

    def pk(model: type[Model]) -> str:
        return quote(model._meta.pk.column)

    def fk(meta: Any, name: str) -> str:
        return quote(meta.get_field(name).column)

    return (
        f"SELECT {columns} FROM {source} m"  # noqa: S608 - our names
        f" JOIN {quote(conversation.db_table)} c"
        f" ON c.{pk(Conversation)} = m.{fk(message, 'conversation')}"
        f" JOIN {quote(Tenant._meta.db_table)} t"
        f" ON t.{pk(Tenant)} = c.{fk(conversation, 'tenant')}"
        f" LEFT JOIN {quote(Channel._meta.db_table)} a"
        f" ON a.{pk(Channel)} = c.{fk(conversation, 'account')}"
        f"{where}"
    )


@functools.cache
def _select_sql(vendor: str) -> str:
    return _select_from(
        quote(Message._meta.db_table), f" WHERE m.{quote(Message._meta.pk.column)} = %s"
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
    conn = connections[DEFAULT_DB_ALIAS]  # not the proxy: see vocoeng.sql
    values = []
    for (col, converters), value in zip(columns, row, strict=True):
        for convert in converters:
            value = convert(value, col, conn)
        values.append(value)
    return model.from_db(conn.alias, names, values)


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
    return None if row is None else _message_from_row(row)


def _message_from_row(row: Sequence[Any]) -> Message:
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


def _claim_params(message_id: Any, now: datetime, stale_before: datetime) -> list:
    return [
        Message.Status.PROCESSING,
        db_value(Message, "processing_started_at", now),
        db_value(Message, "id", message_id),
        Message.Role.USER,
        Message.Status.RECEIVED,
        Message.Status.PROCESSING,
        db_value(Message, "processing_started_at", stale_before),
    ]


@functools.cache
def _claim_read_sql(vendor: str, history_statuses: int) -> str:
    """The claim and its read; with ``history_statuses``, two more columns:
    the history length that applies (the channel's, else the default given)
    and the history (:func:`_history_sql`'s rows, oldest first, as JSON)."""
    extra = ""
    if history_statuses:
        limit = (
            f"COALESCE(a.{quote(Channel._meta.get_field('history_length').column)}, %s)"
        )
        conversation = quote(Message._meta.get_field("conversation").column)
        created, role, content = quote("created_at"), quote("role"), quote("content")
        extra = (
            f"{limit}, (SELECT COALESCE(json_agg(json_build_array(h.{role},"  # noqa: S608 - our names
            f" h.{content}) ORDER BY h.{created}), '[]')"
            f" FROM (SELECT {role}, {content}, {created}"
            f" FROM {quote(Message._meta.db_table)}"
            f" WHERE {conversation} = m.{conversation} AND {created} < m.{created}"
            f" AND {quote('status')} IN ({', '.join(['%s'] * history_statuses)})"
            f" ORDER BY {created} DESC LIMIT {limit}) h)"
        )
    return f"WITH claimed AS ({_claim_sql(vendor)} RETURNING *) " + _select_from(
        "claimed", "", extra
    )


def message_claim_read(
    message_id: Any,
    *,
    now: datetime,
    stale_before: datetime,
    history_statuses: Sequence[str] = (),
    history_length: int = 0,
) -> Message | None:
    """Claim an inbound message and return it as :func:`message_for_reply`
    does (as claimed), or None when it is not claimed.

    Claimed: received, or processing since before ``stale_before`` (a worker
    died mid-call and its claim is older than the hard time limit); it is
    then processing since ``now``. One round trip on PostgreSQL (a
    data-modifying WITH); two elsewhere.

    With ``history_statuses`` (PostgreSQL), the same statement reads the
    conversation's history as :func:`history_rows` would, for the channel's
    history length (``history_length`` when the channel has none), and the
    message carries it as ``history_prefetched``: ``(length, rows)``.
    """
    params = _claim_params(message_id, now, stale_before)
    if connection.vendor != "postgresql":
        if rowcount(_claim_sql(connection.vendor), params) != 1:
            return None
        return message_for_reply(message_id)
    statuses = len(history_statuses)
    if statuses:
        params += [history_length, *history_statuses, history_length]
    with connection.cursor() as cursor:
        cursor.execute(_claim_read_sql(connection.vendor, statuses), params)
        row = cursor.fetchone()
    if row is None:
        return None
    if not statuses:
        return _message_from_row(row)
    message = _message_from_row(row[:-2])
    length, history = row[-2:]
    message.history_prefetched = (length, [tuple(turn) for turn in history])
    return message


@functools.cache
def _history_sql(vendor: str, statuses: int) -> str:
    column = quote(Message._meta.get_field("conversation").column)
    created, status = quote("created_at"), quote("status")
    return (
        f"SELECT {quote('role')}, {quote('content')}"  # noqa: S608 - our names
        f" FROM {quote(Message._meta.db_table)}"
        f" WHERE {column} = %s AND {created} < %s"
        f" AND {status} IN ({', '.join(['%s'] * statuses)})"
        f" ORDER BY {created} DESC LIMIT %s"
    )


def history_rows(
    *, conversation_id: int, before: datetime, statuses: Sequence[str], limit: int
) -> list[tuple[str, str]]:
    """Return (role, content) of the conversation's ``limit`` newest messages
    created before ``before`` with one of ``statuses``, oldest first."""
    found = rows(
        _history_sql(connection.vendor, len(statuses)),
        [
            conversation_id,
            db_value(Message, "created_at", before),
            *statuses,
            limit,
        ],
    )
    found.reverse()
    return found


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
    mark, count = _reply_updates_params(inbound, status, error, text, now)
    with connection.cursor() as cursor:
        cursor.execute(status_only if error is None else with_error, mark)
        cursor.execute(counters, count)


def _reply_updates_params(
    inbound: Message, status: str, error: str | None, text: str, now: datetime
) -> tuple[list[Any], list[Any]]:
    """The values of the mark and counters UPDATEs (``_reply_updates_sql``)."""
    pk = db_value(Message, "id", inbound.pk)
    mark = [status, pk] if error is None else [status, error, pk]
    count = [
        text,
        db_value(Conversation, "last_activity", now),
        inbound.conversation_id,
    ]
    return mark, count


@functools.cache
def _reply_write_sql(vendor: str, with_error: bool, calls: int) -> str:
    reply, _, _ = insert_plan(Message, vendor)
    status_only, error, counters = _reply_updates_sql(vendor)
    parts = [
        f"r AS ({reply})",
        f"s AS ({error if with_error else status_only})",
        f"c AS ({counters})",
    ]
    if calls:
        parts.append(f"a AS ({insert_plan(AICall, vendor, calls)[0]})")
    return f"WITH {', '.join(parts)} SELECT 1"


def reply_write(
    *,
    reply: Message,
    inbound: Message,
    status: str,
    error: str | None,
    now: datetime,
    calls: Sequence[AICall] = (),
) -> None:
    """Store ``reply`` to ``inbound``, mark ``inbound`` with ``status`` (and
    ``error``), count the reply on the conversation and add the usage rows
    ``calls``: all or nothing. A second reply to the same message raises
    IntegrityError (the one-to-one ``reply_to``) and writes nothing.

    On PostgreSQL one statement (data-modifying WITHs, atomic on its own, so
    no BEGIN/COMMIT round trips outside a transaction); elsewhere the same
    rows in a transaction, statement by statement. The numbers the database
    gives the ``calls`` are not read back.
    """
    if connection.vendor != "postgresql":
        with transaction.atomic():
            row_insert(reply)
            reply_recorded(
                inbound=inbound, status=status, error=error, text=reply.content, now=now
            )
            for call in calls:
                row_insert(call)
        return
    _, message_fields, _ = insert_plan(Message, connection.vendor)
    mark, count = _reply_updates_params(inbound, status, error, reply.content, now)
    params = [*insert_params(reply, message_fields), *mark, *count]
    if calls:
        _, call_fields, _ = insert_plan(AICall, connection.vendor)
        for call in calls:
            params += insert_params(call, call_fields)
    sql = _reply_write_sql(connection.vendor, error is not None, len(calls))
    # Nested in a caller's transaction, a savepoint keeps a duplicate's
    # IntegrityError from aborting it.
    with transaction.atomic() if connection.in_atomic_block else nullcontext():
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
    inserted(reply)
    for call in calls:
        inserted(call)
