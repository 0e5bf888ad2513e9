"""Drive the in-repository Pub/Sub emulator with the real google-cloud-pubsub client.

Run without Django: ``pytest vocoeng/tests/test_pubsub_emulator.py -p no:django``.
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.api_core import exceptions
from google.cloud import pubsub_v1
from google.pubsub_v1 import types as pubsub_types

from vocoeng.pubsub_emulator import PubSubEmulator

PROJECT = "projects/vocoeng-test"
ROOT = Path(__file__).resolve().parents[2]


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll *predicate* until it holds or *timeout* passes; return its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


class Env:
    """Bundle an emulator with real clients connected to it."""

    def __init__(self, emulator: PubSubEmulator) -> None:
        self.emulator = emulator
        self.publisher = pubsub_v1.PublisherClient()
        self.subscriber = pubsub_v1.SubscriberClient()
        self._futures: list[Any] = []

    def topic(self, name: str | None = None) -> str:
        """Create a topic with a unique name and return its path."""
        path = f"{PROJECT}/topics/{name or 'topic-' + uuid.uuid4().hex[:8]}"
        self.publisher.create_topic(name=path)
        return path

    def subscription(self, topic: str, **fields: Any) -> str:
        """Create a subscription on *topic* and return its path."""
        path = f"{PROJECT}/subscriptions/sub-{uuid.uuid4().hex[:8]}"
        self.subscriber.create_subscription(
            request={"name": path, "topic": topic, **fields}
        )
        return path

    def publish(self, topic: str, data: bytes, **attributes: str) -> str:
        """Publish one message and return its message id."""
        return self.publisher.publish(topic, data, **attributes).result(timeout=10)

    def subscribe(self, subscription: str, callback: Callable, **kwargs: Any) -> Any:
        """Open a streaming pull that the fixture cancels at teardown."""
        future = self.subscriber.subscribe(subscription, callback, **kwargs)
        self._futures.append(future)
        return future

    def pull(self, subscription: str, max_messages: int = 10) -> list[Any]:
        """Unary-pull whatever is ready right now."""
        response = self.subscriber.pull(
            request={
                "subscription": subscription,
                "max_messages": max_messages,
                "return_immediately": True,
            }
        )
        return list(response.received_messages)

    def leases(self, subscription: str) -> int:
        """Return how many deliveries the server still considers outstanding."""
        return len(self.emulator.store.subscriptions[subscription].leases)

    def close(self) -> None:
        for future in self._futures:
            future.cancel()
            try:
                future.result(timeout=5)
            except Exception:  # noqa: S110 - already reported by the test
                pass
        self.subscriber.close()
        self.publisher.stop()


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    with PubSubEmulator() as emulator:
        monkeypatch.setenv("PUBSUB_EMULATOR_HOST", emulator.address)
        bundle = Env(emulator)
        try:
            yield bundle
        finally:
            bundle.close()


class Collector:
    """Record messages from a streaming pull; ack or nack according to a rule."""

    def __init__(self, expected: int, ack: Callable[[Any], bool] = lambda m: True):
        self.expected = expected
        self.should_ack = ack
        self.messages: list[Any] = []
        self.lock = threading.Lock()
        self.done = threading.Event()

    def __call__(self, message: Any) -> None:
        with self.lock:
            self.messages.append(message)
            if len(self.messages) >= self.expected:
                self.done.set()
        if self.should_ack(message):
            message.ack()
        else:
            message.nack()

    def wait(self, timeout: float = 10.0) -> list[Any]:
        assert self.done.wait(timeout), f"got {len(self.messages)}/{self.expected}"
        return self.messages


@pytest.mark.timeout(30)
def test_streaming_pull_receives_published_messages_with_attributes(env: Env) -> None:
    topic = env.topic()
    sub = env.subscription(topic, ack_deadline_seconds=30)
    assert env.subscriber.get_subscription(subscription=sub).ack_deadline_seconds == 30
    ids = [env.publish(topic, b"m%d" % i, index=str(i), kind="test") for i in range(20)]
    assert len(set(ids)) == 20

    collector = Collector(expected=20)
    env.subscribe(sub, collector)
    messages = collector.wait()

    assert sorted(m.message_id for m in messages) == sorted(ids)
    for m in messages:
        assert m.data == b"m" + m.attributes["index"].encode()
        assert m.attributes["kind"] == "test"
        assert m.publish_time.timestamp() == pytest.approx(time.time(), abs=60)
        assert m.delivery_attempt is None  # no dead letter policy
    # The acks travel as unary Acknowledge calls; the server must drop the leases.
    assert wait_until(lambda: env.leases(sub) == 0)
    assert env.pull(sub) == []


@pytest.mark.timeout(30)
def test_ordering_key_is_carried(env: Env) -> None:
    publisher = pubsub_v1.PublisherClient(
        publisher_options=pubsub_v1.types.PublisherOptions(enable_message_ordering=True)
    )
    topic = env.topic()
    sub = env.subscription(topic, enable_message_ordering=True)
    for i in range(3):
        publisher.publish(topic, b"%d" % i, ordering_key="user-1").result(timeout=10)
    received = env.pull(sub)
    assert [(r.message.data, r.message.ordering_key) for r in received] == [
        (b"0", "user-1"),
        (b"1", "user-1"),
        (b"2", "user-1"),
    ]


@pytest.mark.timeout(30)
def test_nack_redelivers_immediately(env: Env) -> None:
    topic = env.topic()
    sub = env.subscription(topic)
    ids = {env.publish(topic, b"payload-%d" % i) for i in range(3)}
    seen: dict[str, int] = {}

    def ack_second_time(message: Any) -> bool:
        seen[message.message_id] = seen.get(message.message_id, 0) + 1
        return seen[message.message_id] == 2

    collector = Collector(expected=6, ack=ack_second_time)
    env.subscribe(sub, collector)
    collector.wait()
    assert seen == dict.fromkeys(ids, 2)
    assert wait_until(lambda: env.leases(sub) == 0)


@pytest.mark.timeout(30)
def test_unacked_message_is_redelivered_after_ack_deadline(env: Env) -> None:
    topic = env.topic()
    sub = env.subscription(topic)
    message_id = env.publish(topic, b"slow")

    (first,) = env.pull(sub)
    assert first.message.message_id == message_id
    # 10 s is the smallest subscription deadline; shorten this one lease.
    env.subscriber.modify_ack_deadline(
        subscription=sub, ack_ids=[first.ack_id], ack_deadline_seconds=1
    )
    assert env.pull(sub) == []  # still leased
    time.sleep(1.2)

    (again,) = env.pull(sub)
    assert again.message.message_id == message_id
    assert again.ack_id != first.ack_id
    # The expired ack id is now meaningless; acking it must not drop the new lease.
    env.subscriber.acknowledge(subscription=sub, ack_ids=[first.ack_id])
    assert env.leases(sub) == 1
    env.subscriber.acknowledge(subscription=sub, ack_ids=[again.ack_id])
    assert env.leases(sub) == 0


@pytest.mark.timeout(30)
def test_dead_letter_after_max_delivery_attempts(env: Env) -> None:
    topic = env.topic()
    dlq_topic = env.topic()
    dlq_sub = env.subscription(dlq_topic)
    sub = env.subscription(
        topic,
        dead_letter_policy={
            "dead_letter_topic": dlq_topic,
            "max_delivery_attempts": 5,
        },
    )
    env.publish(topic, b"poison", origin="test")

    collector = Collector(expected=5, ack=lambda m: False)
    env.subscribe(sub, collector)
    attempts = [m.delivery_attempt for m in collector.wait()]
    assert attempts == [1, 2, 3, 4, 5]

    dead: list[Any] = []
    assert wait_until(lambda: bool(dead.extend(env.pull(dlq_sub))) or bool(dead))
    (letter,) = dead
    assert letter.message.data == b"poison"
    assert letter.message.attributes["origin"] == "test"
    assert letter.message.attributes["CloudPubSubDeadLetterSourceDeliveryCount"] == "5"
    assert (
        letter.message.attributes["CloudPubSubDeadLetterSourceSubscription"]
        == (sub.rsplit("/", 1)[1])
    )
    # The DLQ subscription has no policy of its own, so no attempt count.
    assert letter.delivery_attempt == 0
    time.sleep(0.2)
    assert len(collector.messages) == 5  # removed from the source subscription
    assert env.leases(sub) == 0


@pytest.mark.timeout(30)
def test_missing_resources_raise_not_found(env: Env) -> None:
    missing_sub = f"{PROJECT}/subscriptions/does-not-exist"
    missing_topic = f"{PROJECT}/topics/does-not-exist"
    with pytest.raises(exceptions.NotFound):
        env.subscriber.get_subscription(subscription=missing_sub)
    with pytest.raises(exceptions.NotFound):
        env.subscriber.acknowledge(subscription=missing_sub, ack_ids=["x"])
    with pytest.raises(exceptions.NotFound):
        env.publisher.get_topic(topic=missing_topic)
    with pytest.raises(exceptions.NotFound):
        env.publish(missing_topic, b"lost")
    with pytest.raises(exceptions.NotFound):
        env.subscriber.create_subscription(name=missing_sub, topic=missing_topic)
    # A streaming pull on a missing subscription must end, not retry forever.
    future = env.subscribe(missing_sub, lambda m: None)
    with pytest.raises(exceptions.NotFound):
        future.result(timeout=10)


@pytest.mark.timeout(30)
def test_duplicate_create_raises_already_exists(env: Env) -> None:
    topic = env.topic("duplicate-topic")
    with pytest.raises(exceptions.AlreadyExists):
        env.publisher.create_topic(name=topic)
    sub = env.subscription(topic)
    with pytest.raises(exceptions.AlreadyExists):
        env.subscriber.create_subscription(name=sub, topic=topic)


@pytest.mark.timeout(30)
def test_invalid_arguments_are_rejected(env: Env) -> None:
    topic = env.topic()
    with pytest.raises(exceptions.InvalidArgument):
        env.publisher.create_topic(name="topics/no-project")
    with pytest.raises(exceptions.InvalidArgument):
        env.subscription(topic, ack_deadline_seconds=5)
    with pytest.raises(exceptions.InvalidArgument):
        env.subscription(
            topic,
            dead_letter_policy={"dead_letter_topic": topic, "max_delivery_attempts": 2},
        )
    sub = env.subscription(topic)
    with pytest.raises(exceptions.InvalidArgument):
        env.subscriber.modify_ack_deadline(
            subscription=sub, ack_ids=["x"], ack_deadline_seconds=601
        )
    with pytest.raises(exceptions.MethodNotImplemented):
        env.subscription(topic, filter='attributes.kind = "x"')


@pytest.mark.timeout(30)
def test_fan_out_to_every_attached_subscription(env: Env) -> None:
    topic = env.topic()
    first = env.subscription(topic)
    second = env.subscription(topic)
    ids = {env.publish(topic, b"%d" % i) for i in range(5)}
    late = env.subscription(topic)  # attached after publishing: gets nothing

    for sub in (first, second):
        collector = Collector(expected=5)
        env.subscribe(sub, collector)
        assert {m.message_id for m in collector.wait()} == ids
    assert env.pull(late) == []
    assert {s for s in env.publisher.list_topic_subscriptions(topic=topic)} == {
        first,
        second,
        late,
    }


@pytest.mark.timeout(60)
def test_batch_larger_than_client_receive_limit_is_split(env: Env) -> None:
    topic = env.topic()
    sub = env.subscription(topic)
    payload = os.urandom(512 * 1024)
    count = 16  # 8 MiB queued before the stream opens: one response can't hold it
    futures = [env.publisher.publish(topic, payload, n=str(i)) for i in range(count)]
    for future in futures:
        future.result(timeout=10)

    collector = Collector(expected=count)
    env.subscribe(sub, collector)
    messages = collector.wait(timeout=20)
    assert sorted(int(m.attributes["n"]) for m in messages) == list(range(count))
    assert all(m.data == payload for m in messages)


@pytest.mark.timeout(30)
def test_server_respects_max_outstanding_messages(env: Env) -> None:
    topic = env.topic()
    sub = env.subscription(topic)
    futures = [env.publisher.publish(topic, b"%d" % i) for i in range(20)]
    for future in futures:
        future.result(timeout=10)

    held: list[Any] = []
    flow = pubsub_v1.types.FlowControl(max_messages=5)
    env.subscribe(sub, held.append, flow_control=flow)
    assert wait_until(lambda: len(held) == 5)
    time.sleep(0.3)
    assert env.leases(sub) == 5  # the server sent no more than the window
    for message in held[:2]:
        message.ack()
    assert wait_until(lambda: len(held) == 7)


@pytest.mark.timeout(30)
def test_list_delete_and_pagination(env: Env) -> None:
    topics = {env.topic(f"listed-{i}") for i in range(5)}
    listed = env.publisher.list_topics(request={"project": PROJECT, "page_size": 2})
    assert {t.name for t in listed} == topics

    sub = env.subscription(sorted(topics)[0])
    assert [s.name for s in env.subscriber.list_subscriptions(project=PROJECT)] == [sub]
    env.publisher.delete_topic(topic=sorted(topics)[0])
    with pytest.raises(exceptions.NotFound):
        env.publisher.get_topic(topic=sorted(topics)[0])
    # Like the real service, a subscription outlives its topic, detached.
    detached = env.subscriber.get_subscription(subscription=sub)
    assert detached.topic == "_deleted-topic_"
    env.subscriber.delete_subscription(subscription=sub)
    with pytest.raises(exceptions.NotFound):
        env.subscriber.get_subscription(subscription=sub)


@pytest.mark.timeout(30)
def test_stop_ends_open_streams_promptly(env: Env) -> None:
    topic = env.topic()
    sub = env.subscription(topic)
    # A raw stream: the real client retries a dead server for ~10 s on close.
    channel = grpc.insecure_channel(env.emulator.address)
    streaming_pull = channel.stream_stream(
        "/google.pubsub.v1.Subscriber/StreamingPull",
        request_serializer=pubsub_types.StreamingPullRequest.pb().SerializeToString,
        response_deserializer=pubsub_types.StreamingPullResponse.pb().FromString,
    )
    requests: queue.Queue[Any] = queue.Queue()
    requests.put(
        pubsub_types.StreamingPullRequest.pb()(
            subscription=sub, stream_ack_deadline_seconds=10
        )
    )
    responses = streaming_pull(iter(requests.get, None))
    env.publish(topic, b"stream is open")
    assert next(responses).received_messages[0].message.data == b"stream is open"

    started = time.monotonic()
    env.emulator.stop()
    with pytest.raises(grpc.RpcError) as raised:
        next(responses)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert time.monotonic() - started < 3
    requests.put(None)
    channel.close()


@pytest.mark.timeout(30)
def test_runs_as_a_module(monkeypatch: pytest.MonkeyPatch) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "vocoeng.pubsub_emulator", "--port", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("export PUBSUB_EMULATOR_HOST=127.0.0.1:")
        monkeypatch.setenv("PUBSUB_EMULATOR_HOST", line.split("=", 1)[1])
        publisher = pubsub_v1.PublisherClient()
        topic = publisher.create_topic(name=f"{PROJECT}/topics/subprocess")
        assert publisher.get_topic(topic=topic.name).name == topic.name
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0


def test_message_ids_are_unique_across_restarts(env: Env) -> None:
    """A restarted emulator never reuses an id: durable dedup claims outlive it."""
    topic = env.topic()
    first = [env.publish(topic, b"x") for _ in range(3)]
    with PubSubEmulator() as restarted:
        restarted.store.create_topic(
            pubsub_types.Topic.pb(pubsub_types.Topic(name=topic))
        )
        again = restarted.store.publish(
            topic,
            [pubsub_types.PubsubMessage.pb(pubsub_types.PubsubMessage(data=b"y"))],
        )
    assert len(set(first)) == 3
    assert all(i.isdigit() for i in [*first, *again])  # decimal, as Pub/Sub's
    assert int(again[0]) > int(first[-1])
