from __future__ import annotations

import io
import json

import pytest
from django.core.management import call_command

from conversations.models import Message
from vocoeng.celery import app


def test_registered_task_names_are_stable() -> None:
    """Renaming a task strands messages already queued under the old name."""
    app.loader.import_default_modules()
    ours = sorted(name for name in app.tasks if name.startswith("conversations."))
    assert ours == [
        "conversations.reply_deliver",
        "conversations.reply_generate",
        "conversations.reply_publish",
    ]


def test_ai_task_runs_late_acked_on_the_ai_queue() -> None:
    task = app.tasks["conversations.reply_generate"]
    assert app.amqp.router.route({}, task.name, task_type=task)["queue"].name == "ai"
    assert task.acks_late is True
    assert task.reject_on_worker_lost is True


@pytest.mark.django_db
def test_reply_publish_retries_while_pubsub_is_down_then_delivers_anyway(
    client, settings, pubsub_outage, monkeypatch, caplog
) -> None:
    """The customer's reply must not be lost to an outage of the responses topic."""
    from conversations import services
    from conversations.tasks import reply_publish
    from vocoeng.models import BusMessage

    body = {"source": "api", "user_id": "u", "message": "hi", "message_id": "t-1"}
    answer = client.post("/process", json.dumps(body), "application/json")
    assert answer.status_code == 200  # BUS=direct: the response is recorded
    reply = Message.objects.get(role=Message.Role.ASSISTANT)

    settings.BUS = "pubsub"  # the record has no Pub/Sub id yet: it publishes
    call_command("pubsub_setup", stdout=io.StringIO())
    pubsub_outage.down(publish_timeout=0.2)
    tries = []
    real = services.reply_publish
    monkeypatch.setattr(
        services, "reply_publish", lambda **kw: tries.append(1) or real(**kw)
    )
    # Eager: Celery runs each retry at once (no countdown), as many as allowed.
    result = reply_publish.apply(args=(str(reply.pk),))
    assert result.get() == str(reply.pk)  # handed on to delivery all the same
    assert len(tries) == reply_publish.max_retries + 1
    assert "reply_publish_gave_up" in caplog.text
    assert BusMessage.objects.get().pubsub_message_id == ""

    pubsub_outage.up()
    assert reply_publish.apply(args=(str(reply.pk),)).get() == str(reply.pk)
    assert BusMessage.objects.get().pubsub_message_id  # published, once
