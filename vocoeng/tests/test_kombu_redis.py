"""The Redis transport that reuses its client (vocoeng/kombu_redis.py)."""

from __future__ import annotations

import threading
import uuid

import pytest
from kombu import Connection, Exchange, Queue
from kombu.utils.encoding import bytes_to_str

from vocoeng.kombu_redis import Transport
from vocoeng.testing.redis import URL, needs_redis


def test_the_channel_reuses_one_sync_client() -> None:
    with Connection(URL, transport=Transport) as conn:
        channel = conn.channel()
        first = channel._create_client()
        assert channel._create_client() is first
        assert first.connection_pool is channel.pool
        channel.close()


@needs_redis
def test_publish_consume_and_ack_round_trip() -> None:
    queue = _queue(f"vocoeng-test-{uuid.uuid4().hex[:8]}")
    with Connection(URL, transport=Transport) as conn:
        _publish(conn, queue, 3)
        assert _take(conn, queue, 3, then_empty=True) == [0, 1, 2]


def _queue(name: str) -> Queue:
    return Queue(name, Exchange(name, type="direct"), routing_key=name)


def _publish(conn: Connection, queue: Queue, count: int) -> None:
    with conn.Producer() as producer:
        for i in range(count):
            producer.publish(
                {"n": i},
                exchange=queue.exchange,
                routing_key=queue.routing_key,
                declare=[queue],
                serializer="json",
            )


@needs_redis
@pytest.mark.parametrize("prefix", ["", "vocoeng-test-prefix-"])
def test_batched_receive_keeps_order_prefetch_and_unacked_entries(prefix) -> None:
    name = f"vocoeng-test-{uuid.uuid4().hex[:8]}"
    queue = _queue(name)
    options = {"global_keyprefix": prefix} if prefix else {}
    with Connection(URL, transport=Transport, transport_options=options) as conn:
        _publish(conn, queue, 25)
        channel = conn.default_channel
        channel.basic_qos(0, 10, False)
        got: list = []
        with conn.Consumer(queue, callbacks=[lambda body, m: got.append((body, m))]):
            conn.drain_events(timeout=5)
            # One BLMPOP took a batch, bounded by the prefetch credit (10).
            assert 1 < len(got) <= 10
            unacked = {bytes_to_str(k) for k in _hkeys(conn, channel.unacked_key)}
            assert unacked == {m.delivery_tag for _, m in got}
            received = []
            while len(received) < 25:
                for body, message in got:
                    received.append(body["n"])
                    message.ack()
                got.clear()
                if len(received) < 25:
                    conn.drain_events(timeout=5)
        assert received == list(range(25))  # FIFO, none lost, none twice
        assert _hkeys(conn, channel.unacked_key) == []


@needs_redis
def test_a_batch_received_but_not_acked_goes_back_to_the_queue() -> None:
    name = f"vocoeng-test-{uuid.uuid4().hex[:8]}"
    queue = _queue(name)
    with Connection(URL, transport=Transport) as conn:
        _publish(conn, queue, 6)
        conn.default_channel.basic_qos(0, 4, False)
        got: list = []
        with conn.Consumer(queue, callbacks=[lambda body, m: got.append(body["n"])]):
            conn.drain_events(timeout=5)
        assert got and len(got) <= 4
    # The connection closed with those messages unacked: kombu restores them.
    with Connection(URL, transport=Transport) as conn:
        assert sorted(_take(conn, queue, 6, then_empty=True)) == list(range(6))


def _take(conn: Connection, queue: Queue, count: int, *, then_empty: bool) -> list:
    """Get and ack ``count`` messages one by one; return their numbers."""
    got = []
    with conn.SimpleQueue(queue) as simple:
        for _ in range(count):
            message = simple.get(timeout=5)
            got.append(message.payload["n"])
            message.ack()
        if then_empty:
            with pytest.raises(simple.Empty):  # all acked, nothing left
                simple.get_nowait()
    return got


def _hkeys(conn: Connection, key: str) -> list:
    channel = conn.default_channel
    with channel.conn_or_acquire() as client:
        # HKEYS is not among the commands kombu's client prefixes itself.
        return client.hkeys(channel.global_keyprefix + key)


@needs_redis
def test_acks_on_the_event_loop_are_removed_together_before_the_next_poll() -> None:
    from kombu.asynchronous import Hub, set_event_loop

    with Connection(URL, transport=Transport) as conn:
        got = _received_unacked(conn, 5)
        channel = conn.default_channel
        assert len(_hkeys(conn, channel.unacked_key)) == 5
        hub = Hub()
        hub._loop_thread = threading.get_ident()  # as if this thread ran it
        set_event_loop(hub)
        try:
            for message in got[:3]:
                message.ack()
            # Acked (the prefetch slots are free) but not yet removed in Redis.
            assert channel.qos._delivered.keys() - channel.qos._dirty == {
                m.delivery_tag for m in got[3:]
            }
            assert len(_hkeys(conn, channel.unacked_key)) == 5
            # What the loop runs after this turn's callbacks, before it polls
            # (Hub.create_loop): not only on its next turn, which waits for
            # the poll to return, up to a second on an idle worker.
            for callback in list(hub.on_tick):
                callback()
            left = {bytes_to_str(k) for k in _hkeys(conn, channel.unacked_key)}
            assert left == {m.delivery_tag for m in got[3:]}
            for callback in hub._pop_ready():  # the next turn: nothing more
                callback()
            left = {bytes_to_str(k) for k in _hkeys(conn, channel.unacked_key)}
            assert left == {m.delivery_tag for m in got[3:]}
            for message in got[3:]:
                message.ack()
        finally:
            hub.close()  # runs what is still pending, as a worker's hub does
            set_event_loop(None)
        assert _hkeys(conn, channel.unacked_key) == []


@needs_redis
def test_acks_off_the_event_loop_are_removed_at_once() -> None:
    with Connection(URL, transport=Transport) as conn:
        got = _received_unacked(conn, 2)
        channel = conn.default_channel
        got[0].ack()
        assert len(_hkeys(conn, channel.unacked_key)) == 1
        got[1].ack()
        assert _hkeys(conn, channel.unacked_key) == []


def _received_unacked(conn: Connection, count: int) -> list:
    """Publish ``count`` messages to a new queue; return them received, unacked."""
    queue = _queue(f"vocoeng-test-{uuid.uuid4().hex[:8]}")
    _publish(conn, queue, count)
    got: list = []
    with conn.Consumer(queue, callbacks=[lambda body, m: got.append(m)]):
        while len(got) < count:
            conn.drain_events(timeout=5)
    return got


def test_delivery_tags_are_unique_per_channel_and_after_a_fork(monkeypatch) -> None:
    with Connection(URL, transport=Transport) as conn:
        one, two = conn.channel(), conn.channel()
        tags = [one._next_delivery_tag() for _ in range(1000)]
        tags += [two._next_delivery_tag() for _ in range(1000)]
        assert len(set(tags)) == 2000
        before = one._next_delivery_tag()
        monkeypatch.setattr("os.getpid", lambda: -1)  # as in a forked child
        after = one._next_delivery_tag()
        assert after.rsplit("-", 1)[0] != before.rsplit("-", 1)[0]
        assert uuid.UUID(after)  # the shape of kombu's own tags
        one.close()
        two.close()


@needs_redis
@pytest.mark.parametrize("keys", [1, 2])
def test_push_many_leaves_each_list_as_one_lpush_a_message_would(keys) -> None:
    """One key goes out as one LPUSH, several as one MULTI/EXEC: either way
    each list ends as ``_put`` of each message in turn leaves it."""
    names = [f"vocoeng-test-{uuid.uuid4().hex[:8]}" for _ in range(keys)]
    entries = [(names[i % keys], f"m{i}") for i in range(6)]
    with Connection(URL, transport=Transport) as conn:
        channel = conn.channel()
        try:
            channel.push_many(entries)
            client = channel.client
            for name in names:
                expected = [p for k, p in reversed(entries) if k == name]
                got = [bytes_to_str(v) for v in client.lrange(name, 0, -1)]
                assert got == expected
        finally:
            channel.client.delete(*names)
            channel.close()


@needs_redis
def test_push_many_on_one_key_goes_under_the_key_prefix_on_the_channels_connection(
    monkeypatch,
) -> None:
    """The single-key push bypasses the client (vocoeng.kombu_redis._lpush):
    the key still gets the global prefix, the pool's connections are not
    used, a connection the server dropped is replaced on the next push, and a
    forked child never writes on its parent's socket."""
    import redis

    prefix = f"vocoeng-test-{uuid.uuid4().hex[:8]}-"
    key = prefix + "q"
    plain = redis.Redis.from_url(URL)
    options = {"global_keyprefix": prefix}
    with Connection(URL, transport=Transport, transport_options=options) as conn:
        channel = conn.channel()

        def listed() -> list[str]:
            return [bytes_to_str(v) for v in plain.lrange(key, 0, -1)]

        try:
            channel.push_many([("q", "a"), ("q", "b")])
            assert listed() == ["b", "a"]
            [push_conn] = channel._push_conns
            pool = channel.client.connection_pool
            assert push_conn not in pool._available_connections
            # The server drops the connection (a restart, an idle timeout):
            # the next push connects again first, as the pool does.
            push_conn.send_command("CLIENT", "ID")
            plain.client_kill_filter(_id=push_conn.read_response())
            channel.push_many([("q", "c")])
            assert listed() == ["c", "b", "a"]
            # A push the server cannot take fails, as the client's would,
            # and leaves the connection closed; the next one opens it.
            monkeypatch.setattr(push_conn, "read_response", _refused)
            with pytest.raises(redis.ConnectionError):
                channel.push_many([("q", "x")])
            monkeypatch.undo()
            assert push_conn._sock is None
            plain.lpop(key)  # the refused push's message, which did arrive
            monkeypatch.setattr("os.getpid", lambda: -1)  # as in a forked child
            channel.push_many([("q", "d")])
            assert channel._push_conns[0] is not push_conn
            assert listed() == ["d", "c", "b", "a"]
        finally:
            plain.delete(key)
            plain.close()
            channel.close()
        assert not channel.__dict__.get("_push_conns")


def _refused(*_: object, **__: object) -> None:
    import redis

    raise redis.ConnectionError("connection reset by peer")
