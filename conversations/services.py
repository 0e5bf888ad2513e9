"""Receive messages, generate, publish and deliver replies (the reply path)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from vocoeng import bus
from vocoeng.channels import agent_for
from vocoeng.cpu_slots import cpu_slot
from vocoeng.limits import rate_limit_parse
from vocoeng.models import Channel, Tenant
from vocoeng.sql import connection_release

from .agent import agent_generate
from .budget import BudgetExceeded, SpendGuard, ledger_fields
from .delivery import DeliveryError, adapter_for
from .models import AICall, Conversation, Message
from .providers import AIUnavailable, Attempt, ChatTurn
from .queries import message_claim_read, reply_write, row_insert
from .stores import StoreError, get_store

logger = logging.getLogger(__name__)


def message_receive(
    *,
    tenant: Tenant,
    channel: str,
    user_id: str,
    text: str,
    external_id: str | None,
    timestamp: datetime | None = None,
    metadata: dict[str, Any] | None = None,
    status: str = Message.Status.RECEIVED,
    account: Channel | None = None,
) -> tuple[Message, bool]:
    """Store an inbound message once per (channel, external id).

    Returns the message and whether it was created; the same external id again
    returns the stored message and changes nothing.
    """
    if external_id:
        existing = Message.objects.filter(channel=channel, external_id=external_id)
        found = existing.select_related("conversation").first()
        if found is not None:
            return found, False
    now = timezone.now()
    meta = dict(metadata or {})
    if timestamp is not None:
        meta.setdefault("timestamp", timestamp.isoformat())
    try:
        with transaction.atomic():
            conversation, _ = Conversation.objects.get_or_create(
                tenant=tenant,
                channel=channel,
                account=account,
                external_user_id=user_id,
            )
            message = Message.objects.create(
                conversation=conversation,
                channel=channel,
                role=Message.Role.USER,
                content=text,
                external_id=external_id or None,
                status=status,
                metadata=meta,
            )
            Conversation.objects.filter(pk=conversation.pk).update(
                message_count=F("message_count") + 1,
                last_message=text,
                last_activity=now,
            )
    except IntegrityError:
        # A concurrent delivery of the same external id won the insert.
        found = (
            Message.objects.select_related("conversation")
            .filter(channel=channel, external_id=external_id)
            .first()
        )
        if found is None:
            raise
        return found, False
    return message, True


def message_needs_reply(message: Message) -> bool:
    """Return whether a reply chain should run for ``message``.

    True while it is waiting (``received``): a chain lost to a broker outage is
    enqueued again on redelivery, and the claim in reply_generate makes a
    second chain a no-op.
    """
    return (
        message.role == Message.Role.USER and message.status == Message.Status.RECEIVED
    )


def ai_call_record(
    *,
    attempt: Attempt,
    ref: str,
    tenant_id: int | None,
    message: Message | None = None,
) -> AICall:
    """Record one model attempt in the usage ledger (chat replies and pipeline)."""
    call = ai_call_build(attempt, ref, tenant_id, message)
    row_insert(call)
    return call


def ai_call_build(
    attempt: Attempt, ref: str, tenant_id: int | None, message: Message | None
) -> AICall:
    """Return the (unsaved) ledger row of one model attempt."""
    return AICall(
        tenant_id=tenant_id, message=message, ref=ref, **ledger_fields(attempt)
    )


def _record_attempt(inbound: Message, tenant_id: int, attempt: Attempt) -> None:
    ai_call_record(
        attempt=attempt,
        ref=f"message:{inbound.id}",
        tenant_id=tenant_id,
        message=inbound,
    )


def reply_generate(*, message_id: Any) -> Message | None:
    """Generate and store the reply to an inbound message, exactly once.

    Returns the reply (the existing one when it was already generated), or
    None when another worker holds the message or it failed; a failure is
    recorded on the message with its reason.
    """
    # The database work before and after the model call runs in a CPU slot
    # (vocoeng/cpu_slots.py): the ai worker's threads go through it a few at a
    # time instead of slicing the GIL between all of them.
    store = get_store()
    history: list[ChatTurn] | None = None
    with cpu_slot():
        # Claim first, reading the message with its conversation, tenant and
        # channel as claimed (one statement on PostgreSQL); the reply check
        # below is only paid by duplicates.
        now = timezone.now()
        stale = now - timedelta(seconds=settings.CELERY_TASK_TIME_LIMIT)
        inbound = message_claim_read(
            message_id,
            now=now,
            stale_before=stale,
            # A database store's history comes with the claim (PostgreSQL).
            history_statuses=store.history_statuses,
            history_length=settings.AI_HISTORY_MESSAGES,
        )
        if inbound is None:
            return _reply_existing(message_id, store)
        started = time.monotonic()
        tenant_id = inbound.conversation.tenant_id
        agent = agent_for(inbound.conversation.account)
        guard = SpendGuard.for_tenant(
            tenant=inbound.conversation.tenant,
            ref=f"message:{inbound.id}",
            message=inbound,
            conversation_id=inbound.conversation_id,
            release=connection_release,
        )
        if not store.remote:
            history = _history_read(store, inbound, agent.history_length)
        # Back to the pool before the model call: an ai worker runs ~100
        # threads, and holding a connection each through calls of seconds
        # would exhaust PostgreSQL's max_connections.
        connection_release()
    if history is None:  # a round trip to another service: outside the slot
        history = _history_read(store, inbound, agent.history_length)

    def record_failure(attempt: Attempt) -> None:
        # Failed attempts are written at once (the ledger must show them even
        # if the worker dies); the successful one goes in with the reply. With
        # a spend guard every attempt was admitted with a row it completes.
        if guard is not None:
            guard.after(attempt)
        elif not attempt.ok:
            _record_attempt(inbound, tenant_id, attempt)

    try:
        completion = agent_generate(
            system=agent.system_prompt,
            messages=[*history, ChatTurn(role="user", content=inbound.content)],
            tools=agent.tools,
            tenant_id=tenant_id,
            agent_id=agent.agent_id,
            ref=f"message:{inbound.id}",
            providers=agent.providers,
            models=agent.models,
            on_attempt=record_failure,
            before_attempt=guard.before if guard is not None else None,
        )
    except BudgetExceeded as exc:
        return _reply_over_budget(inbound, exc.reason)
    except AIUnavailable as exc:
        Message.objects.filter(pk=inbound.pk).update(
            status=Message.Status.FAILED, error=str(exc)[:2000]
        )
        logger.error("reply_failed message=%s reason=%s", inbound.id, exc)
        return None
    elapsed_ms = int((time.monotonic() - started) * 1000)

    with cpu_slot():
        try:
            # The one-to-one reply_to is the guard: a racing duplicate loses here.
            reply = _reply_store(
                inbound=inbound,
                text=completion.text,
                inbound_status=Message.Status.REPLIED,
                # Tool rounds make several successful calls; each is spend. (A
                # spend guard has ledgered them already.)
                calls=[
                    ai_call_build(attempt, f"message:{inbound.id}", tenant_id, inbound)
                    for attempt in (completion.attempts if guard is None else ())
                    if attempt.ok
                ],
                provider=completion.provider,
                model=completion.model,
                prompt_tokens=completion.prompt_tokens,
                completion_tokens=completion.completion_tokens,
                total_tokens=completion.total_tokens,
                cost=completion.cost,
                processing_time_ms=elapsed_ms,
                metadata={"attempts": len(completion.attempts)},
            )
        except IntegrityError:
            reply = Message.objects.get(reply_to=inbound)
            logger.info("idempotent_skip message=%s reply=%s", inbound.id, reply.id)
            return reply
        # Back to the pool now, not after the log line and Celery's
        # bookkeeping: 100 threads share DB_POOL_MAX_SIZE connections.
        connection_release()
    store.record_exchange(inbound=inbound, reply=reply)
    logger.info(
        "reply_generated message=%s reply=%s provider=%s model=%s tokens=%s ms=%s",
        inbound.id,
        reply.id,
        reply.provider,
        reply.model,
        reply.total_tokens,
        elapsed_ms,
    )
    return reply


def _reply_existing(message_id: Any, store: Any) -> Message | None:
    """Return the reply of a message that could not be claimed, if it has one.

    A duplicate delivery of an answered message gets the existing reply (its
    exchange recorded again, which stores make idempotent); a message another
    worker holds, or one that failed, gets None.
    """
    inbound = Message.objects.select_related("conversation").get(pk=message_id)
    existing = Message.objects.filter(reply_to=inbound).first()
    if existing is not None:
        logger.info("idempotent_skip message=%s reply=%s", inbound.id, existing.id)
        store.record_exchange(inbound=inbound, reply=existing)
        return existing
    logger.info("idempotent_skip message=%s status=%s", inbound.id, inbound.status)
    return None


def _history_read(store: Any, inbound: Message, limit: int) -> list[ChatTurn]:
    """Read the history for ``inbound``; on a store failure put the claim back."""
    try:
        return store.history(inbound=inbound, limit=limit)
    except StoreError:
        # Put the claim back so the task's retry can take it again.
        Message.objects.filter(pk=inbound.pk).update(status=Message.Status.RECEIVED)
        raise


def _reply_store(
    *,
    inbound: Message,
    text: str,
    inbound_status: str,
    inbound_error: str = "",
    calls: Sequence[AICall] = (),
    **fields: Any,
) -> Message:
    """Store ``text`` as the pending reply to ``inbound``, all or nothing:
    the reply, the inbound message's status, the conversation's counters and
    the usage rows ``calls``. A second reply to the same message raises
    IntegrityError (the one-to-one ``reply_to``) and stores nothing."""
    reply = Message(
        conversation=inbound.conversation,
        channel=inbound.channel,
        role=Message.Role.ASSISTANT,
        content=text,
        status=Message.Status.PENDING,
        reply_to=inbound,
        **fields,
    )
    # What Message.objects.create, two filtered updates and the usage rows'
    # creates would run, compiled once (conversations/queries.py: the reply
    # path's CPU is the ai worker's ceiling).
    reply_write(
        reply=reply,
        inbound=inbound,
        status=inbound_status,
        error=inbound_error[:2000] if inbound_error else None,
        now=timezone.now(),
        calls=calls,
    )
    return reply


def _reply_over_budget(inbound: Message, reason: str) -> Message | None:
    """Mark a message over budget; return the tenant's fallback reply, if any.

    The message keeps status ``over_budget`` with the reason (the admin lists
    them); the fallback text goes out as a normal reply, without a model call.
    """
    text = inbound.conversation.tenant.over_budget_text
    if not text:
        Message.objects.filter(pk=inbound.pk).update(
            status=Message.Status.OVER_BUDGET, error=reason[:2000]
        )
        logger.warning("reply_over_budget message=%s sent=none", inbound.id)
        return None
    try:
        reply = _reply_store(
            inbound=inbound,
            text=text,
            inbound_status=Message.Status.OVER_BUDGET,
            inbound_error=reason,
            metadata={"over_budget": True, "reason": reason[:500]},
        )
    except IntegrityError:
        return Message.objects.get(reply_to=inbound)
    logger.warning(
        "reply_over_budget message=%s reply=%s sent=fallback", inbound.id, reply.id
    )
    return reply


def response_build(*, reply: Message) -> dict[str, Any]:
    """Return the response object of ARCHITECTURE.md for a stored reply."""
    inbound = reply.reply_to
    assert inbound is not None
    conversation = inbound.conversation
    return {
        "message_id": str(inbound.id),
        "external_message_id": inbound.external_id,
        "user_id": conversation.external_user_id,
        "original_message": inbound.content,
        "ai_response": {
            "response": reply.content,
            "model": reply.model,
            "usage": {
                "prompt_tokens": reply.prompt_tokens,
                "completion_tokens": reply.completion_tokens,
                "total_tokens": reply.total_tokens,
            },
            "metadata": {"provider": reply.provider, "cost": str(reply.cost)},
        },
        "processing_time_ms": reply.processing_time_ms,
        "timestamp": reply.created_at.isoformat(),
        "metadata": {
            **{k: v for k, v in inbound.metadata.items() if k != "raw"},
            "source": inbound.channel,
            "conversation_id": conversation.pk,
            "tenant": conversation.tenant.slug,
            "reply_id": str(reply.id),
        },
    }


def _load_reply(reply_id: Any) -> Message:
    return Message.objects.select_related(
        "reply_to__conversation__tenant", "conversation__account"
    ).get(pk=reply_id, role=Message.Role.ASSISTANT)


def reply_publish(*, reply_id: Any) -> Message:
    """Publish the reply's response on the responses topic, once."""
    reply = _load_reply(reply_id)
    bus.publish(
        topic=settings.PUBSUB_TOPIC_RESPONSES,
        payload=response_build(reply=reply),
        key=str(reply.reply_to_id),
        attributes={"kind": "chat_response", "source": reply.channel},
    )
    if reply.published_at is None:
        Message.objects.filter(pk=reply.pk, published_at__isnull=True).update(
            published_at=timezone.now()
        )
    return reply


def reply_deliver(*, reply_id: Any) -> Message | None:
    """Send the reply through its channel's adapter; never sends twice.

    The send is claimed (pending → sending) before the outside call, so a
    redelivered task skips it. A transient failure puts the claim back and
    re-raises DeliveryError for the task to retry; a permanent one is
    recorded as failed with the reason.
    """
    claimed = Message.objects.filter(
        pk=reply_id, role=Message.Role.ASSISTANT, status=Message.Status.PENDING
    ).update(status=Message.Status.SENDING)
    if not claimed:
        logger.info("idempotent_skip delivery reply=%s", reply_id)
        return None
    reply = _load_reply(reply_id)
    try:
        result = adapter_for(reply.channel).deliver(reply)
    except DeliveryError as exc:
        if exc.transient:
            Message.objects.filter(pk=reply.pk, status=Message.Status.SENDING).update(
                status=Message.Status.PENDING, error=str(exc)[:2000]
            )
            raise
        result_status, error, external = Message.Status.FAILED, str(exc), ""
    else:
        result_status, error, external = result.status, result.error, result.external_id
    updates: dict[str, Any] = {"status": result_status, "error": error[:2000]}
    if external:
        updates["external_id"] = external
    if result_status in (Message.Status.SENT, Message.Status.DELIVERED):
        updates["sent_at"] = timezone.now()
    Message.objects.filter(pk=reply.pk).update(**updates)
    logger.info(
        "reply_delivered reply=%s channel=%s status=%s",
        reply.pk,
        reply.channel,
        result_status,
    )
    reply.refresh_from_db()
    return reply


def reply_delivery_fail(*, reply_id: Any, error: str) -> None:
    """Record that delivery gave up after its retry budget."""
    Message.objects.filter(pk=reply_id, role=Message.Role.ASSISTANT).exclude(
        status__in=(Message.Status.SENT, Message.Status.DELIVERED, Message.Status.READ)
    ).update(status=Message.Status.FAILED, error=error[:2000])
    logger.error("reply_delivery_failed reply=%s", reply_id)


def reply_process_sync(*, message: Message) -> Message | None:
    """Run the whole reply path in this process (for ``POST /process``)."""
    reply = reply_generate(message_id=message.pk)
    if reply is None:
        return None
    return reply_finish_sync(reply=reply)


def reply_finish_sync(*, reply: Message) -> Message:
    """Publish and deliver a generated reply here, each at most once.

    Both steps are idempotent, so a ``POST /process`` retried after one of
    them failed (Pub/Sub unreachable) finishes what the first left undone.
    """
    if reply.published_at is None:
        reply_publish(reply_id=reply.pk)
    reply_deliver(reply_id=reply.pk)
    return _load_reply(reply.pk)


# Outbound status order: a late "delivered" must not undo "read".
_STATUS_RANK = {
    Message.Status.PENDING: 0,
    Message.Status.SENDING: 1,
    Message.Status.LOGGED: 1,
    Message.Status.SENT: 2,
    Message.Status.DELIVERED: 3,
    Message.Status.READ: 4,
}


def message_status_update(
    *, channel: str, external_id: str, status: str, error: str = ""
) -> bool:
    """Move an outbound message's status forward from a channel's status report.

    ``status`` is sent, delivered, read or failed (with ``error``). Returns
    whether a message changed; an unknown id, a repeat or an older status
    changes nothing. Never calls the AI.
    """
    reply = (
        Message.objects.filter(
            channel=channel, external_id=external_id, role=Message.Role.ASSISTANT
        )
        .only("pk", "status")
        .first()
    )
    if reply is None:
        return False
    rank = _STATUS_RANK.get(reply.status)
    updates: dict[str, Any]
    if status == Message.Status.FAILED:
        if rank is None or rank >= _STATUS_RANK[Message.Status.DELIVERED]:
            return False
        updates = {"status": Message.Status.FAILED, "error": error[:2000]}
    else:
        new_rank = _STATUS_RANK.get(status)
        if new_rank is None or rank is None or new_rank <= rank:
            return False
        updates = {"status": status}
    changed = (
        Message.objects.filter(pk=reply.pk, status=reply.status).update(**updates) > 0
    )
    logger.info(
        "message_status reply=%s status=%s changed=%s", reply.pk, status, changed
    )
    return changed


def message_rate_limited(
    *, tenant: Tenant, channel: str, user_id: str, account: Channel | None = None
) -> bool:
    """Return whether the sender used up its rate limit in its window.

    The limit is the channel account's, else AI_USER_RATE_LIMIT. Counts the
    sender's messages that went (or are going) to the model; stored but
    ignored or rate-limited ones do not count. Concurrent deliveries may
    overshoot by a few: this caps spend, it is not a quota.
    """
    limit = rate_limit_parse(agent_for(account).rate_limit)
    if limit is None:
        return False
    count, seconds = limit
    since = timezone.now() - timedelta(seconds=seconds)
    used = (
        Message.objects.filter(
            conversation__tenant=tenant,
            conversation__channel=channel,
            conversation__account=account,
            conversation__external_user_id=user_id,
            role=Message.Role.USER,
            created_at__gte=since,
        )
        .exclude(status__in=(Message.Status.IGNORED, Message.Status.RATE_LIMITED))
        .count()
    )
    return used >= count
