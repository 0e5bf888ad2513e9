"""Route VOC bus messages (kind ``voc_event``) to the ingest task."""

from __future__ import annotations

import logging
from typing import Any

from celery.canvas import Signature

from vocoeng.routing import PermanentMessageError

from . import metrics
from .services import events_signature, events_validate

logger = logging.getLogger(__name__)

MAX_REASONS = 5


def voc_event(*, data: Any, attributes: dict[str, str]) -> Signature | None:
    """Validate one event or a list of events and return the task storing them.

    Events name their tenant by slug; an unknown tenant is rejected ("unknown
    tenant"), never created. Invalid events of a list are logged and counted
    and the valid ones kept; a message with no valid event is a permanent
    error with the reasons.
    """
    events = data if isinstance(data, list) else [data]
    metrics.EVENTS_CONSUMED.labels(source="bus").inc(len(events))
    if not events:
        raise PermanentMessageError("no events in message")
    valid, errors = events_validate(events=events)
    if errors:
        metrics.EVENTS_REJECTED.labels(source="bus").inc(len(errors))
        for error in errors[:MAX_REASONS]:
            logger.warning(
                "voc_event_rejected index=%s event_id=%s reason=%s",
                error["index"],
                error["event_id"],
                error["reason"],
            )
    if not valid:
        reasons = "; ".join(
            f"[{e['index']}] {e['reason']}" for e in errors[:MAX_REASONS]
        )
        more = len(errors) - MAX_REASONS
        raise PermanentMessageError(
            f"no valid VOC event: {reasons}" + (f" (+{more} more)" if more > 0 else "")
        )
    return events_signature(events=valid)
