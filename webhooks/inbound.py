"""Store a delivery's inbound messages in a few statements (BUS=direct).

With BUS=direct the chat_message route would validate, store and build the
reply chain one message at a time (a dozen queries each). Here a delivery's
messages are validated in memory, their conversations read in one query, the
messages inserted in one ``INSERT ... ON CONFLICT DO NOTHING RETURNING id``
(the unique (channel, external_id) constraint is the duplicate check) and each
touched conversation's counters updated once. The caller runs this inside its
transaction and enqueues the returned chains after commit with
:func:`chains_enqueue`.
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db import router
from django.db.models.constants import OnConflict
from django.db.models.sql import InsertQuery
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from conversations.models import Conversation, Message
from conversations.routes import (
    conversations_bump,
    inbound_validate,
    messages_insert_pg,
    reply_chain,
)
from conversations.serializers import SOURCES
from conversations.services import message_rate_limited
from vocoeng import correlation, pg_bulk
from vocoeng.celery import app
from vocoeng.celery_batch import PublishCache, publish_batch
from vocoeng.channels import agent_for
from vocoeng.ids import uuid7
from vocoeng.limits import rate_limit_parse
from vocoeng.models import Channel, Tenant
from vocoeng.routing import PermanentMessageError
from vocoeng.services import DEFAULT_TENANT_SLUG, tenant_get_default

from .parsers import InboundItem

# A stored message still ``received`` this long after it arrived lost its
# chain (e.g. the broker failed after commit): a redelivery enqueues it again.
# Younger duplicates are Meta retries of a message whose chain is queued.
REQUEUE_AFTER = timedelta(seconds=30)

# The limits of conversations.serializers.InboundMessageSerializer.
_MAX_USER_ID, _MAX_MESSAGE, _MAX_MESSAGE_ID = 128, 8192, 255


@dataclass
class IngestResult:
    """What became of a delivery's messages, and the chains to enqueue."""

    outcomes: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    chains: list[str] = field(default_factory=list)  # inbound message ids

    def count(self, outcome: str) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1


@dataclass
class _Row:
    item: InboundItem
    user_id: str
    text: str
    external_id: str
    metadata: dict[str, Any]
    status: str
    id: uuid.UUID = field(default_factory=uuid7)  # Message's own kind of id
    result: IngestResult = field(default_factory=IngestResult)  # its delivery's


def _plain(value: Any, limit: int) -> bool:
    # What a StrictCharField (trim_whitespace, no blank, no NUL) accepts as is.
    return (
        isinstance(value, str)
        and 0 < len(value) <= limit
        and value == value.strip()
        and "\x00" not in value
    )


def _timestamp(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    parsed = parse_datetime(value)
    if parsed is None or timezone.is_naive(parsed):
        return None
    return parsed.astimezone(timezone.get_current_timezone())


def _validated(data: dict[str, Any]) -> dict[str, Any]:
    """Return the chat message as the route's serializer would validate it.

    Checks the common shape in memory; anything else (and every error, for its
    exact reason) goes through ``inbound_validate``.
    """
    message = data["message"]
    stamp = data.get("timestamp")
    parsed = _timestamp(stamp) if stamp is not None else None
    if (
        data["source"] in SOURCES
        and _plain(data["user_id"], _MAX_USER_ID)
        and _plain(data["message_id"], _MAX_MESSAGE_ID)
        and isinstance(message, str)
        and len(message) <= _MAX_MESSAGE
        and message.strip()
        and "\x00" not in message
        and (stamp is None or parsed is not None)
    ):
        valid = dict(data)
        if parsed is not None:
            valid["timestamp"] = parsed
        return valid
    return inbound_validate(data)


def _row(
    item: InboundItem, *, source: str, received_at: str, result: IngestResult
) -> _Row:
    payload = item.payload(source=source, received_at=received_at)
    if not item.replyable:
        # Stored as is, without an AI call (what message_receive gets directly).
        return _Row(
            item=item,
            user_id=item.user_id,
            text=item.text,
            external_id=item.message_id,
            metadata=payload["metadata"],
            status=Message.Status.IGNORED,
            result=result,
        )
    valid = _validated(payload)
    metadata = dict(valid.get("metadata") or {})
    if (stamp := valid.get("timestamp")) is not None:
        metadata.setdefault("timestamp", stamp.isoformat())
    return _Row(
        item=item,
        user_id=valid["user_id"],
        text=valid["message"],
        external_id=valid.get("message_id") or f"gen-{uuid.uuid4()}",
        metadata=metadata,
        status=Message.Status.RECEIVED,
        result=result,
    )


def _conversations(
    *, source: str, users: set[str], account: Channel | None
) -> dict[str, tuple[int, int]]:
    """Return ``user -> (conversation id, tenant id)``, creating missing ones.

    On a channel account the conversations are the account's; on the default
    channel they are the default tenant's.
    """
    if account is None:
        scope = Conversation.objects.filter(
            tenant__slug=DEFAULT_TENANT_SLUG, channel=source, account__isnull=True
        )
    else:
        scope = Conversation.objects.filter(account=account)

    def read() -> dict[str, tuple[int, int]]:
        rows = scope.filter(external_user_id__in=users).values_list(
            "external_user_id", "pk", "tenant_id"
        )
        return {user: (pk, tenant_id) for user, pk, tenant_id in rows}

    found = read()
    if missing := users - found.keys():
        tenant_id = tenant_get_default().pk if account is None else account.tenant_id
        Conversation.objects.bulk_create(
            [
                Conversation(
                    tenant_id=tenant_id,
                    channel=source,
                    account=account,
                    external_user_id=user,
                )
                for user in sorted(missing)
            ],
            ignore_conflicts=True,
        )
        found = read()
    return found


def _insert(
    rows: list[_Row], *, source: str, conversations: dict, now: datetime
) -> set[str]:
    """Insert ``rows`` once each; return the ids (hex) actually inserted."""
    if not rows:
        return set()
    if pg_bulk.is_postgres():
        # One fixed statement, the rows as one jsonb parameter: the ORM's
        # INSERT had a parameter per column and row, prepared and converted
        # anew for each batch size (~0.1 ms of a worker's CPU a message).
        inserted = messages_insert_pg(
            [
                (
                    row.id,
                    conversations[row.user_id][0],
                    source,
                    row.text,
                    row.external_id,
                    row.metadata,
                    row.status,
                )
                for row in rows
            ],
            now=now,
        )
        return {pk.hex for pk in inserted}
    objs = [
        Message(
            id=row.id,
            conversation_id=conversations[row.user_id][0],
            channel=source,
            role=Message.Role.USER,
            content=row.text,
            external_id=row.external_id,
            status=row.status,
            metadata=row.metadata,
        )
        for row in rows
    ]
    meta = Message._meta
    query = InsertQuery(Message, on_conflict=OnConflict.IGNORE)
    query.insert_values([f for f in meta.concrete_fields if not f.generated], objs)
    compiler = query.get_compiler(using=router.db_for_write(Message))
    # bulk_create(ignore_conflicts=True) cannot say which rows went in; the
    # same INSERT with RETURNING can (PostgreSQL and SQLite >= 3.35).
    compiler.returning_fields = [meta.pk]
    returned: list[tuple[Any, ...]] = []
    with compiler.connection.cursor() as cursor:
        for sql, params in compiler.as_sql():
            cursor.execute(sql, params)
            returned.extend(cursor.fetchall())
    return {uuid.UUID(str(r[0])).hex for r in returned}


def _store(rows: list[_Row], *, source: str, conversations: dict) -> None:
    now = timezone.now()
    inserted = _insert(rows, source=source, conversations=conversations, now=now)
    touched: dict[int, tuple[int, str]] = {}
    conflicts: list[_Row] = []
    for row in rows:
        if row.id.hex not in inserted:
            conflicts.append(row)
            continue
        conversation_id = conversations[row.user_id][0]
        count, _ = touched.get(conversation_id, (0, ""))
        touched[conversation_id] = (count + 1, row.text)
        if row.status == Message.Status.RECEIVED:
            row.result.chains.append(str(row.id))
            row.result.count("queued")
        else:
            row.result.count(str(row.status))
    if touched:
        # One statement, the rows locked in id order: two workers naming the
        # same users in other orders would otherwise lock them crosswise.
        conversations_bump(
            counts={pk: count for pk, (count, _) in touched.items()},
            last={pk: last for pk, (_, last) in touched.items()},
            now=now,
        )
    if conflicts:
        _conflicts(conflicts, source=source)


def _conflicts(rows: list[_Row], *, source: str) -> None:
    """Count duplicates; enqueue again a stored message that lost its chain."""
    stored = {
        external_id: (pk, status, created_at)
        for external_id, pk, status, created_at in Message.objects.filter(
            channel=source, external_id__in={row.external_id for row in rows}
        ).values_list("external_id", "pk", "status", "created_at")
    }
    stale = timezone.now() - REQUEUE_AFTER
    requeued: set[str] = set()
    for row in rows:
        pk, status, created_at = stored[row.external_id]
        if (
            row.item.replyable
            and status == Message.Status.RECEIVED
            and created_at < stale
            and row.external_id not in requeued
        ):
            requeued.add(row.external_id)
            row.result.chains.append(str(pk))
            row.result.count("queued")
        else:
            row.result.count("duplicate")


def messages_ingest(
    *,
    items: list[InboundItem],
    source: str,
    received_at: str,
    account: Channel | None = None,
) -> IngestResult:
    """Store a delivery's inbound messages once each; run inside a transaction.

    Outcomes as ``inbound_ingest``: ``queued`` (a reply chain is due: its
    message id is in ``chains``), ``duplicate``, ``ignored``,
    ``rate_limited`` and ``invalid`` (with the reason in ``problems``).
    """
    result = IngestResult()
    rows_store(
        rows_of(items, source=source, received_at=received_at, result=result),
        source=source,
        account=account,
    )
    return result


def rows_of(
    items: list[InboundItem], *, source: str, received_at: str, result: IngestResult
) -> list[_Row]:
    """Return the rows of one delivery's messages (its outcomes go to
    ``result``; an invalid message is counted there, with its reason)."""
    rows: list[_Row] = []
    for item in items:
        try:
            rows.append(
                _row(item, source=source, received_at=received_at, result=result)
            )
        except PermanentMessageError as exc:
            result.count("invalid")
            result.problems.append(f"{item.message_id}: {exc.reason}")
    return rows


def rows_store(rows: list[_Row], *, source: str, account: Channel | None) -> None:
    """Store the rows of one or more deliveries (in order) once each, each
    outcome counted in its row's result; run inside a transaction."""
    if not rows:
        return
    conversations = _conversations(
        source=source, users={r.user_id for r in rows}, account=account
    )
    limit = agent_for(account).rate_limit
    if rate_limit_parse(limit) is None:
        _store(rows, source=source, conversations=conversations)
        return
    # AI_USER_RATE_LIMIT counts stored messages: a sender's earlier messages
    # are stored before its next one is checked.
    batch: list[_Row] = []
    for row in rows:
        if row.status != Message.Status.RECEIVED:
            batch.append(row)
            continue
        if any(r.user_id == row.user_id for r in batch):
            _store(batch, source=source, conversations=conversations)
            batch = []
        _, tenant_id = conversations[row.user_id]
        if message_rate_limited(
            tenant=Tenant(pk=tenant_id),
            channel=source,
            user_id=row.user_id,
            account=account,
        ):
            row.status = Message.Status.RATE_LIMITED
        batch.append(row)
    _store(batch, source=source, conversations=conversations)


_publish_caches = threading.local()


def chains_enqueue(*, message_ids: list[str]) -> None:
    """Enqueue one reply chain per inbound message (ids only), together,
    under the current correlation id (see :func:`chains_enqueue_many`)."""
    cid = correlation.current()
    chains_enqueue_many(chains=[(pk, cid) for pk in message_ids])


def chains_enqueue_many(*, chains: list[tuple[str, str | None]]) -> None:
    """Enqueue a reply chain per ``(inbound message id, correlation id)``.

    The messages ``apply_async`` would send (vocoeng.celery_batch), in one
    batch on one producer borrowed from the app's pool: ~0.6 ms of a
    worker's CPU a chain through the canvas, measured in the webhook's worker
    (bench/webhooks.py's drain), against a few dozen µs.
    """
    if not chains:
        return
    cache = getattr(_publish_caches, "cache", None)
    if cache is None:  # one call at a time uses a cache: one per thread
        cache = _publish_caches.cache = PublishCache()
    with app.producer_or_acquire() as producer:
        publish_batch(
            [
                (
                    reply_chain(Message(pk=pk)),
                    correlation.headers_for(cid) if cid else {},
                )
                for pk, cid in chains
            ],
            producer=producer,
            cache=cache,
        )
