"""Publish messages on the bus: Celery at once (BUS=direct) or Google Pub/Sub.

Inbound topics (messages, pipeline jobs, VOC events) go through the routing
table: with BUS=direct the route's Celery signature is enqueued after the
current transaction commits; with BUS=pubsub the message is published and the
bridge (or the push endpoint) routes it later. Outbound topics (responses) are
recorded in :class:`BusMessage`, keyed so a retried publish happens once, and
with BUS=pubsub also published.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction

from . import correlation
from .models import BusMessage
from .routing import route_message

logger = logging.getLogger(__name__)


def topic_kinds() -> dict[str, str]:
    """Return the kind of each inbound topic (the routing table's keys)."""
    return {
        settings.PUBSUB_TOPIC_MESSAGES: "chat_message",
        settings.PUBSUB_TOPIC_JOBS: "pipeline_job",
        settings.PUBSUB_TOPIC_VOC: "voc_event",
    }


def publish(
    *, topic: str, payload: Any, key: str, attributes: dict[str, str] | None = None
) -> BusMessage | None:
    """Publish ``payload`` on ``topic``; ``key`` makes a retry publish once.

    Returns the BusMessage record for recorded topics, None for inbound topics
    handed straight to Celery. The correlation id current here (the request's,
    the task's) goes with the message as its ``correlation_id`` attribute, so
    the bridge, the push endpoint and consumers of the responses topic log it.
    """
    attributes = dict(attributes or {})
    if (cid := correlation.current()) is not None:
        attributes.setdefault("correlation_id", cid)
    # Every message names its key: Pub/Sub delivers at least once, and a
    # publish that timed out here may still land (the client keeps trying),
    # so a retried publish can arrive twice; consumers dedup on the key.
    attributes.setdefault("idempotency_key", key)
    kind = topic_kinds().get(topic)
    if kind is not None:
        attributes.setdefault("kind", kind)
    if settings.BUS == "direct" and kind is not None:
        signature = route_message(kind=kind, data=payload, attributes=attributes)
        if signature is not None:
            transaction.on_commit(signature.apply_async)
        return None
    record = _record(topic=topic, payload=payload, key=key, attributes=attributes)
    if settings.BUS == "pubsub" and not record.pubsub_message_id:
        from . import pubsub  # the only module that imports google-cloud-pubsub

        message_id = pubsub.publish(
            topic=topic,
            data=json.dumps(payload, separators=(",", ":")).encode(),
            attributes=attributes,
        )
        BusMessage.objects.filter(pk=record.pk).update(pubsub_message_id=message_id)
        record.pubsub_message_id = message_id
    logger.info("bus_published topic=%s key=%s bus=%s", topic, key, settings.BUS)
    return record


def _record(
    *, topic: str, payload: Any, key: str, attributes: dict[str, str]
) -> BusMessage:
    try:
        with transaction.atomic():
            return BusMessage.objects.create(
                topic=topic, key=key, payload=payload, attributes=attributes
            )
    except IntegrityError:
        return BusMessage.objects.get(topic=topic, key=key)
