"""Celery tasks of the webhooks: the worker's half of a WhatsApp/AiSensy delivery."""

from __future__ import annotations

from celery import shared_task

from vocoeng.queues import Queue

from . import services


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
