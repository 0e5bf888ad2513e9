"""Reply delivery through the Cloud API client against a loopback Graph server."""

from __future__ import annotations

import pytest

from conversations.delivery import DeliveryError
from conversations.models import Message
from conversations.services import message_receive, reply_deliver
from vocoeng.services import tenant_get_default
from vocoeng.testing.fake_graph import FakeGraphServer
from webhooks.tests import payloads as p

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]

USER = "15557654321"


@pytest.fixture(scope="module")
def graph_server():
    with FakeGraphServer() as server:
        yield server


@pytest.fixture
def graph(graph_server, settings):
    graph_server.reset()
    graph_server.clear_faults()
    settings.WHATSAPP_API_BASE = graph_server.base_url + "/v21.0"
    settings.WHATSAPP_ACCESS_TOKEN = "test-token"
    settings.WHATSAPP_TIMEOUT_SECONDS = 5.0
    settings.AISENSY_API_BASE = graph_server.aisensy_base_url
    settings.AISENSY_API_KEY = "aisensy-key"
    return graph_server


def _pending_reply(
    channel: str = "whatsapp", text: str = "Here is your answer"
) -> Message:
    inbound, _ = message_receive(
        tenant=tenant_get_default(),
        channel=channel,
        user_id=USER,
        text="question",
        external_id=p.wamid(),
        metadata={"phone_number_id": p.PHONE_NUMBER_ID},
        status=Message.Status.REPLIED,
    )
    return Message.objects.create(
        conversation=inbound.conversation,
        channel=channel,
        role="assistant",
        content=text,
        status="pending",
        reply_to=inbound,
    )


def test_reply_is_sent_as_text_and_the_wamid_stored(graph) -> None:
    reply = _pending_reply()
    done = reply_deliver(reply_id=reply.pk)
    assert done.status == "sent"
    assert done.external_id.startswith("wamid.")
    assert done.sent_at is not None
    assert graph.sent_texts() == [(USER, "Here is your answer")]
    request = graph.requests[0]
    assert request.path == f"/v21.0/{p.PHONE_NUMBER_ID}/messages"


def test_a_second_delivery_of_the_same_reply_sends_nothing(graph) -> None:
    reply = _pending_reply()
    reply_deliver(reply_id=reply.pk)
    assert reply_deliver(reply_id=reply.pk) is None
    assert len(graph.sent_texts()) == 1


@pytest.mark.parametrize("fault", ["429", "500", "503", "131056"])
def test_transient_failure_is_retryable_then_succeeds(graph, fault) -> None:
    graph.enqueue_fault(
        fault, retry_after=1.5
    ) if fault == "429" else graph.enqueue_fault(fault)
    reply = _pending_reply()
    with pytest.raises(DeliveryError) as info:
        reply_deliver(reply_id=reply.pk)
    assert info.value.transient
    if fault == "429":
        assert info.value.retry_after == 1.5
    reply.refresh_from_db()
    assert reply.status == "pending"  # claim put back for the retry
    assert fault in reply.error or "130429" in reply.error
    assert reply_deliver(reply_id=reply.pk).status == "sent"
    assert graph.sent_texts() == [(USER, "Here is your answer")]


def test_outside_the_24h_window_is_failed_with_the_reason(graph) -> None:
    graph.enqueue_fault("131047")
    reply = _pending_reply()
    done = reply_deliver(reply_id=reply.pk)
    assert done.status == "failed"
    assert "131047" in done.error
    assert "24 hours" in done.error
    assert graph.sent_texts() == []
    assert graph.sent_templates() == []


def test_outside_the_window_sends_the_fallback_template(graph, settings) -> None:
    settings.WHATSAPP_FALLBACK_TEMPLATE = "reengage:en_GB"
    graph.enqueue_fault("131047")
    reply = _pending_reply()
    done = reply_deliver(reply_id=reply.pk)
    assert done.status == "sent"
    assert done.external_id.startswith("wamid.")
    assert "131047" in done.error and "reengage" in done.error
    assert graph.sent_templates() == [(USER, "reengage", [])]
    assert graph.requests[-1].body["template"]["language"] == {"code": "en_GB"}


def test_expired_token_is_a_permanent_failure(graph) -> None:
    graph.enqueue_fault("190")
    reply = _pending_reply()
    done = reply_deliver(reply_id=reply.pk)
    assert done.status == "failed"
    assert "190" in done.error


def test_without_credentials_delivery_is_logged_not_an_error(graph, settings) -> None:
    settings.WHATSAPP_ACCESS_TOKEN = ""
    reply = _pending_reply()
    done = reply_deliver(reply_id=reply.pk)
    assert done.status == "logged"
    assert graph.requests == []


def test_dropped_connection_is_failed_not_retried(graph) -> None:
    graph.enqueue_fault("disconnect")
    reply = _pending_reply()
    done = reply_deliver(reply_id=reply.pk)
    assert done.status == "failed"
    assert "outcome unknown" in done.error


def test_long_reply_is_cut_to_whatsapps_limit(graph) -> None:
    reply = _pending_reply(text="x" * 5000)
    assert reply_deliver(reply_id=reply.pk).status == "sent"
    ((_, body),) = graph.sent_texts()
    assert len(body) == 4096


def test_aisensy_reply_goes_through_its_direct_api(graph) -> None:
    reply = _pending_reply(channel="aisensy")
    done = reply_deliver(reply_id=reply.pk)
    assert done.status == "sent"
    assert graph.requests[0].path == "/direct-apis/t1/messages"
    assert graph.sent_texts() == [(USER, "Here is your answer")]


def test_status_webhooks_follow_the_sent_wamid(graph, post_whatsapp) -> None:
    reply = reply_deliver(reply_id=_pending_reply().pk)
    for value in ("delivered", "read"):
        body = p.notification(statuses=[p.status(reply.external_id, value, USER)])
        assert post_whatsapp(body).status_code == 200
        reply.refresh_from_db()
        assert reply.status == value
