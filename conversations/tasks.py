"""Celery tasks of the reply chain: thin wrappers that take ids."""

from __future__ import annotations

import logging

from celery import shared_task

from vocoeng.pubsub import PubSubError
from vocoeng.queues import Queue

from . import services
from .delivery import DeliveryError
from .stores import StoreError

logger = logging.getLogger(__name__)


@shared_task(
    name="conversations.reply_generate",
    bind=True,
    # The chain hands results on in its messages; storing them would cost a
    # database write per hop for nobody to read.
    ignore_result=True,
    acks_late=True,
    reject_on_worker_lost=True,
    route=Queue.AI,
    autoretry_for=(StoreError,),
    retry_backoff=True,
    retry_backoff_max=60,
    retry_jitter=True,
    max_retries=5,
)
def reply_generate(self, message_id: str) -> str | None:
    """Generate and store the reply; return its id (None ends the chain)."""
    reply = services.reply_generate(message_id=message_id)
    return str(reply.pk) if reply is not None else None


@shared_task(
    name="conversations.reply_publish",
    bind=True,
    # The chain hands results on in its messages; storing them would cost a
    # database write per hop for nobody to read.
    ignore_result=True,
    acks_late=True,
    reject_on_worker_lost=True,
    route=Queue.DEFAULT,
    # 2, 4, ... 300 s between tries: about half an hour of Pub/Sub outage.
    max_retries=12,
)
def reply_publish(self, reply_id: str | None) -> str | None:
    """Publish the response of the reply (skipped when there is no reply).

    While Pub/Sub is unreachable the task retries with backoff. Once the
    budget is spent, or when Pub/Sub refuses for good (a topic missing), the
    customer's reply still goes on to delivery: the response stays recorded
    (BusMessage, no Pub/Sub id) and the failure is logged with its reason.
    """
    if reply_id is None:
        return None
    try:
        services.reply_publish(reply_id=reply_id)
    except (PubSubError, ConnectionError, TimeoutError) as exc:
        transient = getattr(exc, "transient", True)
        if transient and self.request.retries < self.max_retries:
            countdown = min(300, 2 ** (self.request.retries + 1))
            raise self.retry(exc=exc, countdown=countdown) from exc
        logger.error(
            "reply_publish_gave_up reply=%s tries=%s error=%s: delivering anyway",
            reply_id,
            self.request.retries + 1,
            exc,
        )
    return reply_id


@shared_task(
    name="conversations.reply_deliver",
    bind=True,
    # The chain hands results on in its messages; storing them would cost a
    # database write per hop for nobody to read.
    ignore_result=True,
    acks_late=True,
    reject_on_worker_lost=True,
    route=Queue.DEFAULT,
    max_retries=6,
)
def reply_deliver(self, reply_id: str | None) -> str | None:
    """Deliver the reply through its channel; retry transient failures."""
    if reply_id is None:
        return None
    try:
        services.reply_deliver(reply_id=reply_id)
    except DeliveryError as exc:
        if not exc.transient:
            raise
        if self.request.retries >= self.max_retries:
            services.reply_delivery_fail(reply_id=reply_id, error=str(exc))
            return None
        countdown = exc.retry_after or min(300, 2 ** (self.request.retries + 1))
        raise self.retry(exc=exc, countdown=countdown) from exc
    return reply_id
