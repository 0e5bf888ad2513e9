"""Celery tasks of the reply chain: thin wrappers that take ids."""

from __future__ import annotations

from celery import shared_task

from vocoeng.queues import Queue

from . import services
from .delivery import DeliveryError
from .stores import StoreError


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
    autoretry_for=(ConnectionError, TimeoutError),
    retry_backoff=True,
    retry_jitter=True,
    max_retries=8,
)
def reply_publish(self, reply_id: str | None) -> str | None:
    """Publish the response of the reply (skipped when there is no reply)."""
    if reply_id is None:
        return None
    services.reply_publish(reply_id=reply_id)
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
