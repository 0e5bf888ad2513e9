"""Record dead letters (messages that can never succeed) and replay them."""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from .claims_redis import redis_store
from .correlation import headers_for
from .models import DeadLetter, ProcessedMessage
from .routing import PermanentMessageError, decode_json, route_message

logger = logging.getLogger(__name__)

# Pub/Sub caps an attribute value at 1024 bytes.
_MAX_ATTRIBUTE = 1000


def dead_letter_record(
    *,
    source: str,
    subscription: str,
    message_id: str,
    kind: str,
    data: bytes,
    attributes: dict[str, str],
    reason: str,
) -> DeadLetter:
    """Store the dead letter once per (source, subscription, message id)."""
    try:
        with transaction.atomic():
            return DeadLetter.objects.create(
                source=source,
                subscription=subscription,
                message_id=message_id,
                kind=kind,
                data=data,
                attributes=attributes,
                reason=reason,
            )
    except IntegrityError:
        return DeadLetter.objects.get(
            source=source, subscription=subscription, message_id=message_id
        )


def dead_letter_publish(*, letter: DeadLetter) -> str:
    """Publish the dead letter to PUBSUB_TOPIC_DEAD_LETTER, reason in attributes.

    Raises vocoeng.pubsub.PubSubError when Pub/Sub does not accept it.
    """
    from . import pubsub  # the only module that imports google-cloud-pubsub

    attributes = {
        **letter.attributes,
        "dead_letter_reason": letter.reason[:_MAX_ATTRIBUTE],
        "dead_letter_source": letter.source,
        "dead_letter_subscription": letter.subscription,
        "dead_letter_message_id": letter.message_id,
    }
    if letter.kind:
        attributes.setdefault("kind", letter.kind)
    return pubsub.publish(
        topic=settings.PUBSUB_TOPIC_DEAD_LETTER,
        data=bytes(letter.data),
        attributes=attributes,
    )


def dead_letter_replay(*, letter: DeadLetter) -> bool:
    """Route the dead letter again and enqueue its chain (after a fix).

    Returns True when a chain was enqueued, False when the route found nothing
    to do; raises PermanentMessageError when it still fails, with the reason.
    """
    attributes = dict(letter.attributes)
    kind = attributes.get("kind") or letter.kind
    if not kind:
        raise PermanentMessageError("the message has no kind")
    data: Any = decode_json(bytes(letter.data))
    signature = route_message(kind=kind, data=data, attributes=attributes)
    if signature is not None:
        signature.apply_async(headers=headers_for(f"replay-{letter.pk}"))
    key = attributes.get("idempotency_key") or letter.message_id
    if (store := redis_store()) is not None:
        store.finish_many([(kind, key)], dead=False)
    else:
        ProcessedMessage.objects.filter(kind=kind, key=key).update(
            state=ProcessedMessage.State.DONE
        )
    DeadLetter.objects.filter(pk=letter.pk).update(replayed_at=timezone.now())
    logger.info(
        "dead_letter_replayed id=%s kind=%s enqueued=%s",
        letter.pk,
        kind,
        signature is not None,
    )
    return signature is not None
