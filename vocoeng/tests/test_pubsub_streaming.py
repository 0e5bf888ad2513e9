"""The bridge's streaming pull (vocoeng.pubsub.streaming) through the emulator.

The stream runs on the real client's channel; these tests watch what it does
from the outside: what arrives, what a second puller can still pull, and what
the emulator redelivers.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from vocoeng import pubsub
from vocoeng.pubsub_emulator import PubSubEmulator

pytestmark = [pytest.mark.timeout(90)]


class Inbox:
    """Collect what a stream hands over; optionally ack each at once."""

    def __init__(self, *, ack: bool = False) -> None:
        self.ack = ack
        self.messages: list[pubsub.Received] = []
        self.responses = 0
        self._cond = threading.Condition()

    def __call__(self, messages: list[pubsub.Received]) -> None:
        with self._cond:
            self.responses += 1
            self.messages.extend(messages)
            self._cond.notify_all()
        if self.ack:
            for message in messages:
                message.ack()

    def wait_for(self, n: int, timeout: float = 20.0) -> list[pubsub.Received]:
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.messages) >= n, timeout):
                raise AssertionError(f"got {len(self.messages)} of {n} messages")
            return list(self.messages)


def _topic_and_subscription(**extra) -> tuple[str, str]:
    name = f"s{uuid.uuid4().hex[:10]}"
    pubsub.publisher().create_topic(request={"name": pubsub.topic_path(name)})
    pubsub.subscriber().create_subscription(
        request={
            "name": pubsub.subscription_path(name),
            "topic": pubsub.topic_path(name),
            "ack_deadline_seconds": 600,
            **extra,
        }
    )
    return name, name


def _publish(topic: str, n: int, start: int = 0) -> list[str]:
    return [
        pubsub.publish(topic=topic, data=f"m{i}".encode(), attributes={"n": str(i)})
        for i in range(start, start + n)
    ]


def _pull_now(subscription: str) -> list[str]:
    """Return the data of what a second puller gets right now (and ack it)."""
    client = pubsub.subscriber()
    path = pubsub.subscription_path(subscription)
    response = client.pull(
        request={"subscription": path, "max_messages": 100}, timeout=5
    )
    received = list(response.received_messages)
    if received:
        client.acknowledge(
            request={"subscription": path, "ack_ids": [r.ack_id for r in received]}
        )
    return sorted(r.message.data.decode() for r in received)


@pytest.fixture
def stream_of(pubsub_settings) -> Iterator:
    streams: list[pubsub.StreamingPull] = []

    def open_(
        subscription: str, inbox: Inbox, max_messages: int = 100, max_bytes: int = 0
    ):
        stream = pubsub.streaming_pull(
            subscription=subscription,
            on_messages=inbox,
            max_messages=max_messages,
            max_bytes=max_bytes,
        )
        streams.append(stream)
        return stream

    yield open_
    for stream in streams:
        stream.stop(timeout=10)


def test_messages_arrive_with_their_fields_and_acks_settle_them(stream_of) -> None:
    topic, sub = _topic_and_subscription()
    ids = _publish(topic, 30)
    inbox = Inbox(ack=True)
    stream = stream_of(sub, inbox)

    got = inbox.wait_for(30)
    stream.stop()

    assert sorted(m.message_id for m in got) == sorted(ids)
    first = next(m for m in got if m.data == b"m0")
    assert first.attributes == {"n": "0"}
    assert first.delivery_attempt is None  # no dead-letter policy
    assert inbox.responses < 30  # handed over a response at a time
    assert stream.outstanding() == 0
    assert _pull_now(sub) == []  # every ack reached the server
    assert not stream.done() or stream.error() is None


def test_flow_control_holds_back_what_is_beyond_max_messages(stream_of) -> None:
    topic, sub = _topic_and_subscription()
    _publish(topic, 12)
    inbox = Inbox()
    stream = stream_of(sub, inbox, max_messages=5)

    held = inbox.wait_for(5)
    time.sleep(0.5)
    assert len(inbox.messages) == 5
    assert stream.outstanding() == 5
    for message in held:
        message.ack()
    inbox.wait_for(10)
    time.sleep(0.5)
    assert len(inbox.messages) == 10


def test_flow_control_holds_back_what_is_beyond_max_bytes(stream_of) -> None:
    topic, sub = _topic_and_subscription()
    for i in range(6):
        pubsub.publish(topic=topic, data=bytes([65 + i]) * 1000, attributes={})
    inbox = Inbox()
    stream = stream_of(sub, inbox, max_messages=100, max_bytes=2500)

    held = inbox.wait_for(2)  # two of 1,000 bytes fit in 2,500; a third not
    time.sleep(0.5)
    assert len(inbox.messages) == 2
    assert stream.outstanding() == 2
    held[0].ack()
    inbox.wait_for(3)
    time.sleep(0.5)
    assert len(inbox.messages) == 3


def test_stop_hands_back_what_was_not_acked_at_once(stream_of) -> None:
    topic, sub = _topic_and_subscription()
    _publish(topic, 6)
    inbox = Inbox()
    stream = stream_of(sub, inbox)
    got = inbox.wait_for(6)
    for message in got[:2]:
        message.ack()

    stream.stop()

    # Nacked, not left to the 60 s lease: another puller has them now.
    acked = {m.data.decode() for m in got[:2]}
    assert _pull_now(sub) == sorted({f"m{i}" for i in range(6)} - acked)


def test_a_nack_redelivers_with_the_next_attempt_number(stream_of) -> None:
    dead = f"d{uuid.uuid4().hex[:10]}"
    pubsub.publisher().create_topic(request={"name": pubsub.topic_path(dead)})
    topic, sub = _topic_and_subscription(
        dead_letter_policy={
            "dead_letter_topic": pubsub.topic_path(dead),
            "max_delivery_attempts": 5,
        }
    )
    _publish(topic, 1)
    inbox = Inbox()
    stream_of(sub, inbox)

    first = inbox.wait_for(1)[0]
    first.nack()
    second = inbox.wait_for(2)[1]
    second.ack()

    assert (first.message_id, first.delivery_attempt) == (second.message_id, 1)
    assert second.delivery_attempt == 2


def test_a_message_held_past_its_deadline_keeps_its_lease(pubsub_settings) -> None:
    topic, sub = _topic_and_subscription()
    _publish(topic, 1)
    inbox = Inbox()
    stream = pubsub.StreamingPull(
        client=pubsub.subscriber(),
        path=pubsub.subscription_path(sub),
        on_messages=inbox,
        max_messages=10,
        translate=lambda exc: exc,
        ack_deadline=10,  # the least Pub/Sub allows
    ).start()
    try:
        held = inbox.wait_for(1)[0]
        time.sleep(13)  # past the 10 s deadline: extended meanwhile
        assert _pull_now(sub) == []
        assert len(inbox.messages) == 1  # not redelivered on the stream either
        held.ack()
    finally:
        stream.stop(timeout=10)
    assert _pull_now(sub) == []


def test_a_missing_subscription_ends_the_stream_with_a_clear_error(
    stream_of,
) -> None:
    stream = stream_of("no-such-subscription", Inbox())

    deadline = time.monotonic() + 10
    while not stream.done() and time.monotonic() < deadline:
        time.sleep(0.05)

    assert stream.done()
    error = stream.error()
    assert isinstance(error, pubsub.SubscriptionNotFound)
    assert "no-such-subscription does not exist" in str(error)


def test_the_stream_reopens_when_the_server_comes_back(settings, monkeypatch) -> None:
    emulator = PubSubEmulator(host="127.0.0.1")
    emulator.start()
    project = f"t{uuid.uuid4().hex[:12]}"
    for name, value in (
        ("PUBSUB_EMULATOR_HOST", emulator.address),
        ("PUBSUB_PROJECT_ID", project),
    ):
        monkeypatch.setenv(name, value)
        setattr(settings, name, value)
    pubsub.reset_clients()
    stream = None
    try:
        topic, sub = _topic_and_subscription()
        _publish(topic, 3)
        inbox = Inbox(ack=True)
        stream = pubsub.streaming_pull(
            subscription=sub, on_messages=inbox, max_messages=100
        )
        inbox.wait_for(3)

        emulator.stop()  # open streams end with UNAVAILABLE
        time.sleep(0.5)
        assert not stream.done()  # reopening, not given up
        emulator.start()  # same port, same topics and subscriptions
        _publish(topic, 3, start=3)

        got = inbox.wait_for(6)
        assert sorted(m.data.decode() for m in got) == [f"m{i}" for i in range(6)]
        assert stream.error() is None
    finally:
        if stream is not None:
            stream.stop(timeout=10)
        pubsub.reset_clients()
        emulator.stop()
