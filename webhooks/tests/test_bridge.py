"""``manage.py pubsub_bridge`` as a child process: real Pub/Sub client + emulator,
a real Celery worker, the test database."""

from __future__ import annotations

import io
import json
import re
import urllib.request
import uuid
from collections.abc import Iterator

import pytest
import redis
from django.core.management import call_command

from conftest import database_url, wait_for
from conversations.models import AICall, Message
from vocoeng import pubsub
from vocoeng.claims_redis import RedisClaims
from vocoeng.models import DeadLetter, ProcessedMessage
from vocoeng.testing.process import free_port
from vocoeng.testing.redis import URL as REDIS_URL
from vocoeng.testing.redis import needs_redis
from webhooks.bridge.testing import BridgeProcess

pytestmark = [pytest.mark.timeout(90)]


def chat(n: int | str, text: str = "Hello bridge") -> bytes:
    return json.dumps(
        {"source": "api", "user_id": f"u{n}", "message": text, "message_id": f"m-{n}"}
    ).encode()


def publish_all(topic: str, items: list[tuple[bytes, dict[str, str]]]) -> list[str]:
    futures = [
        pubsub.publish_async(topic=topic, data=data, attributes=attrs)
        for data, attrs in items
    ]
    return [f.result(timeout=30) for f in futures]


def pull(subscription: str) -> list:
    """Unary-pull and ack what is there now."""
    client = pubsub.subscriber()
    path = pubsub.subscription_path(subscription)
    got = []
    for _ in range(3):
        response = client.pull(
            request={
                "subscription": path,
                "max_messages": 100,
                "return_immediately": True,
            }
        )
        if response.received_messages:
            client.acknowledge(
                request={
                    "subscription": path,
                    "ack_ids": [r.ack_id for r in response.received_messages],
                }
            )
            got.extend(r.message for r in response.received_messages)
    return got


@pytest.fixture
def bridge_env(pubsub_settings, transactional_db) -> dict[str, str]:
    call_command("pubsub_setup", stdout=io.StringIO())
    return {**pubsub_settings, "DATABASE_URL": database_url()}


@pytest.fixture
def start_bridge(bridge_env) -> Iterator:
    bridges: list[BridgeProcess] = []

    def start(*args: str, env: dict[str, str] | None = None, wait: bool = True):
        bridge = BridgeProcess(*args, env={**bridge_env, **(env or {})})
        bridges.append(bridge.start(wait=wait))
        return bridge

    yield start
    for bridge in bridges:
        bridge.stop()


def chains_started(worker) -> int:
    """Return how many reply chains the worker started (first task of each).

    Counted on the task_started line (vocoeng.correlation) that every bridged
    task logs: Celery's own "Task ... received" line may be silenced
    (CELERY_RECEIVED_LOG_LEVEL).
    """
    return sum(
        "task_started task=conversations.reply_generate " in line
        for line in worker.output().splitlines()
    )


def replies() -> int:
    return Message.objects.filter(
        role="assistant", status=Message.Status.DELIVERED
    ).count()


def _done_claims(store: str, prefix: str) -> dict[str, str]:
    """Return the bridge's done claims (key → its message kind) in ``store``."""
    if store == "database":
        done = ProcessedMessage.objects.filter(state=ProcessedMessage.State.DONE)
        return {p.key: p.kind for p in done}
    client = redis.Redis.from_url(REDIS_URL)
    found = {}
    for name in client.scan_iter(f"{prefix}*"):
        if client.get(name) == b"done":
            kind, key = name.decode().removeprefix(prefix).split(":", 3)[2:]
            found[key] = kind
    client.close()
    RedisClaims(REDIS_URL, prefix=prefix).clear()
    return found


@pytest.mark.parametrize(
    "store", ["database", pytest.param("redis", marks=needs_redis)]
)
def test_each_message_is_handled_once_with_duplicates_injected(
    store, settings, celery_worker_factory, start_bridge
) -> None:
    prefix = f"test-bridge-{uuid.uuid4().hex[:8]}-"
    claims_env = {"PUBSUB_BRIDGE_DEDUP": store}
    if store == "redis":
        claims_env |= {
            "PUBSUB_BRIDGE_DEDUP_REDIS_URL": REDIS_URL,
            "PUBSUB_BRIDGE_DEDUP_KEY_PREFIX": prefix,
        }
    worker = celery_worker_factory()
    topic = settings.PUBSUB_TOPIC_MESSAGES
    # A second subscription on the same topic delivers every message a second
    # time with the same Pub/Sub message id, as a redelivery does.
    pubsub.subscription_ensure(
        pubsub.SubscriptionSpec(name="again-bridge", topic=topic, dead_letter=False)
    )
    bridge = start_bridge(
        "--subscription",
        settings.PUBSUB_SUBSCRIPTION_MESSAGES,
        "--subscription",
        "again-bridge",
        "--max-in-flight",
        "5",
        env=claims_env,
    )
    kind = {"kind": "chat_message"}
    keyed = [(chat(i), {**kind, "idempotency_key": f"k-{i}"}) for i in range(8)]
    # m-0..m-2 published twice more with the same idempotency key (a retried
    # publish: new message ids); m-8 and m-9 carry no key (dedup on message id).
    items = keyed + keyed[:3] + keyed[:3] + [(chat(8), kind), (chat(9), kind)]
    publish_all(topic, items)

    deliveries = len(items) * 2
    wait_for(lambda: replies() == 10, timeout=60)
    wait_for(lambda: bridge.count("enqueued") + bridge.count("duplicate") == deliveries)
    assert bridge.count("enqueued") == 10
    assert bridge.count("dead_lettered") == 0
    assert Message.objects.filter(role="user").count() == 10
    assert AICall.objects.filter(status="succeeded").count() == 10
    wait_for(lambda: chains_started(worker) >= 10)
    assert chains_started(worker) == 10  # no second chain for any message
    done = _done_claims(store, prefix)
    assert len(done) == 10
    assert set(done.values()) == {"chat_message"}
    assert {key for key in done if key.startswith("k-")} == {f"k-{i}" for i in range(8)}
    if store == "redis":
        assert not ProcessedMessage.objects.exists()
    assert "Traceback" not in bridge.output()
    # The correlation id of each enqueue travels with every task of its chain.
    cids = re.findall(r"event=enqueued .*correlation_id=(\S+)", bridge.output())
    assert len(cids) == 10
    for task in ("reply_generate", "reply_publish", "reply_deliver"):
        logged = re.findall(
            rf"task_started task=conversations\.{task} id=\S+ correlation_id=(\S+)",
            worker.output(),
        )
        assert sorted(logged) == sorted(cids)
    for sub in (settings.PUBSUB_SUBSCRIPTION_MESSAGES, "again-bridge"):
        assert pull(sub) == []  # everything was acked


def test_malformed_messages_are_dead_lettered_with_reason(
    settings, start_bridge
) -> None:
    port = free_port()
    sub = settings.PUBSUB_SUBSCRIPTION_MESSAGES
    bridge = start_bridge("--subscription", sub, "--metrics-port", str(port))
    bad = [
        (b"{not json", "body is not JSON"),
        (b"\xff\xfe", "body is not UTF-8"),
        (json.dumps({"source": "api"}).encode(), "user_id"),
        (b"[1, 2]", "a chat message must be a JSON object"),
    ]
    ids = publish_all(
        settings.PUBSUB_TOPIC_MESSAGES, [(data, {"origin": "t"}) for data, _ in bad]
    )
    wait_for(lambda: DeadLetter.objects.count() == len(bad))
    wait_for(lambda: bridge.count("dead_lettered") == len(bad))

    for message_id, (data, reason) in zip(ids, bad, strict=True):
        letter = DeadLetter.objects.get(message_id=message_id)
        assert bytes(letter.data) == data
        assert reason in letter.reason
        assert letter.kind == "chat_message"  # from the subscription
        assert letter.subscription == settings.PUBSUB_SUBSCRIPTION_MESSAGES
        assert letter.attributes == {"origin": "t"}
    published = {
        m.attributes["dead_letter_message_id"]: m
        for m in pull(settings.PUBSUB_SUBSCRIPTION_DEAD_LETTER)
    }
    assert set(published) == set(ids)
    for message_id, (data, reason) in zip(ids, bad, strict=True):
        assert published[message_id].data == data
        assert reason in published[message_id].attributes["dead_letter_reason"]
        assert published[message_id].attributes["origin"] == "t"
    assert bridge.count("enqueued") == 0
    assert Message.objects.count() == 0  # nothing half-written
    assert pull(settings.PUBSUB_SUBSCRIPTION_MESSAGES) == []  # acked, not retried

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        exposition = r.read().decode()
    for event in ("received", "dead_lettered"):
        sample = (
            f'vocoeng_bridge_messages_total{{event="{event}",subscription="{sub}"}} 4.0'
        )
        assert sample in exposition
    assert 'event="enqueued"' not in exposition


def test_missing_subscription_exits_non_zero_with_a_clear_message(
    start_bridge,
) -> None:
    bridge = start_bridge("--subscription", "nope-bridge", wait=False)
    assert bridge.wait(60) != 0
    assert "subscription nope-bridge does not exist" in bridge.output()
    assert "pubsub_setup" in bridge.output()


def test_missing_credentials_exit_non_zero_with_a_clear_message(
    start_bridge, tmp_path
) -> None:
    env = {
        "PUBSUB_EMULATOR_HOST": "",
        "GOOGLE_APPLICATION_CREDENTIALS": "",
        "CLOUDSDK_CONFIG": str(tmp_path),
        "NO_GCE_CHECK": "true",
    }
    bridge = start_bridge(env=env, wait=False)
    assert bridge.wait(60) != 0
    assert "no Google credentials" in bridge.output()


@pytest.mark.parametrize("how", ["flag", "setting"])
def test_processes_share_the_subscription_and_stop_together(
    settings, start_bridge, how
) -> None:
    from conftest import purge_queues
    from webhooks.tests.conftest import broker_queue_size

    purge_queues()
    subscription = ("--subscription", settings.PUBSUB_SUBSCRIPTION_MESSAGES)
    if how == "flag":
        bridge = start_bridge(*subscription, "--processes", "2")
    else:  # the default: PUBSUB_BRIDGE_PROCESSES; each child is one bridge
        bridge = start_bridge(*subscription, env={"PUBSUB_BRIDGE_PROCESSES": "2"})
    wait_for(lambda: bridge.output().count("bridge pulling") == 2)
    kind = {"kind": "chat_message"}
    publish_all(settings.PUBSUB_TOPIC_MESSAGES, [(chat(i), kind) for i in range(20)])

    wait_for(lambda: bridge.count("enqueued") == 20)
    assert broker_queue_size("ai") == 20  # one chain each, whichever process
    assert Message.objects.filter(role="user").count() == 20
    bridge.terminate()
    assert bridge.wait(60) == 0
    assert bridge.output().count("bridge_stopped") == 2
    assert pull(settings.PUBSUB_SUBSCRIPTION_MESSAGES) == []
    purge_queues()
