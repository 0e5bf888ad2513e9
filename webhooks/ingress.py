"""Process the generic API source and Pub/Sub push deliveries."""

from __future__ import annotations

import base64
import binascii
import logging
import uuid
from typing import Any

from django.db import transaction

from conversations.models import Message
from conversations.routes import inbound_validate
from vocoeng import correlation
from vocoeng.bus import topic_kinds
from vocoeng.channels import api_channel_for
from vocoeng.models import Tenant
from vocoeng.routing import PermanentMessageError, decode_json, route_message

from .models import WebhookDelivery
from .parsers import InboundItem
from .services import DeliveryRejected, _finish, inbound_ingest

logger = logging.getLogger(__name__)

TENANT_HEADER = "X-VocoEng-Tenant"
VERDICT = WebhookDelivery.Verdict


def _reject(delivery: WebhookDelivery, reason: str) -> DeliveryRejected:
    _finish(delivery, verdict=VERDICT.REJECTED, error=reason, summary={})
    return DeliveryRejected(reason)


def api_delivery_process(
    *, delivery: WebhookDelivery, raw: bytes | None = None
) -> dict[str, Any]:
    """Accept one inbound chat message for the key's tenant; return its ids.

    ``raw``: the body as received (the stored text has bad UTF-8 replaced),
    so a body that is not UTF-8 is rejected rather than half-read.
    """
    tenant = Tenant.objects.get(slug=delivery.headers[TENANT_HEADER])
    try:
        data = decode_json(raw if raw is not None else delivery.body.encode())
        valid = inbound_validate(data)
    except PermanentMessageError as exc:
        raise _reject(delivery, exc.reason) from exc
    source = valid["source"]
    external_id = valid.get("message_id") or f"api-{uuid.uuid4()}"
    owner = (
        Message.objects.filter(channel=source, external_id=external_id)
        .values_list("conversation__tenant_id", flat=True)
        .first()
    )
    if owner is not None and owner != tenant.pk:
        raise _reject(delivery, "message_id is already used by another tenant")
    timestamp = valid.get("timestamp")
    item = InboundItem(
        message_id=external_id,
        user_id=valid["user_id"],
        text=valid["message"],
        type="text",
        timestamp=timestamp.isoformat() if timestamp else None,
        metadata=dict(valid.get("metadata") or {}),
    )
    with transaction.atomic():
        outcome = inbound_ingest(
            item=item,
            source=source,
            tenant=tenant,
            received_at=delivery.received_at.isoformat(),
            # The tenant's API source channel, when it has one, sets the agent.
            account=api_channel_for(tenant=tenant) if source == "api" else None,
        )
        stored = (
            Message.objects.filter(channel=source, external_id=external_id)
            .values_list("pk", "status")
            .first()
        )
        result = {
            "id": str(stored[0]) if stored else None,
            "message_id": external_id,
            "outcome": outcome,
            "status": stored[1] if stored else "published",
        }
        _finish(delivery, verdict=VERDICT.PROCESSED, summary=result)
    return result


def api_delivery_replay(*, delivery: WebhookDelivery) -> dict[str, Any]:
    """Process a stored API delivery again."""
    return api_delivery_process(delivery=delivery)


def _kind_for(subscription: str) -> str | None:
    """Return the kind of a subscription named after its topic (``<topic>-...``)."""
    name = subscription.rsplit("/", 1)[-1]
    for topic, kind in sorted(topic_kinds().items(), key=lambda kv: -len(kv[0])):
        if name == topic or name.startswith(topic + "-"):
            return kind
    return None


def _envelope(delivery: WebhookDelivery) -> tuple[bytes, dict[str, str], str, str]:
    try:
        envelope = decode_json(delivery.body)
    except PermanentMessageError as exc:
        raise _reject(delivery, exc.reason) from exc
    message = envelope.get("message") if isinstance(envelope, dict) else None
    if not isinstance(message, dict):
        raise _reject(delivery, "not a Pub/Sub push envelope (no message object)")
    try:
        data = base64.b64decode(message.get("data") or "", validate=True)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise _reject(delivery, f"message.data is not base64: {exc}") from exc
    attributes = message.get("attributes") or {}
    if not isinstance(attributes, dict):
        raise _reject(delivery, "message.attributes is not an object")
    message_id = str(message.get("messageId") or message.get("message_id") or "")
    subscription = str(envelope.get("subscription") or "")
    return (
        data,
        {str(k): str(v) for k, v in attributes.items()},
        message_id,
        subscription,
    )


def pubsub_delivery_process(*, delivery: WebhookDelivery) -> dict[str, Any]:
    """Route one pushed message and enqueue its work before returning.

    A message that can never succeed is recorded as rejected with the reason
    and returned normally (the caller acks it); a broker error propagates so
    the push is answered 5xx and Pub/Sub redelivers. The work carries the
    message's correlation id, as the bridge's does (its ``correlation_id``
    attribute, else ``pubsub-<message id>``), so one grep follows a message
    whichever way it arrived.
    """
    data, attributes, message_id, subscription = _envelope(delivery)
    given = attributes.get("correlation_id")
    if correlation.well_formed(given):
        correlation_id = given
    else:
        correlation_id = f"pubsub-{message_id}" if message_id else correlation.current()
    token = correlation.activate(correlation_id)
    try:
        return _pubsub_route(delivery, data, attributes, message_id, subscription)
    finally:
        correlation.deactivate(token)


def _pubsub_route(
    delivery: WebhookDelivery,
    data: Any,
    attributes: dict[str, str],
    message_id: str,
    subscription: str,
) -> dict[str, Any]:
    kind = attributes.get("kind") or _kind_for(subscription)
    summary: dict[str, Any] = {"message_id": message_id, "kind": kind}
    try:
        if not kind:
            raise PermanentMessageError(
                f"no kind attribute and subscription {subscription!r} is unknown"
            )
        if message_id:
            attributes.setdefault("idempotency_key", message_id)
        payload = decode_json(data)
        with transaction.atomic():
            signature = route_message(kind=kind, data=payload, attributes=attributes)
    except PermanentMessageError as exc:
        _finish(delivery, verdict=VERDICT.REJECTED, error=exc.reason, summary=summary)
        logger.warning("pubsub_push_rejected id=%s reason=%s", message_id, exc.reason)
        return {**summary, "outcome": "rejected", "reason": exc.reason}
    if signature is not None:
        signature.apply_async()  # committed above, so the worker sees the rows
    summary["outcome"] = "queued" if signature is not None else "duplicate"
    _finish(delivery, verdict=VERDICT.PROCESSED, summary=summary)
    return summary


def pubsub_delivery_replay(*, delivery: WebhookDelivery) -> dict[str, Any]:
    """Process a stored push delivery again."""
    return pubsub_delivery_process(delivery=delivery)
