"""The bridge under faults: broker down and back, SIGTERM in the middle."""

from __future__ import annotations

import io
import shutil
import socket
import subprocess
from collections.abc import Iterator

import pytest
import redis
from django.core.management import call_command

from conftest import database_url, purge_queues, wait_for
from conversations.models import Message
from vocoeng.models import ProcessedMessage
from vocoeng.testing.process import free_port
from webhooks.bridge.testing import BridgeProcess
from webhooks.tests.conftest import broker_queue_size
from webhooks.tests.test_bridge import chains_started, chat, publish_all, pull, replies

pytestmark = [pytest.mark.timeout(90)]


class Redis:
    """A throwaway redis-server on a port of its own, to kill and restart."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                *("redis-server", "--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(self._answers, timeout=10)

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def redis_server() -> Iterator[Redis]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (CI has it)")
    server = Redis()
    server.start()
    yield server
    server.kill()


@pytest.fixture
def bridge_env(pubsub_settings, transactional_db) -> dict[str, str]:
    call_command("pubsub_setup", stdout=io.StringIO())
    return {**pubsub_settings, "DATABASE_URL": database_url()}


@pytest.fixture
def bridges() -> Iterator[list[BridgeProcess]]:
    started: list[BridgeProcess] = []
    yield started
    for bridge in started:
        bridge.stop()


@pytest.mark.parametrize("store", ["database", "redis"])
def test_broker_down_then_back_handles_every_message_once(
    store, settings, bridge_env, bridges, redis_server, celery_worker_factory
) -> None:
    """With the claims in Redis (the default beside a Redis broker), the
    outage takes the claim store down too: the bridge waits out the broker's
    retry window before each nack, as it does for an enqueue."""
    broker = {"CELERY_BROKER_URL": redis_server.url}
    bridge = BridgeProcess(
        "--subscription",
        settings.PUBSUB_SUBSCRIPTION_MESSAGES,
        "--max-in-flight",
        "4",
        "--broker-retry-seconds",
        "2",
        env={**bridge_env, **broker, "PUBSUB_BRIDGE_DEDUP": store},
    ).start()
    bridges.append(bridge)

    redis_server.kill()
    n = 6
    publish_all(
        settings.PUBSUB_TOPIC_MESSAGES,
        [(chat(f"down-{i}"), {"kind": "chat_message"}) for i in range(n)],
    )
    # The bridge cannot enqueue: it nacks (after its retry window) and goes on.
    wait_for(lambda: bridge.count("nacked") >= 1, timeout=30)
    if store == "database":
        assert "broker unavailable" in bridge.output()
    else:
        assert "claim store (Redis) unavailable" in bridge.output()
        assert "bridge_claim_store_unavailable" in bridge.output()  # retried
    assert bridge.count("enqueued") == 0
    assert bridge.proc is not None and bridge.proc.poll() is None

    redis_server.start()  # an empty Redis: nothing was accepted while it was down
    worker = celery_worker_factory(env=broker)
    wait_for(lambda: replies() == n, timeout=60)
    wait_for(lambda: bridge.count("enqueued") == n)
    assert chains_started(worker) == n
    assert Message.objects.filter(role="user").count() == n
    if store == "database":
        assert ProcessedMessage.objects.filter(state="done").count() == n
    else:
        client = redis.Redis.from_url(redis_server.url)
        claims = list(client.scan_iter("*vocoeng:claim:*"))
        assert [client.get(k) for k in claims] == [b"done"] * n
        client.close()
        assert not ProcessedMessage.objects.exists()
    assert pull(settings.PUBSUB_SUBSCRIPTION_MESSAGES) == []
    # Redelivered, not dead-lettered: the outage stayed under 5 attempts.
    assert pull(settings.PUBSUB_SUBSCRIPTION_DEAD_LETTER) == []


def test_sigterm_in_the_middle_loses_nothing(settings, bridge_env, bridges) -> None:
    purge_queues()
    n = 150
    publish_all(
        settings.PUBSUB_TOPIC_MESSAGES,
        [(chat(f"term-{i}"), {"kind": "chat_message"}) for i in range(n)],
    )
    args = ("--subscription", settings.PUBSUB_SUBSCRIPTION_MESSAGES)
    first = BridgeProcess(*args, "--max-in-flight", "2", env=bridge_env).start()
    bridges.append(first)
    wait_for(lambda: first.count("enqueued") >= 10, timeout=30)
    first.terminate()
    assert first.wait(60) == 0  # graceful: in-flight enqueues finished
    assert "bridge stopped" in first.output()
    assert first.count("enqueued") < n  # the signal came in the middle

    second = BridgeProcess(*args, "--max-in-flight", "20", env=bridge_env).start()
    bridges.append(second)
    wait_for(
        lambda: ProcessedMessage.objects.filter(state="done").count() == n, timeout=60
    )
    wait_for(lambda: broker_queue_size("ai") == n)  # one chain per message
    assert first.count("enqueued") + second.count("enqueued") == n
    assert Message.objects.filter(role="user").count() == n
    assert pull(settings.PUBSUB_SUBSCRIPTION_MESSAGES) == []
    purge_queues()
