"""BUS=pubsub end to end: webhook → inbound topic → bridge → worker → responses
topic, with pipeline jobs and VOC events through the same bridge process."""

from __future__ import annotations

import json
import re

import pytest

from analytics.models import VocEvent
from analytics.tests.conftest import make_event
from conftest import wait_for
from pipeline.models import Run
from vocoeng import pubsub
from vocoeng.models import Tenant
from vocoeng.services import api_key_create
from webhooks.tests import test_bridge as base
from webhooks.tests.test_bridge import publish_all, pull

pytestmark = [pytest.mark.timeout(90)]

bridge_env = base.bridge_env
start_bridge = base.start_bridge


def count(bridge, event: str, kind: str) -> int:
    return len(re.findall(rf"event={event} .* kind={kind} ", bridge.output()))


def test_every_kind_goes_through_the_bridge_once(
    settings, client, celery_worker_factory, start_bridge
) -> None:
    settings.BUS = "pubsub"
    responses = "responses-e2e"
    pubsub.subscription_ensure(
        pubsub.SubscriptionSpec(
            responses, settings.PUBSUB_TOPIC_RESPONSES, dead_letter=False
        )
    )
    celery_worker_factory(env={"BUS": "pubsub"})
    bridge = start_bridge()  # every bridge subscription at once
    tenant = Tenant.objects.create(slug="acme", name="Acme")
    _, token = api_key_create(tenant=tenant)

    # An API-source chat message, through POST /webhooks/api/ (BUS=pubsub).
    body = {
        "source": "api",
        "user_id": "15551234567",
        "message": "Hello over Pub/Sub",
        "timestamp": "2024-01-01T12:00:00Z",
        "message_id": "ext-e2e-1",
    }
    for _ in range(2):  # the client retries: one response all the same
        answer = client.post(
            "/webhooks/api/",
            data=json.dumps(body),
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Token {token}",
            HTTP_X_REQUEST_ID="e2e-req-1",
        )
        assert answer.status_code == 202, answer.content

    # VOC events: a batch published twice, one event, one invalid event.
    batch = json.dumps([make_event("call"), make_event("qos_metric")]).encode()
    publish_all(
        settings.PUBSUB_TOPIC_VOC,
        [
            (batch, {"idempotency_key": "batch-1"}),
            (batch, {"idempotency_key": "batch-1"}),
            (json.dumps(make_event("agent_action")).encode(), {}),
            (json.dumps({"event_type": "call"}).encode(), {}),
        ],
    )
    # A pipeline job published twice with the same key.
    job = json.dumps({"idea": "A loyalty app", "personas": ["skeptic"]}).encode()
    publish_all(
        settings.PUBSUB_TOPIC_JOBS,
        [(job, {"idempotency_key": "job-1"}), (job, {"idempotency_key": "job-1"})],
    )

    got: list = []
    wait_for(lambda: got.extend(pull(responses)) or got, timeout=60)
    (message,) = got
    response = json.loads(message.data)
    assert message.attributes["kind"] == "chat_response"
    # The request's id went with the inbound message, through the bridge and
    # the reply chain's tasks, onto the response.
    assert message.attributes["correlation_id"] == "e2e-req-1"
    assert "correlation_id=e2e-req-1" in bridge.output()
    assert response["external_message_id"] == "ext-e2e-1"
    assert response["user_id"] == "15551234567"
    assert response["original_message"] == "Hello over Pub/Sub"
    ai = response["ai_response"]
    assert ai["response"] and ai["model"]
    assert set(ai["usage"]) >= {"prompt_tokens", "completion_tokens", "total_tokens"}
    assert ai["usage"]["total_tokens"] > 0
    assert ai["metadata"]["provider"] == "echo"
    assert isinstance(response["processing_time_ms"], int)
    assert response["timestamp"]
    assert response["metadata"]["source"] == "api"
    assert response["metadata"]["tenant"] == "acme"
    assert response["message_id"]  # VocoEng's own id of the inbound message
    assert response["message_id"] != "ext-e2e-1"

    wait_for(lambda: VocEvent.objects.count() == 3, timeout=60)
    assert set(VocEvent.objects.values_list("event_type", flat=True)) == {
        "call",
        "qos_metric",
        "agent_action",
    }
    seen = ("enqueued", "duplicate", "dead_lettered")
    wait_for(lambda: sum(count(bridge, e, "voc_event") for e in seen) == 4)
    assert count(bridge, "enqueued", "voc_event") == 2
    assert count(bridge, "duplicate", "voc_event") == 1
    assert count(bridge, "dead_lettered", "voc_event") == 1

    wait_for(lambda: sum(count(bridge, e, "pipeline_job") for e in seen) == 2)
    assert count(bridge, "enqueued", "pipeline_job") == 1
    (run,) = Run.objects.all()
    assert run.idempotency_key == "job-1"
    assert "A loyalty app" in json.dumps(run.input)

    assert count(bridge, "enqueued", "chat_message") == 1
    assert pull(responses) == []  # no second response
