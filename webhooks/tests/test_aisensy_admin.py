"""AiSensy inbound webhook and the admin's delivery replay."""

from __future__ import annotations

import json

import pytest
from django.contrib.auth.models import User

from conversations.models import Message
from webhooks.models import WebhookDelivery
from webhooks.tests import payloads as p

pytestmark = [pytest.mark.django_db(transaction=True)]


def _event(wamid: str, text: str = "Hi from AiSensy") -> dict:
    return {
        "topic": "message.sender.user",
        "project_id": "64f0c0ffee",
        "data": {
            "message": {
                "messageId": wamid,
                "phone_number": "+919876543210",
                "message_type": "TEXT",
                "message_content": {"text": text},
                "sender": "USER",
            }
        },
    }


def _post(client, body, secret="aisensy-secret"):  # noqa: S107
    headers = {"HTTP_X_AISENSY_SECRET": secret} if secret else {}
    return client.post(
        "/webhooks/aisensy/", json.dumps(body), "application/json", **headers
    )


def test_aisensy_message_is_stored_once_and_queued(client, queued) -> None:
    event = _event("aisensy-wamid-1")
    assert _post(client, event).status_code == 200
    assert _post(client, event).status_code == 200
    inbound = Message.objects.get()
    assert inbound.channel == "aisensy"
    assert inbound.content == "Hi from AiSensy"
    assert inbound.conversation.external_user_id == "919876543210"
    assert queued() == 1


def test_aisensy_other_topics_are_ignored(client, queued) -> None:
    body = {"topic": "message.status.updated", "data": {"status": "read"}}
    assert _post(client, body).status_code == 200
    assert WebhookDelivery.objects.get().verdict == "ignored"
    assert queued() == 0


def test_aisensy_wrong_or_missing_secret_is_refused(client, queued) -> None:
    assert _post(client, _event("a-2"), secret="wrong").status_code == 403
    assert _post(client, _event("a-3"), secret="").status_code == 401
    assert not Message.objects.exists()


def test_aisensy_body_that_is_not_an_event_is_400(client) -> None:
    response = _post(client, {"hello": "world"})
    assert response.status_code == 400
    assert "not an AiSensy event" in response.json()["error"]


def test_admin_replay_reprocesses_a_failed_delivery_once(
    client, post_whatsapp, queued, monkeypatch
) -> None:
    from webhooks import services
    from webhooks.tasks import delivery_process

    # Its task fails for good (every retry): recorded as failed, not acted on.
    body = p.notification([p.text("15559990000", "replay me")])
    assert post_whatsapp(body, process=False).status_code == 200
    delivery = WebhookDelivery.objects.get()

    def broken(**kwargs):
        raise RuntimeError("parser bug")

    with monkeypatch.context() as patched:
        patched.setattr(services, "delivery_process_queued", broken)
        assert delivery_process.apply(args=[str(delivery.pk)]).failed()
    delivery.refresh_from_db()
    assert delivery.verdict == "failed"
    assert "parser bug" in delivery.error
    assert not Message.objects.exists()

    admin = User.objects.create_superuser("admin", "a@example.com", "pw")
    client.force_login(admin)
    url = "/admin/webhooks/webhookdelivery/"
    for _ in range(2):  # replaying twice changes nothing more
        response = client.post(
            url, {"action": "replay", "_selected_action": [str(delivery.pk)]}
        )
        assert response.status_code == 302
    delivery.refresh_from_db()
    assert delivery.verdict == "processed"
    assert delivery.replays == 2
    assert Message.objects.get().content == "replay me"
    assert queued() == 1
    assert client.get(url + "?source=whatsapp&verdict=processed").status_code == 200
    assert client.get("/admin/webhooks/inboundmessage/").status_code == 200
    assert client.get("/admin/webhooks/outboundmessage/").status_code == 200
