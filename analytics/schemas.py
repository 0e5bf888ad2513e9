"""Validate VOC events (ARCHITECTURE.md, topic voc-events) into JSON primitives.

Hand-written rather than DRF serializers: ingest validates hundreds of
thousands of events per minute and a serializer per event costs more than the
insert itself. Each failure raises :class:`EventInvalid` with one reason.
"""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime
from typing import Any

from django.utils.dateparse import parse_datetime

from .models import EventType

MAX_TEXT = 100_000
MAX_NAME = 200
EVENT_TYPES = frozenset(t.value for t in EventType)


class EventInvalid(ValueError):
    """Reject one event; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _str(
    raw: dict, field: str, *, max_len: int = MAX_NAME, required: bool = True
) -> str:
    value = raw.get(field)
    if value is None:
        if required:
            raise EventInvalid(f"{field}: required")
        return ""
    if not isinstance(value, str):
        raise EventInvalid(f"{field}: must be a string")
    if required and not value.strip():
        raise EventInvalid(f"{field}: must not be blank")
    if len(value) > max_len:
        raise EventInvalid(f"{field}: longer than {max_len} characters")
    return value


def _number(raw: dict, field: str, *, minimum: float | None = None) -> float:
    value = raw.get(field)
    if value is None:
        raise EventInvalid(f"{field}: required")
    # bool is an int in Python, but true is not a duration.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise EventInvalid(f"{field}: must be a number")
    if not math.isfinite(value):
        raise EventInvalid(f"{field}: must be finite")
    if minimum is not None and value < minimum:
        raise EventInvalid(f"{field}: must be >= {minimum:g}")
    return value


def _object(raw: dict, field: str) -> dict:
    value = raw.get(field)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise EventInvalid(f"{field}: must be an object")
    return value


def _timestamp(raw: dict) -> str:
    value = raw.get("timestamp")
    if value is None:
        raise EventInvalid("timestamp: required")
    if not isinstance(value, str):
        raise EventInvalid("timestamp: must be an ISO 8601 string")
    try:
        ts = parse_datetime(value)
    except ValueError:
        ts = None
    if ts is None:
        raise EventInvalid("timestamp: not an ISO 8601 date-time")
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)  # naive timestamps are UTC by contract
    return ts.astimezone(UTC).isoformat()


def _event_id(raw: dict) -> str:
    value = raw.get("event_id")
    if value is None:
        raise EventInvalid("event_id: required")
    if not isinstance(value, str):
        raise EventInvalid("event_id: must be a UUID string")
    try:
        return str(uuid.UUID(value))
    except ValueError as exc:
        raise EventInvalid("event_id: not a UUID") from exc


def _call(raw: dict) -> dict[str, Any]:
    return {
        "transcript": _str(raw, "transcript", max_len=MAX_TEXT, required=False),
        "duration_s": _number(raw, "duration_s", minimum=0),
        "channel": _str(raw, "channel"),
    }


def _agent_action(raw: dict) -> dict[str, Any]:
    return {
        "agent_id": _str(raw, "agent_id"),
        "action": _str(raw, "action"),
        "details": _object(raw, "details"),
    }


def _tool_invocation(raw: dict) -> dict[str, Any]:
    success = raw.get("success")
    if not isinstance(success, bool):
        raise EventInvalid("success: must be true or false")
    return {
        "tool_name": _str(raw, "tool_name"),
        "arguments": _object(raw, "arguments"),
        "latency_ms": _number(raw, "latency_ms", minimum=0),
        "success": success,
    }


def _qos_metric(raw: dict) -> dict[str, Any]:
    return {
        "metric": _str(raw, "metric", max_len=64),
        "value": _number(raw, "value"),
        "unit": _str(raw, "unit", max_len=32, required=False),
    }


_TYPES = {
    EventType.CALL.value: _call,
    EventType.AGENT_ACTION.value: _agent_action,
    EventType.TOOL_INVOCATION.value: _tool_invocation,
    EventType.QOS_METRIC.value: _qos_metric,
}


def event_validate(raw: Any) -> dict[str, Any]:
    """Return the event normalised to JSON primitives or raise EventInvalid.

    Unknown top-level fields are dropped; the type's fields and ``metadata``
    are kept.
    """
    if not isinstance(raw, dict):
        raise EventInvalid("event must be a JSON object")
    event_type = raw.get("event_type")
    if event_type not in EVENT_TYPES:
        raise EventInvalid(
            f"event_type: must be one of {', '.join(sorted(EVENT_TYPES))}"
        )
    return {
        "event_id": _event_id(raw),
        "tenant_id": _str(raw, "tenant_id", max_len=50),
        "timestamp": _timestamp(raw),
        "event_type": event_type,
        "metadata": _object(raw, "metadata"),
        **_TYPES[event_type](raw),
    }


def event_text(event: dict[str, Any]) -> str:
    """Return the free text an event carries (for sentiment and topic), or ''."""
    if event["event_type"] == EventType.CALL:
        return event.get("transcript") or ""
    for holder in (event.get("details") or {}, event.get("metadata") or {}):
        for key in ("text", "message", "comment"):
            value = holder.get(key)
            if isinstance(value, str) and value.strip():
                return value
    return ""


def parse_ts(value: str) -> datetime:
    """Parse a timestamp normalised by :func:`event_validate`."""
    return datetime.fromisoformat(value)
