"""The Redis transport that reuses its client (vocoeng/kombu_redis.py)."""

from __future__ import annotations

import socket
import uuid

import pytest
from kombu import Connection, Exchange, Queue

from vocoeng.kombu_redis import Transport

URL = "redis://127.0.0.1:6379/15"


def _redis_up() -> bool:
    try:
        socket.create_connection(("127.0.0.1", 6379), 0.5).close()
    except OSError:
        return False
    return True


def test_the_channel_reuses_one_sync_client() -> None:
    with Connection(URL, transport=Transport) as conn:
        channel = conn.channel()
        first = channel._create_client()
        assert channel._create_client() is first
        assert first.connection_pool is channel.pool
        channel.close()


@pytest.mark.skipif(not _redis_up(), reason="needs a Redis server on 127.0.0.1:6379")
def test_publish_consume_and_ack_round_trip() -> None:
    name = f"vocoeng-test-{uuid.uuid4().hex[:8]}"
    queue = Queue(name, Exchange(name, type="direct"), routing_key=name)
    with Connection(URL, transport=Transport) as conn:
        with conn.Producer() as producer:
            for i in range(3):
                producer.publish(
                    {"n": i},
                    exchange=queue.exchange,
                    routing_key=name,
                    declare=[queue],
                    serializer="json",
                )
        got = []
        with conn.SimpleQueue(queue) as simple:
            for _ in range(3):
                message = simple.get(timeout=5)
                got.append(message.payload["n"])
                message.ack()
            with pytest.raises(simple.Empty):  # all acked, nothing left
                simple.get_nowait()
    assert got == [0, 1, 2]
