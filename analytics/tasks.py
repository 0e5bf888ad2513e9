"""Celery task of the analytics pipeline: store one batch of validated events."""

from __future__ import annotations

from typing import Any

from celery import shared_task
from django.db import InterfaceError, OperationalError

from vocoeng.queues import Queue

from . import services


@shared_task(
    name="analytics.ingest_batch",
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    route=Queue.ANALYTICS,
    autoretry_for=(OperationalError, InterfaceError),
    retry_backoff=True,
    retry_backoff_max=60,
    retry_jitter=True,
    max_retries=8,
)
def ingest_batch(self, events: list[dict[str, Any]]) -> int:
    """Annotate and insert validated events (idempotent on event_id)."""
    return services.events_store(events=events)
