"""End to end through a real ``celery worker`` process and the real broker."""

from __future__ import annotations

import pytest
from django.conf import settings
from django_celery_results.models import TaskResult

from analytics.models import VocEvent
from conftest import wait_for
from vocoeng import bus

from .conftest import make_event


def _batches_done(n: int) -> bool:
    done = TaskResult.objects.filter(
        task_name="analytics.ingest_batch", status="SUCCESS"
    ).count()
    return done >= n


@pytest.mark.timeout(120)
def test_same_1000_events_sent_twice_yield_1000_rows(
    celery_worker_factory, client_a, tenant_b
) -> None:
    worker = celery_worker_factory(queues="analytics", concurrency=2)
    kinds = ("call", "agent_action", "tool_invocation", "qos_metric")
    events = [make_event(kinds[i % 4]) for i in range(1000)]
    first = client_a.post("/api/v1/analytics/events/", {"events": events}, "json")
    assert first.json() == {"accepted": 1000, "rejected": 0, "errors": []}
    wait_for(lambda: VocEvent.objects.count() == 1000, timeout=60)
    batches = -(-1000 // settings.VOC_BATCH_SIZE)
    wait_for(lambda: _batches_done(batches), timeout=30)
    summary = client_a.get("/api/v1/analytics/summary/").json()
    assert summary["by_type"]["call"]["count"] == 250

    again = client_a.post("/api/v1/analytics/events/", {"events": events}, "json")
    assert again.json()["accepted"] == 1000
    wait_for(lambda: _batches_done(2 * batches), timeout=60)
    assert VocEvent.objects.count() == 1000, worker.output()[-2000:]
    assert client_a.get("/api/v1/analytics/summary/").json() == summary


@pytest.mark.timeout(120)
def test_bus_message_reaches_the_table_through_a_worker(
    celery_worker_factory, tenant_a, settings
) -> None:
    settings.BUS = "direct"
    celery_worker_factory(queues="analytics", concurrency=2)
    events = [make_event("call"), make_event("qos_metric"), make_event(duration_s=-1)]
    bus.publish(topic=settings.PUBSUB_TOPIC_VOC, payload=events, key="voc-batch-1")
    single = make_event("agent_action")
    bus.publish(topic=settings.PUBSUB_TOPIC_VOC, payload=single, key="voc-one-1")
    wait_for(lambda: VocEvent.objects.count() == 3, timeout=60)
    stored = {str(e) for e in VocEvent.objects.values_list("event_id", flat=True)}
    assert stored == {events[0]["event_id"], events[1]["event_id"], single["event_id"]}
    call = VocEvent.objects.get(event_id=events[0]["event_id"])
    assert call.sentiment is not None and call.sentiment > 0
