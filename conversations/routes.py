"""Route an inbound chat message (kind ``chat_message``) to the reply chain."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from decimal import Decimal
from functools import cache
from typing import Any

from celery.canvas import Signature, _chain
from django.db import IntegrityError, connection, transaction
from django.db.models.base import ModelState
from django.db.models.signals import post_init, pre_init
from django.utils import timezone
from rest_framework.exceptions import ValidationError

from vocoeng import pg_bulk
from vocoeng.api import errors_text
from vocoeng.celery import app
from vocoeng.ids import uuid7_many
from vocoeng.models import Channel, Tenant
from vocoeng.routing import PermanentMessageError
from vocoeng.services import tenant_get_default

from .models import Conversation, Message
from .serializers import SOURCES, InboundMessageSerializer
from .services import message_needs_reply, message_receive


def inbound_validate(data: Any) -> dict[str, Any]:
    """Return the validated inbound message or raise a permanent error."""
    if not isinstance(data, dict):
        raise PermanentMessageError("a chat message must be a JSON object")
    serializer = InboundMessageSerializer(data=data)
    if not serializer.is_valid():
        raise PermanentMessageError(errors_text(serializer.errors))
    return dict(serializer.validated_data)


def inbound_store(
    *, data: Any, tenant: Tenant | None = None, account: Channel | None = None
) -> tuple[Message, bool]:
    """Validate and store an inbound chat message, once per message_id."""
    valid = inbound_validate(data)
    return message_receive(
        account=account,
        tenant=tenant or tenant_get_default(),
        channel=valid["source"],
        user_id=valid["user_id"],
        text=valid["message"],
        external_id=valid.get("message_id") or f"gen-{uuid.uuid4()}",
        timestamp=valid.get("timestamp"),
        metadata=valid.get("metadata") or {},
    )


@cache
def _reply_task_names() -> tuple[str, str, str]:
    from .tasks import reply_deliver, reply_generate, reply_publish

    return reply_generate.name, reply_publish.name, reply_deliver.name


def reply_chain(message: Message) -> Signature:
    """Build the reply chain for a stored inbound message."""
    generate, publish, deliver = _reply_task_names()
    # What reply_generate.si(pk) | reply_publish.s() | reply_deliver.s()
    # makes, built by task name and filled in as dicts: chain() clones each
    # step as it folds them, .s() binds each to its task object, and the
    # constructors check and copy what is fixed here (11 -> 3 µs a chain,
    # measured; a test checks it publishes apply_async's message).
    return _chain_of(
        _step(generate, (str(message.pk),), immutable=True),
        _step(publish),
        _step(deliver),
    )


def _step(task: str, args: tuple = (), *, immutable: bool = False) -> Signature:
    """Return ``Signature(task, args, immutable=immutable, app=app)``."""
    step = Signature.__new__(Signature)
    step._app = app
    dict.__init__(
        step,
        task=task,
        args=args,
        kwargs={},
        options={},
        subtask_type=None,
        immutable=immutable,
    )
    return step


def _chain_of(*steps: Signature) -> _chain:
    """Return ``_chain(*steps)``: the steps as they are, no options."""
    chain = _chain.__new__(_chain)
    chain._app = None
    chain._use_link = None
    chain._frozen = None
    dict.__init__(
        chain,
        task="celery.chain",
        args=(),
        kwargs={"tasks": steps},
        options={},
        subtask_type="chain",
        immutable=False,
    )
    return chain


def _account(attributes: dict[str, str], tenant: Tenant | None) -> Channel | None:
    """Return the channel named by the ``channel_id`` attribute, if any."""
    channel_id = attributes.get("channel_id")
    if not channel_id:
        return None
    if not str(channel_id).isdigit():
        raise PermanentMessageError(f"channel_id {channel_id!r} is not a number")
    found = Channel.objects.select_related("tenant").filter(pk=int(channel_id))
    if tenant is not None:
        found = found.filter(tenant=tenant)
    account = found.first()
    if account is None:
        raise PermanentMessageError(f"unknown channel_id {channel_id!r}")
    return account


def chat_message(*, data: Any, attributes: dict[str, str]) -> Signature | None:
    """Store the message and return its reply chain; None for a duplicate."""
    tenant = None
    if slug := attributes.get("tenant"):
        tenant = Tenant.objects.filter(slug=slug).first()
        if tenant is None:
            raise PermanentMessageError(f"unknown tenant {slug!r}")
    account = _account(attributes, tenant)
    if account is not None:
        tenant = account.tenant
    message, _created = inbound_store(data=data, tenant=tenant, account=account)
    if not message_needs_reply(message):
        return None
    return reply_chain(message)


def _validate_with(serializer: InboundMessageSerializer, data: Any) -> dict[str, Any]:
    """Do what inbound_validate does, reusing one serializer for a batch."""
    if not isinstance(data, dict):
        raise PermanentMessageError("a chat message must be a JSON object")
    if (valid := _valid_plain(data)) is not None:
        return valid
    try:
        return dict(serializer.run_validation(data))
    except ValidationError as exc:
        detail = exc.detail
        raise PermanentMessageError(
            errors_text(detail) if isinstance(detail, dict) else str(detail)
        ) from exc


# The fields of the usual bus message and their max_length in the serializer.
_PLAIN_FIELDS = {"user_id": 128, "message": 8192, "message_id": 255}
_PLAIN_KEYS = frozenset({"source", *_PLAIN_FIELDS})


def _valid_plain(data: dict[str, Any]) -> dict[str, Any] | None:
    """Return what InboundMessageSerializer returns for ``data``, when it is plain.

    Plain: only source, user_id, message and message_id, each a non-blank
    string within its max_length, with nothing the serializer would change or
    refuse (surrounding spaces it trims, NUL, lone surrogates). Anything else
    returns None, and the serializer itself judges it (and words the errors).
    DRF costs ~60 µs a message; this a few.
    """
    if not _PLAIN_KEYS.issuperset(data):
        return None
    source = data.get("source", "api")
    if type(source) is not str or source not in SOURCES:
        return None
    for name, limit in _PLAIN_FIELDS.items():
        value = data.get(name)
        if value is None and name == "message_id" and name not in data:
            continue
        if type(value) is not str or not value or len(value) > limit:
            return None
        if "\x00" in value or not (value.isascii() or _encodable(value)):
            return None
        if name == "message":
            if not value.strip():
                return None
        elif value != value.strip():
            return None
    valid = {"source": source, "user_id": data["user_id"], "message": data["message"]}
    if "message_id" in data:
        valid["message_id"] = data["message_id"]
    valid["metadata"] = {}  # the serializer's default
    return valid


def _encodable(value: str) -> bool:
    try:
        value.encode("utf-8")  # fails on lone surrogates, which DRF refuses
    except UnicodeEncodeError:
        return False
    return True


def _inbound_fields(valid: dict[str, Any], tenant: Tenant) -> dict[str, Any]:
    meta = dict(valid.get("metadata") or {})
    if (timestamp := valid.get("timestamp")) is not None:
        meta.setdefault("timestamp", timestamp.isoformat())
    return {
        "tenant": tenant,
        "channel": valid["source"],
        "user_id": valid["user_id"],
        "text": valid["message"],
        "external_id": valid.get("message_id") or f"gen-{uuid.uuid4()}",
        "metadata": meta,
    }


def inbound_store_many(*, entries: list[dict[str, Any]]) -> list[Message]:
    """Store many validated inbound messages, once per (channel, external id).

    Does what message_receive does for each entry, in one transaction and a
    handful of queries: the stored messages are read, the missing conversations
    created, the new messages inserted in one statement and each conversation's
    counters updated in one UPDATE. Returns the message of each entry, in
    order. A concurrent insert of one of the messages (a unique violation)
    undoes the batch and stores the entries one by one instead.
    """
    try:
        with transaction.atomic():
            return _store_many(entries)
    except IntegrityError:
        return [
            message_receive(
                tenant=e["tenant"],
                channel=e["channel"],
                user_id=e["user_id"],
                text=e["text"],
                external_id=e["external_id"],
                metadata=e["metadata"],
            )[0]
            for e in entries
        ]


def _store_many(entries: list[dict[str, Any]]) -> list[Message]:
    if pg_bulk.is_postgres():
        return _store_many_pg(entries)
    now = timezone.now()
    found: dict[tuple[str, str], Message] = {
        (m.channel, m.external_id): m
        for m in Message.objects.select_related("conversation").filter(
            # both columns of the unique index, so it can be used
            channel__in={e["channel"] for e in entries},
            external_id__in={e["external_id"] for e in entries},
        )
    }
    fresh = [
        e
        for e in {(e["channel"], e["external_id"]): e for e in entries}.values()
        if (e["channel"], e["external_id"]) not in found
    ]
    if fresh:
        conversations = _conversations_for(fresh)
        rows = [
            _inbound_row(
                e,
                conversation=conversations[
                    (e["tenant"].pk, e["channel"], e["user_id"])
                ],
            )
            for e in fresh
        ]
        Message.objects.bulk_create(rows)
        counts: dict[int, int] = {}
        last: dict[int, str] = {}
        for row in rows:
            counts[row.conversation_id] = counts.get(row.conversation_id, 0) + 1
            last[row.conversation_id] = row.content
            found[(row.channel, row.external_id)] = row
        _conversations_bump(counts=counts, last=last, now=now)
    return [found[(e["channel"], e["external_id"])] for e in entries]


def _table(model: Any) -> str:
    return connection.ops.quote_name(model._meta.db_table)


# The columns _store_many_pg writes, each with the SQL of its value: ``u.x``
# from the arrays, else the model field's default (a test checks that this
# names every concrete field of Message).
_MESSAGE_COLUMNS = {
    "id": "u.id::uuid",
    "conversation_id": "u.conversation_id",
    "channel": "u.channel",
    "role": "%(role)s",
    "content": "u.content",
    "external_id": "u.external_id",
    "status": "u.status",
    "reply_to_id": "NULL",
    "provider": "''",
    "model": "''",
    "prompt_tokens": "0",
    "completion_tokens": "0",
    "total_tokens": "0",
    "cost": "0",
    "processing_time_ms": "NULL",
    "error": "''",
    "metadata": "u.metadata",
    "sent_at": "NULL",
    "processing_started_at": "NULL",
    "published_at": "NULL",
    "created_at": "%(now)s",
    "updated_at": "%(now)s",
}


# What the constant columns of _MESSAGE_COLUMNS hold, as Python values.
_MESSAGE_FIXED = {
    "role": Message.Role.USER.value,
    "reply_to_id": None,
    "provider": "",
    "model": "",
    "prompt_tokens": 0,
    "completion_tokens": 0,
    "total_tokens": 0,
    "cost": Decimal(0),
    "processing_time_ms": None,
    "error": "",
    "sent_at": None,
    "processing_started_at": None,
    "published_at": None,
}


def _store_many_pg(entries: list[dict[str, Any]]) -> list[Message]:
    """Do what the ORM path of _store_many does, in fixed JSON-row statements.

    The new messages are inserted first (``ON CONFLICT DO NOTHING`` on the
    (channel, external_id) unique index), and only those it did not insert,
    the duplicates, are read back: no lookup of every key before the insert,
    which without planner statistics scanned the whole table each batch.
    """
    now = timezone.now()
    unique = {(e["channel"], e["external_id"]): e for e in entries}
    found: dict[tuple[str, str], Message] = {}
    conversations = _conversation_ids_pg(list(unique.values()), found)
    fresh = [e for key, e in unique.items() if key not in found]
    if fresh:
        ids = uuid7_many(len(fresh))  # time-ordered, one urandom call
        convs = [
            conversations[(e["tenant"].pk, e["channel"], e["user_id"])] for e in fresh
        ]
        inserted = messages_insert_pg(
            [
                (
                    pk,
                    conversation_id,
                    e["channel"],
                    e["text"],
                    e["external_id"],
                    e["metadata"],
                    Message.Status.RECEIVED.value,
                )
                for e, pk, conversation_id in zip(fresh, ids, convs, strict=True)
            ],
            now=now,
        )
        counts: dict[int, int] = {}
        last: dict[int, str] = {}
        as_stored = _stored_maker(connection.alias)
        stored_before = []
        for e, pk, conversation_id in zip(fresh, ids, convs, strict=True):
            if pk not in inserted:  # stored before (or meanwhile): read below
                stored_before.append(e)
                continue
            row = as_stored(
                {
                    **_MESSAGE_FIXED,
                    "status": Message.Status.RECEIVED.value,
                    "id": pk,
                    "conversation_id": conversation_id,
                    "channel": e["channel"],
                    "content": e["text"],
                    "external_id": e["external_id"],
                    "metadata": e["metadata"],
                    "created_at": now,
                    "updated_at": now,
                }
            )
            counts[conversation_id] = counts.get(conversation_id, 0) + 1
            last[conversation_id] = row.content
            found[(row.channel, row.external_id)] = row
        if stored_before:
            found.update(_stored_messages_pg(stored_before))
        if counts:
            _conversations_bump_pg(counts=counts, last=last, now=now)
    return [found[(e["channel"], e["external_id"])] for e in entries]


def conversations_bump(
    *, counts: dict[int, int], last: dict[int, str], now: Any
) -> None:
    """Add ``counts`` to each conversation's message_count and set its
    last_message and last_activity, in one statement (rows locked in id
    order on PostgreSQL); run inside a transaction."""
    if pg_bulk.is_postgres():
        _conversations_bump_pg(counts=counts, last=last, now=now)
    else:
        _conversations_bump(counts=counts, last=last, now=now)


def messages_insert_pg(rows: list[tuple], *, now: Any) -> set[uuid.UUID]:
    """Insert inbound (user) messages in one statement; return the ids inserted.

    ``rows``: ``(id, conversation id, channel, content, external id,
    metadata, status)``, the other columns their defaults (_MESSAGE_COLUMNS).
    One fixed statement whatever the number of rows, read as jsonb
    (``pg_bulk.ROWS``); ``ON CONFLICT DO NOTHING`` on the (channel,
    external_id) unique index: a message stored before (or by a concurrent
    insert) is not inserted, and its id is not returned.
    """
    values = ", ".join(_MESSAGE_COLUMNS.values()) % {"role": "%s", "now": "%s"}
    return {
        pk
        for (pk,) in pg_bulk.execute(
            f"INSERT INTO {_table(Message)} "  # noqa: S608 - our names
            f"({pg_bulk.quoted(*_MESSAGE_COLUMNS)}) "
            f"SELECT {values} FROM (SELECT (r->>0)::uuid AS id, "
            "(r->>1)::bigint AS conversation_id, r->>2 AS channel, "
            "r->>3 AS content, r->>4 AS external_id, r->5 AS metadata, "
            f"r->>6 AS status FROM {pg_bulk.ROWS}) AS u "
            # the unique index message_unique_external_id
            "ON CONFLICT (channel, external_id) WHERE external_id IS NOT NULL "
            "DO NOTHING RETURNING id",
            [
                Message.Role.USER.value,
                now,
                now,
                pg_bulk.json_rows((str(pk), *rest) for pk, *rest in rows),
            ],
        )
    }


def _conversations_bump_pg(
    *, counts: dict[int, int], last: dict[int, str], now: Any
) -> None:
    """Add ``counts`` to message_count and set last_message (PostgreSQL).

    The rows are locked first, in id order (``ORDER BY id FOR UPDATE`` locks
    as the sorted rows come out). The UPDATE alone locks them in the order
    its plan reads them, and the plan varies with the batch: a nested loop
    over the (sorted) rows goes in id order, a hash join in the table's
    physical order, which updates shuffle. Two bridges whose plans differed
    deadlocked on overlapping conversations (PostgreSQL's log, bench/bridge.py
    with batches of 500: a second's stall, then one message at a time).
    """
    table = _table(Conversation)
    ids = sorted(counts)
    pg_bulk.execute(
        f"SELECT id FROM {table} "  # noqa: S608 - our names
        "WHERE id = ANY(%s::bigint[]) ORDER BY id FOR UPDATE",
        [ids],
    )
    pg_bulk.execute(
        f"UPDATE {table} AS c SET "  # noqa: S608 - our names
        "message_count = c.message_count + v.n, last_message = v.body, "
        "last_activity = %s FROM (SELECT (r->>0)::bigint AS id, "
        "(r->>1)::integer AS n, r->>2 AS body "
        f"FROM {pg_bulk.ROWS}) AS v WHERE c.id = v.id",
        [now, pg_bulk.json_rows((k, counts[k], last[k]) for k in ids)],
    )


def _stored_messages_pg(
    entries: list[dict[str, Any]],
) -> dict[tuple[str, str], Message]:
    """Return the stored messages of ``entries`` by (channel, external id)."""
    # By (channel, external_id), the unique index's columns: external_id
    # alone has no index (a scan of the table).
    stored = pg_bulk.execute(
        f"SELECT id FROM {_table(Message)} "  # noqa: S608 - our names
        "WHERE external_id IS NOT NULL AND (channel, external_id) IN "
        f"(SELECT r->>0, r->>1 FROM {pg_bulk.ROWS})",
        [pg_bulk.json_rows({(e["channel"], e["external_id"]) for e in entries})],
    )
    if not stored:
        return {}
    return {
        (m.channel, m.external_id): m
        for m in Message.objects.select_related("conversation").filter(
            pk__in=[pk for (pk,) in stored]
        )
    }


def _stored_maker(alias: str) -> Any:
    """Return ``make(values)``: the Message ``Message.from_db`` gives for a row.

    ``values`` holds every column of _MESSAGE_COLUMNS (by attname). from_db
    goes through Model.__init__ (a setattr per field, the init signals):
    ~14 µs a row against ~1 here, measured. Should anything receive
    Message's init signals, from_db itself is used.
    """
    if pre_init.has_listeners(Message) or post_init.has_listeners(Message):
        columns = list(_MESSAGE_COLUMNS)

        def make(values: dict[str, Any]) -> Message:
            return Message.from_db(alias, columns, [values[c] for c in columns])

        return make

    def make(values: dict[str, Any]) -> Message:
        message = Message.__new__(Message)
        state = message._state = ModelState()
        state.adding, state.db = False, alias
        message.__dict__.update(values)
        return message

    return make


def _conversation_ids_pg(
    entries: list[dict[str, Any]], found: dict[tuple[str, str], Message]
) -> dict[tuple[int, str, str], int]:
    """Return the id of each entry's default-channel conversation, creating it.

    Before creating one, the messages of the entries that lack theirs are
    looked up: a message stored before (in ``found`` afterwards) needs no
    conversation here, and gets none.
    """
    wanted = {(e["tenant"].pk, e["channel"], e["user_id"]) for e in entries}

    def read() -> dict[tuple[int, str, str], int]:
        rows = pg_bulk.execute(
            "SELECT c.id, c.tenant_id, c.channel, c.external_user_id "  # noqa: S608
            f"FROM {_table(Conversation)} AS c JOIN (SELECT (r->>0)::bigint "
            "AS tenant_id, r->>1 AS channel, r->>2 AS user_id "
            f"FROM {pg_bulk.ROWS}) AS w "
            "ON c.tenant_id = w.tenant_id AND c.channel = w.channel "
            "AND c.external_user_id = w.user_id WHERE c.account_id IS NULL",
            [pg_bulk.json_rows(wanted)],
        )
        return {(t, c, u): pk for pk, t, c, u in rows}

    have = read()
    if missing := wanted - have.keys():
        lacking = [
            e
            for e in entries
            if (e["tenant"].pk, e["channel"], e["user_id"]) in missing
        ]
        found.update(_stored_messages_pg(lacking))
        if create := {
            (e["tenant"].pk, e["channel"], e["user_id"])
            for e in lacking
            if (e["channel"], e["external_id"]) not in found
        }:
            _conversations_create(create)
            have = read()
    return have


def _read_or_create(wanted: set[tuple[int, str, str]], read: Any) -> Any:
    """Return ``read()`` after creating the wanted conversations it lacks."""
    have = read()
    if missing := wanted - have.keys():
        _conversations_create(missing)
        have = read()
    return have


def _conversations_create(keys: Iterable[tuple[int, str, str]]) -> None:
    """Create the default-channel conversations of ``(tenant id, channel, user)``.

    In key order: two bridges creating overlapping sets of conversations
    each wait on the other's uncommitted rows of the unique index; in set
    order they deadlocked (seen in bench/bridge.py with ``--processes 2``:
    a second's stall, then the batch stored one message at a time).
    """
    Conversation.objects.bulk_create(
        [
            Conversation(tenant_id=t, channel=c, external_user_id=u)
            for t, c, u in sorted(keys)
        ],
        ignore_conflicts=True,  # created meanwhile by another process
    )


def _inbound_row(entry: dict[str, Any], **fields: Any) -> Message:
    """Return the (unsaved) Message of a validated inbound entry."""
    return Message(
        channel=entry["channel"],
        role=Message.Role.USER,
        content=entry["text"],
        external_id=entry["external_id"],
        status=Message.Status.RECEIVED,
        metadata=entry["metadata"],
        **fields,
    )


def _conversations_bump(
    *, counts: dict[int, int], last: dict[int, str], now: Any
) -> None:
    """Add ``counts`` to message_count and set last_message, one UPDATE.

    An ORM ``Case(When(pk=...))`` per conversation costs milliseconds of
    expression resolution per batch; an ``UPDATE ... FROM (VALUES ...)``
    (PostgreSQL, SQLite >= 3.33) does the same in one statement.
    """
    q = connection.ops.quote_name
    table = q(Conversation._meta.db_table)
    rows = ", ".join(["(CAST(%s AS BIGINT), CAST(%s AS INTEGER), %s)"] * len(counts))
    params: list[Any] = []
    for pk, n in sorted(counts.items()):  # lock order: see _conversations_create
        params += [pk, n, last[pk]]
    stamp = connection.ops.adapt_datetimefield_value(now)
    with connection.cursor() as cursor:
        cursor.execute(
            f"WITH v (id, n, body) AS (VALUES {rows}) "  # noqa: S608 - our names
            f"UPDATE {table} SET "
            f"{q('message_count')} = {table}.{q('message_count')} + v.n, "
            f"{q('last_message')} = v.body, {q('last_activity')} = %s "
            f"FROM v WHERE {table}.{q('id')} = v.id",
            [*params, stamp],
        )


def _conversations_for(
    entries: list[dict[str, Any]],
) -> dict[tuple[int, str, str], Conversation]:
    wanted = {(e["tenant"].pk, e["channel"], e["user_id"]) for e in entries}

    def read() -> dict[tuple[int, str, str], Conversation]:
        rows = Conversation.objects.filter(
            tenant_id__in={t for t, _, _ in wanted},
            channel__in={c for _, c, _ in wanted},
            external_user_id__in={u for _, _, u in wanted},
            account__isnull=True,
        )
        return {(c.tenant_id, c.channel, c.external_user_id): c for c in rows}

    return _read_or_create(wanted, read)


def chat_message_batch(
    *, items: list[tuple[Any, dict[str, str]]]
) -> list[Signature | PermanentMessageError | None]:
    """Do what chat_message does for each item, storing them all at once."""
    results: list[Signature | PermanentMessageError | None] = [None] * len(items)
    slugs = {a["tenant"] for _, a in items if a.get("tenant")}
    tenants = (
        {t.slug: t for t in Tenant.objects.filter(slug__in=slugs)} if slugs else {}
    )
    default: Tenant | None = None
    entries: list[tuple[int, dict[str, Any]]] = []
    serializer = InboundMessageSerializer()  # its fields are built once

    for i, (data, attributes) in enumerate(items):
        try:
            if attributes.get("channel_id"):
                # A channel account's message: rare on the bus; stored alone.
                with transaction.atomic():
                    results[i] = chat_message(data=data, attributes=attributes)
                continue
            if slug := attributes.get("tenant"):
                tenant = tenants.get(slug)
                if tenant is None:
                    raise PermanentMessageError(f"unknown tenant {slug!r}")
            else:
                default = default or tenant_get_default()
                tenant = default
            valid = _validate_with(serializer, data)
            entries.append((i, _inbound_fields(valid, tenant)))
        except PermanentMessageError as exc:
            results[i] = exc
    if entries:
        stored = inbound_store_many(entries=[e for _, e in entries])
        for (i, _), message in zip(entries, stored, strict=True):
            results[i] = reply_chain(message) if message_needs_reply(message) else None
    return results


chat_message.batch = chat_message_batch  # type: ignore[attr-defined]
