from __future__ import annotations

import pytest

from analytics.schemas import EventInvalid, event_text, event_validate

from .conftest import make_event


@pytest.mark.parametrize(
    "event_type", ["call", "agent_action", "tool_invocation", "qos_metric"]
)
def test_valid_event_of_each_type_is_normalised(event_type: str) -> None:
    raw = make_event(event_type, extra_field="dropped")
    event = event_validate(raw)
    assert event["event_id"] == raw["event_id"]
    assert event["event_type"] == event_type
    assert event["tenant_id"] == "acme"
    assert event["timestamp"].endswith("+00:00")
    assert event["metadata"] == {"source": "test"}
    assert "extra_field" not in event


def test_naive_and_zulu_timestamps_are_utc() -> None:
    naive = event_validate(make_event(timestamp="2024-01-01T12:00:00"))
    zulu = event_validate(make_event(timestamp="2024-01-01T12:00:00Z"))
    offset = event_validate(make_event(timestamp="2024-01-01T14:00:00+02:00"))
    assert naive["timestamp"] == zulu["timestamp"] == offset["timestamp"]
    assert zulu["timestamp"] == "2024-01-01T12:00:00+00:00"


BAD = [
    ("call", {"event_id": "not-a-uuid"}, "event_id: not a UUID"),
    ("call", {"event_id": None}, "event_id: required"),
    ("call", {"tenant_id": ""}, "tenant_id: must not be blank"),
    ("call", {"timestamp": "yesterday"}, "timestamp: not an ISO 8601"),
    ("call", {"timestamp": 1700000000}, "timestamp: must be an ISO 8601"),
    ("sms", {}, "event_type: must be one of"),
    ("call", {"metadata": ["x"]}, "metadata: must be an object"),
    ("call", {"duration_s": -1}, "duration_s: must be >= 0"),
    ("call", {"duration_s": "10"}, "duration_s: must be a number"),
    ("call", {"duration_s": True}, "duration_s: must be a number"),
    ("call", {"channel": None}, "channel: required"),
    ("call", {"transcript": 12}, "transcript: must be a string"),
    ("agent_action", {"agent_id": None}, "agent_id: required"),
    ("agent_action", {"action": " "}, "action: must not be blank"),
    ("agent_action", {"details": "x"}, "details: must be an object"),
    ("tool_invocation", {"success": "yes"}, "success: must be true or false"),
    ("tool_invocation", {"latency_ms": None}, "latency_ms: required"),
    ("tool_invocation", {"tool_name": 5}, "tool_name: must be a string"),
    ("tool_invocation", {"arguments": [1]}, "arguments: must be an object"),
    ("qos_metric", {"value": "fast"}, "value: must be a number"),
    ("qos_metric", {"value": float("nan")}, "value: must be finite"),
    ("qos_metric", {"metric": None}, "metric: required"),
    ("qos_metric", {"metric": "m" * 65}, "metric: longer than 64"),
]


@pytest.mark.parametrize(("event_type", "override", "reason"), BAD)
def test_bad_event_is_rejected_with_its_reason(
    event_type: str, override: dict, reason: str
) -> None:
    with pytest.raises(EventInvalid) as info:
        event_validate(make_event(event_type, **override))
    assert info.value.reason.startswith(reason), info.value.reason


def test_non_object_event_is_rejected() -> None:
    with pytest.raises(EventInvalid, match="JSON object"):
        event_validate(["call"])


def test_event_text_comes_from_transcript_or_details() -> None:
    call = event_validate(make_event("call", transcript="hello there"))
    action = event_validate(make_event("agent_action"))
    qos = event_validate(make_event("qos_metric"))
    assert event_text(call) == "hello there"
    assert event_text(action) == "Customer is angry about a double charge"
    assert event_text(qos) == ""
