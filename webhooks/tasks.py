"""Celery tasks of the webhooks: the worker's half of a WhatsApp/AiSensy delivery."""

from __future__ import annotations

import logging

from celery import shared_task

from vocoeng import correlation
from vocoeng.channels import channels_remembered
from vocoeng.queues import Queue

from . import services

logger = logging.getLogger(__name__)


@shared_task(
    name="webhooks.delivery_process",
    bind=True,
    ignore_result=True,
    acks_late=True,
    reject_on_worker_lost=True,
    route=Queue.DEFAULT,
    # 2, 4, ... 32 s between tries (about a minute). Then a dependency still
    # down (database, broker, Pub/Sub) leaves the delivery `received`, its
    # error noted, and the sweep (every WEBHOOK_SWEEP_INTERVAL_SECONDS) queues
    # it again until it goes through; any other error records it failed, for
    # a replay. Not a longer budget: the sweep's copies would multiply.
    max_retries=5,
)
def delivery_process(self, delivery_id: str) -> None:
    """Parse a recorded delivery and act on it, once (see the service)."""
    try:
        services.delivery_process_queued(delivery_id=delivery_id)
    except services.ChainsNotEnqueued:
        raise  # the sweep takes it again once its messages may be requeued
    except Exception as exc:
        if self.request.retries < self.max_retries:
            countdown = min(300, 2 ** (self.request.retries + 1))
            raise self.retry(exc=exc, countdown=countdown) from exc
        from vocoeng.health import dependency_down  # web module: not at import

        error = f"{type(exc).__name__}: {exc}"
        if dependency_down(exc) is not None:
            services.delivery_defer_by_id(delivery_id=delivery_id, error=error)
            return
        # For good: recorded as failed with the error, for a replay from the admin.
        services.delivery_fail_by_id(delivery_id=delivery_id, error=error)
        raise


@shared_task(
    name="webhooks.deliveries_process",
    ignore_result=True,
    acks_late=True,
    reject_on_worker_lost=True,
    route=Queue.DEFAULT,
)
def deliveries_process(items: list[list[str | None]]) -> None:
    """Process the recorded deliveries ``[[delivery id, correlation id], ...]``.

    What the web process's outbox publishes: the deliveries committed
    together. They are processed together, in one transaction
    (services.deliveries_process_many: the fast path of BUS=direct), each
    with its own verdict and under the correlation id of the request that
    brought it. Otherwise, or when that transaction fails, each is processed
    as ``webhooks.delivery_process`` does it, in a transaction of its own;
    one that fails then goes on alone, as a ``delivery_process`` task (with
    its retries); should even that not reach the broker, the delivery stays
    ``received`` and the sweep queues it. A redelivered message (the worker
    died) processes again only those still ``received``.
    """
    with channels_remembered():  # each phone number's channel read once
        if len(items) > 1:
            try:
                if services.deliveries_process_many(items=items):
                    return
            except Exception as exc:  # undone: each on its own, as below
                logger.warning(
                    "webhook_deliveries_one_by_one deliveries=%d error=%s",
                    len(items),
                    f"{type(exc).__name__}: {exc}"[:200],
                )
        for delivery_id, correlation_id in items:
            with correlation.active(correlation_id):
                try:
                    services.delivery_process_queued(delivery_id=delivery_id)
                except services.ChainsNotEnqueued:
                    pass  # back to received, saying why: the sweep takes it again
                except Exception as exc:
                    logger.warning(
                        "webhook_delivery_retry delivery=%s error=%s",
                        delivery_id,
                        f"{type(exc).__name__}: {exc}"[:200],
                    )
                    _alone(delivery_id, correlation_id)


def _alone(delivery_id: str, correlation_id: str | None) -> None:
    """Queue ``delivery_process`` for one delivery, retried from its first try."""
    headers = correlation.headers_for(correlation_id) if correlation_id else {}
    try:
        delivery_process.apply_async((delivery_id,), countdown=2, headers=headers)
    except Exception:  # the broker too: the sweep takes it
        logger.exception("webhook_delivery_unqueued delivery=%s", delivery_id)


@shared_task(
    name="webhooks.deliveries_sweep",
    ignore_result=True,
    acks_late=True,
    route=Queue.DEFAULT,
)
def deliveries_sweep() -> int:
    """Enqueue again the deliveries whose task was lost (a beat task)."""
    return services.deliveries_sweep()


@shared_task(
    name="webhooks.claims_prune",
    ignore_result=True,
    acks_late=True,
    route=Queue.DEFAULT,
)
def claims_prune() -> int:
    """Delete the dedup claims older than PUBSUB_CLAIM_KEEP_DAYS (a beat task)."""
    import logging
    from datetime import timedelta

    from django.conf import settings
    from django.utils import timezone

    from .bridge.dedup import dedup_prune

    cutoff = timezone.now() - timedelta(days=settings.PUBSUB_CLAIM_KEEP_DAYS)
    deleted = dedup_prune(older_than=cutoff)
    if deleted:
        logging.getLogger(__name__).info("bridge_claims_pruned count=%s", deleted)
    return deleted
