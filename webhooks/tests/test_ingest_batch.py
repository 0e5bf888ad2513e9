"""The batched ingest path: one transaction per delivery, bulk statements."""

from __future__ import annotations

import pytest
from django.db import OperationalError

from conversations.models import Conversation, Message
from webhooks.models import WebhookDelivery
from webhooks.tests import payloads as p

pytestmark = [pytest.mark.django_db(transaction=True)]


def summary(response) -> dict:
    """Return the summary of the delivery a webhook answer names (once processed)."""
    return WebhookDelivery.objects.get(pk=response.json()["delivery"]).summary


def test_failed_transaction_is_retried_by_the_task_and_stores_once(
    post_whatsapp, monkeypatch, queued
) -> None:
    from webhooks import inbound

    real, calls = inbound._insert, []

    def fails_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise OperationalError("database went away")
        return real(*args, **kwargs)

    body = p.notification([p.text("15551239001", "hello")])
    monkeypatch.setattr(inbound, "_insert", fails_once)
    assert post_whatsapp(body).status_code == 200  # recorded and queued
    # The first run was undone as a whole; the task's retry stored it once.
    assert len(calls) == 2
    delivery = WebhookDelivery.objects.get()
    assert delivery.verdict == "processed"
    assert Message.objects.get().content == "hello"
    assert Conversation.objects.get().message_count == 1
    assert queued() == 1


@pytest.mark.parametrize(
    ("error", "verdict"),
    [
        # a dependency down: left received, for the sweep to queue again
        (OperationalError("database went away"), "received"),
        # anything else: failed, for a replay
        (ValueError("database went away"), "failed"),
    ],
)
def test_failed_transaction_keeps_the_delivery_and_stores_nothing(
    post_whatsapp, monkeypatch, queued, error, verdict
) -> None:
    from webhooks import inbound
    from webhooks.services import delivery_replay

    def broken(*args, **kwargs):
        raise error

    body = p.notification([p.text("15551239001", "hello")])
    monkeypatch.setattr(inbound, "_insert", broken)
    assert post_whatsapp(body).status_code == 200  # recorded and queued
    # Every retry of the task failed: recorded with the error, nothing
    # half-written.
    delivery = WebhookDelivery.objects.get()
    assert delivery.verdict == verdict
    assert "database went away" in delivery.error
    assert '"hello"' in delivery.body  # kept for the sweep or a replay
    assert Message.objects.count() == 0
    assert Conversation.objects.count() == 0
    assert queued() == 0
    # A replay (the admin's action) goes through once the database is back.
    monkeypatch.undo()
    delivery_replay(delivery=delivery)
    assert Message.objects.get().content == "hello"
    assert queued() == 1


def test_one_delivery_several_messages_of_one_sender_respects_the_limit(
    post_whatsapp, queued, settings
) -> None:
    settings.AI_USER_RATE_LIMIT = "2/min"
    user = "15551239002"
    body = p.notification([p.text(user, f"msg {i}") for i in range(3)])
    response = post_whatsapp(body)
    assert response.status_code == 200
    assert summary(response)["messages"] == {"queued": 2, "rate_limited": 1}
    statuses = sorted(Message.objects.values_list("content", "status"))
    assert statuses == [
        ("msg 0", "received"),
        ("msg 1", "received"),
        ("msg 2", "rate_limited"),
    ]
    assert queued() == 2
    conversation = Conversation.objects.get()
    assert conversation.message_count == 3
    assert conversation.last_message == "msg 2"


def test_same_wamid_twice_in_one_delivery_is_stored_and_queued_once(
    post_whatsapp, queued
) -> None:
    wamid = p.wamid()
    body = p.notification(
        [
            p.text("15551239003", "first", id=wamid),
            p.text("15551239003", "first again", id=wamid),
            p.text("15551239004", "other sender"),
        ]
    )
    response = post_whatsapp(body)
    assert response.status_code == 200
    assert summary(response)["messages"] == {"queued": 2, "duplicate": 1}
    assert Message.objects.get(external_id=wamid).content == "first"
    assert Message.objects.count() == 2
    assert Conversation.objects.count() == 2
    assert queued() == 2
    assert summary(post_whatsapp(body))["messages"] == {"duplicate": 3}
    assert queued() == 2
