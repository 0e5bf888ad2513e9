"""The Pub/Sub module and ``pubsub_setup`` through the real client and emulator."""

from __future__ import annotations

import io
import json
import threading
import time

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from conftest import free_loopback_address
from vocoeng import bus, correlation, pubsub
from vocoeng.models import BusMessage

pytestmark = [pytest.mark.timeout(60)]


def _setup() -> str:
    out = io.StringIO()
    call_command("pubsub_setup", stdout=out)
    return out.getvalue()


def _pull(subscription: str, max_messages: int = 10) -> list:
    client = pubsub.subscriber()
    response = client.pull(
        request={
            "subscription": pubsub.subscription_path(subscription),
            "max_messages": max_messages,
            "return_immediately": True,
        }
    )
    received = list(response.received_messages)
    if received:
        client.acknowledge(
            request={
                "subscription": pubsub.subscription_path(subscription),
                "ack_ids": [r.ack_id for r in received],
            }
        )
    return [r.message for r in received]


def _state(settings) -> dict:
    client = pubsub.publisher()
    project = f"projects/{settings.PUBSUB_PROJECT_ID}"
    topics = sorted(t.name for t in client.list_topics(request={"project": project}))
    subs = {
        s.name.rsplit("/", 1)[1]: pubsub.subscription_describe(s.name.rsplit("/", 1)[1])
        for s in pubsub.subscriber().list_subscriptions(request={"project": project})
    }
    return {"topics": topics, "subscriptions": subs}


def test_pubsub_setup_twice_yields_the_same_state(pubsub_settings, settings) -> None:
    first = _setup()
    state = _state(settings)
    second = _setup()

    assert _state(settings) == state
    assert first.count(": created") == 9 and ": found" not in first
    assert second.count(": found") == 9 and ": created" not in second
    assert len(state["topics"]) == 5
    bridge = state["subscriptions"][settings.PUBSUB_SUBSCRIPTION_MESSAGES]
    assert bridge == {
        "name": settings.PUBSUB_SUBSCRIPTION_MESSAGES,
        "topic": settings.PUBSUB_TOPIC_MESSAGES,
        "ack_deadline_seconds": 600,
        "retention_seconds": 7 * 24 * 3600,
        "dead_letter_topic": settings.PUBSUB_TOPIC_DEAD_LETTER,
        "max_delivery_attempts": 5,
    }
    for name in (settings.PUBSUB_SUBSCRIPTION_JOBS, settings.PUBSUB_SUBSCRIPTION_VOC):
        assert state["subscriptions"][name]["max_delivery_attempts"] == 5
    store = state["subscriptions"][settings.PUBSUB_SUBSCRIPTION_DEAD_LETTER]
    assert store["dead_letter_topic"] == ""


def test_publish_delivers_data_and_attributes(pubsub_settings, settings) -> None:
    _setup()
    message_id = pubsub.publish(
        topic=settings.PUBSUB_TOPIC_MESSAGES, data=b'{"a": 1}', attributes={"k": "v"}
    )
    (message,) = _pull(settings.PUBSUB_SUBSCRIPTION_MESSAGES)
    assert message.message_id == message_id
    assert message.data == b'{"a": 1}'
    assert dict(message.attributes) == {"k": "v"}


def test_publish_to_a_missing_topic_is_a_permanent_error(pubsub_settings) -> None:
    with pytest.raises(pubsub.PubSubError) as raised:
        pubsub.publish(topic="not-created", data=b"x", attributes={})
    assert raised.value.transient is False
    assert "not-created does not exist" in str(raised.value)


def test_describe_missing_subscription_says_run_setup(pubsub_settings) -> None:
    with pytest.raises(pubsub.SubscriptionNotFound, match="pubsub_setup"):
        pubsub.subscription_describe("nope-bridge")


@pytest.mark.django_db
def test_bus_pubsub_publishes_an_inbound_message_once(pubsub_settings, settings):
    settings.BUS = "pubsub"
    _setup()
    payload = {"source": "api", "user_id": "u1", "message": "hi", "message_id": "m-1"}
    for _ in range(2):  # a retried publish (same key) goes out once
        record = bus.publish(
            topic=settings.PUBSUB_TOPIC_MESSAGES, payload=payload, key="m-1"
        )
    assert record is not None and record.pubsub_message_id
    assert BusMessage.objects.count() == 1

    (message,) = _pull(settings.PUBSUB_SUBSCRIPTION_MESSAGES)
    assert message.message_id == record.pubsub_message_id
    assert json.loads(message.data) == payload
    assert message.attributes["kind"] == "chat_message"
    assert message.attributes["idempotency_key"] == "m-1"
    assert "correlation_id" not in message.attributes  # none was current
    assert _pull(settings.PUBSUB_SUBSCRIPTION_MESSAGES) == []


@pytest.mark.django_db
def test_bus_pubsub_messages_carry_the_current_correlation_id(
    pubsub_settings, settings
):
    """The request's (or task's) id travels as the ``correlation_id`` attribute."""
    settings.BUS = "pubsub"
    _setup()
    pubsub.subscription_ensure(
        pubsub.SubscriptionSpec(
            name="responses-check",
            topic=settings.PUBSUB_TOPIC_RESPONSES,
            dead_letter=False,
        )
    )
    payload = {"source": "api", "user_id": "u1", "message": "hi", "message_id": "m-2"}
    token = correlation.activate("req-77")
    try:
        bus.publish(topic=settings.PUBSUB_TOPIC_MESSAGES, payload=payload, key="m-2")
        bus.publish(
            topic=settings.PUBSUB_TOPIC_RESPONSES,
            payload={"message_id": "r-1"},
            key="r-1",
            attributes={"kind": "chat_response"},
        )
        # an id the caller set on purpose wins
        bus.publish(
            topic=settings.PUBSUB_TOPIC_RESPONSES,
            payload={"message_id": "r-2"},
            key="r-2",
            attributes={"correlation_id": "given-1"},
        )
    finally:
        correlation.deactivate(token)
    (inbound,) = _pull(settings.PUBSUB_SUBSCRIPTION_MESSAGES)
    assert inbound.attributes["correlation_id"] == "req-77"
    responses = {
        json.loads(m.data)["message_id"]: m.attributes for m in _pull("responses-check")
    }
    assert responses["r-1"]["correlation_id"] == "req-77"
    assert responses["r-1"]["idempotency_key"] == "r-1"  # consumers dedup on it
    assert responses["r-2"]["correlation_id"] == "given-1"


@pytest.fixture
def unreachable(pubsub_outage) -> str:
    """Point the clients at an address nothing answers on; wait 1 s for it."""
    return pubsub_outage.down(startup_wait=1.0)


@pytest.mark.parametrize("command", ["pubsub_setup", "pubsub_bridge"])
def test_unreachable_pubsub_is_a_clear_error_not_a_hang(unreachable, command):
    started = time.monotonic()
    with pytest.raises(CommandError) as raised:
        call_command(command, stdout=io.StringIO())
    message = str(raised.value)
    assert f"Pub/Sub at {unreachable} is unreachable" in message
    assert "PUBSUB_STARTUP_WAIT_SECONDS" in message
    # The client's own retry policy waited minutes here (the test's timeout
    # is 60 s): the wait is the setting's.
    assert time.monotonic() - started < 30


@pytest.mark.django_db
def test_readyz_names_pubsub_when_it_is_unreachable(unreachable, settings, client):
    settings.BUS = "pubsub"
    response = client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["checks"]["pubsub"] == "failing"
    assert body["checks"]["database"] == "ok"
    assert "ServiceUnavailable" in body["errors"]["pubsub"]


def test_setup_waits_for_an_emulator_that_starts_late(pubsub_settings, settings):
    """As under docker compose: pubsub_setup starts before the emulator answers."""
    from vocoeng.pubsub_emulator import PubSubEmulator

    port = int(free_loopback_address().rsplit(":", 1)[1])
    late = PubSubEmulator(host="127.0.0.1", port=port)
    settings.PUBSUB_EMULATOR_HOST = late.address
    settings.PUBSUB_STARTUP_WAIT_SECONDS = 30.0
    pubsub.reset_clients()
    timer = threading.Timer(1.0, late.start)
    timer.start()
    try:
        out = _setup()
    finally:
        timer.join()
        pubsub.reset_clients()
        late.stop()
    assert f"topic {settings.PUBSUB_TOPIC_MESSAGES}: created" in out
    assert out.count(": created") == len(pubsub.topics_wanted()) + len(
        pubsub.subscriptions_wanted()
    )


def _committing() -> list[threading.Thread]:
    """Return the client's batch-commit threads still running."""
    return [t for t in threading.enumerate() if "CommitBatchPublisher" in t.name]


def test_a_publish_reported_failed_is_not_tried_again_behind_our_back(
    pubsub_outage, settings
):
    """The batch gives up when its caller does (PUBSUB_PUBLISH_TIMEOUT_SECONDS):
    with the client's default, its commit went on being retried for minutes."""
    before = set(_committing())
    pubsub_outage.down(publish_timeout=1.0)
    started = time.monotonic()
    with pytest.raises(pubsub.PubSubError, match="failed"):
        pubsub.publish(topic=settings.PUBSUB_TOPIC_MESSAGES, data=b"{}", attributes={})
    assert time.monotonic() - started < 10
    deadline = time.monotonic() + 10
    while set(_committing()) - before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not set(_committing()) - before
