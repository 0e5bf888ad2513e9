"""Signed WhatsApp webhooks through a real Celery worker, model and Graph fakes."""

from __future__ import annotations

import pytest

from conftest import fake_ai_env, wait_for
from conversations.models import Message
from vocoeng.testing.fake_graph import FakeGraphServer
from webhooks.models import WebhookDelivery
from webhooks.tests import payloads as p
from webhooks.tests.conftest import broker_queue_size

pytestmark = [pytest.mark.timeout(150)]

USER = "15550001111"


@pytest.fixture
def graph():
    with FakeGraphServer() as server:
        yield server


def test_one_webhook_one_send_duplicates_none_and_history_reaches_the_model(
    celery_worker_factory, fake_ai_server, graph, post_whatsapp
) -> None:
    fake_ai_server.reset()
    celery_worker_factory(
        env={
            **fake_ai_env(fake_ai_server),
            "WHATSAPP_API_BASE": graph.base_url + "/v21.0",
            "WHATSAPP_ACCESS_TOKEN": "test-token",
            # The worker finds the delivery's channel: the web's environment.
            "WHATSAPP_APP_SECRET": p.APP_SECRET,
        }
    )
    first = p.notification([p.text(USER, "What are your opening hours?")])
    assert post_whatsapp(first).status_code == 200
    sent = wait_for(lambda: graph.sent_texts(), timeout=60)
    reply = Message.objects.get(role="assistant")
    assert sent == [(USER, reply.content)]
    assert "What are your opening hours?" in reply.content  # the fake model's echo
    wait_for(lambda: Message.objects.filter(pk=reply.pk, status="sent").exists())

    for _ in range(3):  # Meta retrying the same delivery
        assert post_whatsapp(first).status_code == 200
    # The worker processes each: a duplicate, nothing enqueued.
    duplicates = WebhookDelivery.objects.filter(summary__messages__duplicate=1)
    wait_for(lambda: duplicates.count() == 3)
    assert broker_queue_size() == 0

    second = p.notification([p.text(USER, "And on Sundays?")])
    assert post_whatsapp(second).status_code == 200
    wait_for(lambda: len(graph.sent_texts()) == 2, timeout=60)
    texts = [body for _, body in graph.sent_texts()]
    assert texts.count(reply.content) == 1
    assert Message.objects.filter(role="assistant").count() == 2

    # The model saw the first exchange when answering the second message.
    last = fake_ai_server.calls("/v1/chat/completions")[-1].body["messages"]
    contents = [m["content"] for m in last]
    assert "What are your opening hours?" in contents
    assert reply.content in contents
    assert contents[-1] == "And on Sundays?"

    # Meta's status report for the sent wamid moves the reply forward.
    reply.refresh_from_db()
    status = p.status(reply.external_id, "delivered", USER)
    assert post_whatsapp(p.notification(statuses=[status])).status_code == 200
    wait_for(lambda: Message.objects.filter(pk=reply.pk, status="delivered").exists())
    assert len(fake_ai_server.calls("/v1/chat/completions")) == 2


def test_rate_limited_send_is_retried_by_the_worker(
    celery_worker_factory, fake_ai_server, graph, post_whatsapp
) -> None:
    fake_ai_server.reset()
    graph.enqueue_fault("429", retry_after=0.2)
    celery_worker_factory(
        env={
            **fake_ai_env(fake_ai_server),
            "WHATSAPP_API_BASE": graph.base_url + "/v21.0",
            "WHATSAPP_ACCESS_TOKEN": "test-token",
            # The worker finds the delivery's channel: the web's environment.
            "WHATSAPP_APP_SECRET": p.APP_SECRET,
        }
    )
    assert post_whatsapp(p.notification([p.text(USER, "ping")])).status_code == 200
    wait_for(lambda: graph.sent_texts(), timeout=60)
    reply = wait_for(
        lambda: Message.objects.filter(role="assistant", status="sent").first()
    )
    assert graph.sent_texts() == [(USER, reply.content)]
    assert [r.status for r in graph.requests] == [429, 200]
