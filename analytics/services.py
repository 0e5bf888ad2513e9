"""Ingest VOC events: validate, enqueue in batches, annotate and bulk-insert.

Batching is per request (or per bus message): the valid events of one call are
split into chunks of ``VOC_BATCH_SIZE`` and each chunk is one
``analytics.ingest_batch`` task, which annotates it and writes it with one
``bulk_create(ignore_conflicts=True)``. Nothing is buffered in a process, so a
202 means every accepted event is in the broker, and a redelivered or resent
event is inserted once (``event_id`` is unique).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from celery import group
from celery.canvas import Signature
from django.conf import settings
from django.utils import timezone
from kombu.exceptions import OperationalError as BrokerError

from vocoeng.models import Tenant

from . import metrics
from .models import EventType, VocEvent
from .schemas import EventInvalid, event_text, event_validate, parse_ts
from .sentiment import sentiment_score
from .topics import topic_matcher

logger = logging.getLogger(__name__)

UNKNOWN_TENANT = "unknown tenant"
_ENVELOPE = ("event_id", "tenant_id", "tenant_pk", "timestamp", "event_type")


class IngestUnavailable(Exception):
    """Report that accepted events could not be handed to the broker."""


@dataclass
class IngestResult:
    accepted: int = 0
    rejected: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)


def _raw_event_id(raw: Any) -> str | None:
    value = raw.get("event_id") if isinstance(raw, dict) else None
    return value if isinstance(value, str) else None


def events_validate(
    *, events: list[Any], tenant: Tenant | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Split ``events`` into valid events and errors ``{index, event_id, reason}``.

    With ``tenant`` (an API key's), events must name that tenant; without it
    (staff, the bus) they may name any existing tenant. Valid events carry
    ``tenant_pk`` for the insert.
    """
    errors: list[dict[str, Any]] = []
    checked: list[tuple[int, dict[str, Any]]] = []
    for index, raw in enumerate(events):
        try:
            checked.append((index, event_validate(raw)))
        except EventInvalid as exc:
            errors.append(
                {"index": index, "event_id": _raw_event_id(raw), "reason": exc.reason}
            )
    if tenant is not None:
        tenant_pks = {tenant.slug: tenant.pk}
    else:
        slugs = {event["tenant_id"] for _, event in checked}
        tenant_pks = dict(
            Tenant.objects.filter(slug__in=slugs).values_list("slug", "pk")
        )
    valid = []
    for index, event in checked:
        pk = tenant_pks.get(event["tenant_id"])
        if pk is None:
            reason = (
                UNKNOWN_TENANT
                if tenant is None
                else f"tenant_id {event['tenant_id']!r} is not your tenant"
            )
            errors.append(
                {"index": index, "event_id": event["event_id"], "reason": reason}
            )
            continue
        event["tenant_pk"] = pk
        valid.append(event)
    errors.sort(key=lambda e: e["index"])
    return valid, errors


def events_signature(*, events: list[dict[str, Any]]) -> Signature:
    """Return the Celery signature storing ``events`` in VOC_BATCH_SIZE chunks."""
    from .tasks import ingest_batch

    size = max(1, settings.VOC_BATCH_SIZE)
    chunks = [events[i : i + size] for i in range(0, len(events), size)]
    if len(chunks) == 1:
        return ingest_batch.si(chunks[0])
    return group(ingest_batch.si(chunk) for chunk in chunks)


def events_ingest(
    *, events: list[Any], tenant: Tenant | None = None, source: str = "api"
) -> IngestResult:
    """Validate ``events``, enqueue the valid ones and report the rejected ones.

    Raises IngestUnavailable when the broker cannot take them (nothing is
    accepted then).
    """
    metrics.EVENTS_CONSUMED.labels(source=source).inc(len(events))
    valid, errors = events_validate(events=events, tenant=tenant)
    if errors:
        metrics.EVENTS_REJECTED.labels(source=source).inc(len(errors))
        logger.warning(
            "voc_events_rejected source=%s count=%s first_reason=%s",
            source,
            len(errors),
            errors[0]["reason"],
        )
    if valid:
        try:
            events_signature(events=valid).apply_async()
        except BrokerError as exc:
            logger.error("voc_enqueue_failed source=%s error=%s", source, exc)
            raise IngestUnavailable(str(exc)) from exc
    return IngestResult(accepted=len(valid), rejected=len(errors), errors=errors)


def _row(
    event: dict[str, Any], *, now: Any, match_topic: Any
) -> VocEvent:  # one row per event, annotated
    text = event_text(event)
    is_qos = event["event_type"] == EventType.QOS_METRIC
    return VocEvent(
        event_id=event["event_id"],
        tenant_id=event["tenant_pk"],
        event_type=event["event_type"],
        ts=parse_ts(event["timestamp"]),
        payload={k: v for k, v in event.items() if k not in _ENVELOPE},
        sentiment=sentiment_score(text),
        topic=match_topic(text),
        metric=event["metric"] if is_qos else None,
        value=float(event["value"]) if is_qos else None,
        processed_at=now,
    )


def events_store(*, events: list[dict[str, Any]]) -> int:
    """Annotate validated events and insert them once; return how many were given.

    One ``bulk_create(ignore_conflicts=True)``: an event_id already stored is
    skipped, so a retried batch or a resent event never counts twice.
    """
    started = time.perf_counter()
    now = timezone.now()
    match_topic = topic_matcher()
    rows = [_row(event, now=now, match_topic=match_topic) for event in events]
    # In event_id order: two batches sharing events (a resent batch) insert
    # them in one order, so neither waits on a row the other holds while
    # holding one it needs (PostgreSQL would end one with a deadlock).
    rows.sort(key=lambda row: str(row.event_id))
    VocEvent.objects.bulk_create(rows, ignore_conflicts=True, batch_size=1000)
    metrics.BATCH_DURATION.observe(time.perf_counter() - started)
    metrics.EVENTS_PROCESSED.inc(len(rows))
    return len(rows)
