"""Record webhook deliveries and hand what they hold to the bus.

Views verify the request and call one function here. A delivery is recorded
(committed) before it is parsed, then processed in one transaction: inbound
messages go to the bus (BUS=direct: stored by the chat_message route, the
reply chain enqueued after commit), status reports move outbound messages.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from conversations.models import Message
from conversations.services import (
    message_rate_limited,
    message_receive,
    message_status_update,
)
from vocoeng import bus
from vocoeng.models import Tenant
from vocoeng.routing import PermanentMessageError
from vocoeng.services import tenant_get_default

from .models import WebhookDelivery
from .parsers import InboundItem, NotANotification, parse_aisensy, parse_whatsapp

logger = logging.getLogger(__name__)

# Headers worth keeping with a delivery (never Authorization or secrets).
KEPT_HEADERS = (
    "Content-Type",
    "User-Agent",
    "X-Hub-Signature-256",
    "X-Forwarded-For",
    "X-Cloud-Trace-Context",
    "X-VocoEng-Tenant",
)
# A stored message still ``received`` this long after it arrived lost its
# chain (e.g. the broker failed after commit): a redelivery enqueues it again.
# Younger duplicates are Meta retries of a message whose chain is queued.
REQUEUE_AFTER = timedelta(seconds=30)


Processor = Callable[..., dict]


class DeliveryRejected(Exception):
    """Reject a delivery that can never be processed (answered 400)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def delivery_record(
    *,
    source: str,
    body: bytes,
    headers: dict[str, str],
    verdict: str = WebhookDelivery.Verdict.RECEIVED,
    error: str = "",
) -> WebhookDelivery:
    """Store a delivery as received (committed at once, outside any transaction)."""
    kept = {name: headers[name] for name in KEPT_HEADERS if name in headers}
    return WebhookDelivery.objects.create(
        source=source,
        headers=kept,
        body=body.decode("utf-8", errors="replace"),
        verdict=verdict,
        error=error,
    )


def _finish(
    delivery: WebhookDelivery, *, verdict: str, error: str = "", summary: dict
) -> None:
    delivery.verdict, delivery.error, delivery.summary = verdict, error, summary
    delivery.processed_at = timezone.now()
    WebhookDelivery.objects.filter(pk=delivery.pk).update(
        verdict=verdict,
        error=error[:4000],
        summary=summary,
        processed_at=delivery.processed_at,
    )


def delivery_fail(*, delivery: WebhookDelivery, error: str) -> None:
    """Record that processing failed on our side (the sender will retry)."""
    _finish(delivery, verdict=WebhookDelivery.Verdict.FAILED, error=error, summary={})


def inbound_ingest(
    *, item: InboundItem, source: str, tenant: Tenant, received_at: str
) -> str:
    """Hand one inbound message to the bus once; return what happened to it.

    Outcomes: ``queued`` (on the bus), ``duplicate`` (seen before, nothing
    triggered), ``ignored`` (stored, no AI call: reactions, unknown types),
    ``rate_limited`` (stored, over AI_USER_RATE_LIMIT).
    """
    existing = (
        Message.objects.filter(channel=source, external_id=item.message_id)
        .only("pk", "status", "created_at")
        .first()
    )
    if existing is not None and not (
        existing.status == Message.Status.RECEIVED
        and existing.created_at < timezone.now() - REQUEUE_AFTER
    ):
        return "duplicate"
    payload = item.payload(source=source, received_at=received_at)
    status = None
    if not item.replyable:
        status = Message.Status.IGNORED
    elif existing is None and message_rate_limited(
        tenant=tenant, channel=source, user_id=item.user_id
    ):
        status = Message.Status.RATE_LIMITED
    if status is not None:
        message_receive(
            tenant=tenant,
            channel=source,
            user_id=item.user_id,
            text=item.text,
            external_id=item.message_id,
            metadata=payload["metadata"],
            status=status,
        )
        return str(status)
    bus.publish(
        topic=settings.PUBSUB_TOPIC_MESSAGES,
        payload=payload,
        key=f"{source}:{item.message_id}",
        attributes={"tenant": tenant.slug, "source": source},
    )
    return "queued"


def _process(delivery: WebhookDelivery, *, parse: Any, source: str) -> dict:
    try:
        body = json.loads(delivery.body)
    except json.JSONDecodeError as exc:
        reason = f"body is not JSON: {exc.msg}"
        _finish(
            delivery, verdict=WebhookDelivery.Verdict.REJECTED, error=reason, summary={}
        )
        raise DeliveryRejected(reason) from exc
    try:
        notification = parse(body)
    except NotANotification as exc:
        _finish(
            delivery,
            verdict=WebhookDelivery.Verdict.REJECTED,
            error=str(exc),
            summary={},
        )
        raise DeliveryRejected(str(exc)) from exc
    tenant = tenant_get_default()
    received_at = delivery.received_at.isoformat()
    outcomes: dict[str, int] = {}
    problems = list(notification.problems)
    statuses = 0
    with transaction.atomic():
        for item in notification.messages:
            try:
                with transaction.atomic():
                    outcome = inbound_ingest(
                        item=item, source=source, tenant=tenant, received_at=received_at
                    )
            except PermanentMessageError as exc:
                outcome = "invalid"
                problems.append(f"{item.message_id}: {exc.reason}")
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
        for status in notification.statuses:
            statuses += message_status_update(
                channel=source,
                external_id=status.message_id,
                status=status.status,
                error=status.error,
            )
        summary = {
            "messages": outcomes,
            "statuses": len(notification.statuses),
            "statuses_applied": statuses,
            "ignored": notification.ignored,
        }
        acted = notification.messages or notification.statuses
        verdict = (
            WebhookDelivery.Verdict.PROCESSED
            if acted
            else WebhookDelivery.Verdict.IGNORED
        )
        _finish(delivery, verdict=verdict, error="; ".join(problems), summary=summary)
    logger.info(
        "webhook_processed source=%s delivery=%s messages=%s statuses=%s",
        source,
        delivery.pk,
        outcomes,
        statuses,
    )
    return summary


def whatsapp_delivery_process(*, delivery: WebhookDelivery) -> dict:
    """Process a recorded WhatsApp delivery; raise DeliveryRejected if malformed."""
    return _process(delivery, parse=parse_whatsapp, source="whatsapp")


def aisensy_delivery_process(*, delivery: WebhookDelivery) -> dict:
    """Process a recorded AiSensy delivery; raise DeliveryRejected if malformed."""
    return _process(delivery, parse=parse_aisensy, source="aisensy")


def delivery_replay(*, delivery: WebhookDelivery) -> dict:
    """Process a stored delivery again (admin); duplicates change nothing."""
    process = {
        WebhookDelivery.Source.WHATSAPP: whatsapp_delivery_process,
        WebhookDelivery.Source.AISENSY: aisensy_delivery_process,
    }.get(delivery.source)
    if process is None:
        from .ingress import api_delivery_replay, pubsub_delivery_replay

        process = {
            WebhookDelivery.Source.API: api_delivery_replay,
            WebhookDelivery.Source.PUBSUB: pubsub_delivery_replay,
        }[delivery.source]
    WebhookDelivery.objects.filter(pk=delivery.pk).update(replays=delivery.replays + 1)
    return process(delivery=delivery)
