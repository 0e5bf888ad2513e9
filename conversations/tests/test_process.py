from __future__ import annotations

import io
import json

import pytest

from conversations.models import AICall, Conversation, Message
from vocoeng.models import BusMessage

pytestmark = pytest.mark.django_db


def post(client, body, raw: bool = False):
    data = body if raw else json.dumps(body)
    return client.post("/process", data, content_type="application/json")


def test_process_returns_the_response_object(client) -> None:
    response = post(
        client,
        {
            "source": "api",
            "user_id": "15551234567",
            "message": "Hello",
            "message_id": "ext-1",
            "metadata": {"received_at": "2024-01-01T12:00:00Z"},
        },
    )
    assert response.status_code == 200
    body = response.json()
    assert set(body) >= {
        "message_id",
        "external_message_id",
        "user_id",
        "original_message",
        "ai_response",
        "processing_time_ms",
        "timestamp",
        "metadata",
    }
    assert body["external_message_id"] == "ext-1"
    assert body["user_id"] == "15551234567"
    assert body["original_message"] == "Hello"
    assert body["ai_response"]["model"] == "echo"
    assert body["ai_response"]["metadata"]["provider"] == "echo"
    assert "Hello" in body["ai_response"]["response"]
    usage = body["ai_response"]["usage"]
    assert (
        usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0
    )
    assert body["metadata"]["source"] == "api"
    assert body["metadata"]["received_at"] == "2024-01-01T12:00:00Z"
    inbound = Message.objects.get(external_id="ext-1")
    assert str(inbound.pk) == body["message_id"]
    assert inbound.status == Message.Status.REPLIED
    reply = inbound.reply
    assert reply.status == Message.Status.DELIVERED
    assert reply.published_at is not None
    # the response was recorded on the (direct) bus
    assert BusMessage.objects.get(key=body["message_id"]).payload == body


def test_same_message_id_twice_yields_one_reply(client) -> None:
    body = {"source": "api", "user_id": "u1", "message": "Hi", "message_id": "dup-1"}
    first = post(client, body).json()
    second = post(client, body).json()
    assert first == second
    assert Message.objects.filter(role="user").count() == 1
    assert Message.objects.filter(role="assistant").count() == 1
    assert AICall.objects.count() == 1
    assert BusMessage.objects.count() == 1
    assert Conversation.objects.get().message_count == 2


def test_history_reaches_the_model(client) -> None:
    post(client, {"user_id": "u1", "message": "first", "message_id": "h1"})
    body = post(client, {"user_id": "u1", "message": "second", "message_id": "h2"})
    # The echo provider reports how many earlier user messages it was sent.
    assert "[history: 1 earlier message(s)]" in body.json()["ai_response"]["response"]


def test_history_is_per_user(client) -> None:
    post(client, {"user_id": "u1", "message": "first", "message_id": "p1"})
    body = post(client, {"user_id": "u2", "message": "other", "message_id": "p2"})
    assert "history" not in body.json()["ai_response"]["response"]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "not JSON"),
        (b"\xff\xfe", "not UTF-8"),
        (json.dumps([1, 2]).encode(), "JSON object"),
        (json.dumps({"user_id": "u"}).encode(), "message"),
        (json.dumps({"message": "hi"}).encode(), "user_id"),
        (json.dumps({"user_id": "u", "message": "   "}).encode(), "blank"),
        (
            json.dumps({"user_id": "u", "message": "hi", "source": "fax"}).encode(),
            "source",
        ),
        (json.dumps({"user_id": "u", "message": 5}).encode(), "message"),
        (
            json.dumps(
                {"user_id": "u", "message": "hi", "timestamp": "yesterday"}
            ).encode(),
            "timestamp",
        ),
    ],
)
def test_bad_bodies_get_400_with_the_reason_and_nothing_is_stored(
    client, body, reason
) -> None:
    response = post(client, body, raw=True)
    assert response.status_code == 400
    assert reason in response.json()["error"]
    assert Message.objects.count() == 0
    assert Conversation.objects.count() == 0


def test_process_only_accepts_post(client) -> None:
    assert client.get("/process").status_code == 405


def test_pubsub_unreachable_is_503_and_the_retry_publishes_once(
    client, settings, pubsub_outage
) -> None:
    """BUS=pubsub: the reply is stored, its publish fails; a retry finishes it."""
    from django.core.management import call_command

    from vocoeng import pubsub

    settings.BUS = "pubsub"
    call_command("pubsub_setup", stdout=io.StringIO())
    pubsub.subscription_ensure(
        pubsub.SubscriptionSpec(
            "process-check", settings.PUBSUB_TOPIC_RESPONSES, dead_letter=False
        )
    )
    pubsub_outage.down(publish_timeout=1.0)
    body = {"source": "api", "user_id": "u", "message": "hi", "message_id": "pp-1"}
    down = post(client, body)
    assert down.status_code == 503
    assert down["Retry-After"]
    assert "publish to" in down.json()["reason"]
    assert Message.objects.filter(role="assistant").count() == 1  # kept
    pubsub_outage.up()
    again = post(client, body)
    assert again.status_code == 200
    assert again.json()["external_message_id"] == "pp-1"
    assert AICall.objects.count() == 1  # no second model call
    assert post(client, body).status_code == 200  # published already: not again
    client_ = pubsub.subscriber()
    pulled = client_.pull(
        request={
            "subscription": pubsub.subscription_path("process-check"),
            "max_messages": 10,
            "return_immediately": True,
        }
    ).received_messages
    assert [json.loads(m.message.data)["external_message_id"] for m in pulled] == [
        "pp-1"
    ]
