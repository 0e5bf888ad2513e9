"""Redis transport for Celery: kombu's, with less work per message.

Measured on the ``ai`` worker (``bench/ai_fanout.py``: 100 threads, 1 s model
calls), where one consumer thread feeds every message to the pool and competes
for the GIL with the task threads. kombu's Redis channel pays, per message, a
BRPOP round trip, a MULTI/EXEC pipeline to record the message as unacked, and
a new ``redis.Redis`` object for each of them; after every round trip the
consumer thread waits for the GIL again. Timing the claims of 500 tasks showed
the pool starved: on average 50-80 of the 100 threads busy, while messages
waited in Redis. Four changes:

- Batched receive. On Redis >= 7, one ``BLMPOP … RIGHT COUNT n`` takes up to
  ``n`` messages (the prefetch credit left, at most ``receive_batch``) where
  BRPOP took one, in the same order (kombu publishes with LPUSH, BRPOP pops
  from the right), from the same keys (every queue and priority, in kombu's
  fair cycle). The whole batch is recorded as unacked (ZADD + HSET, exactly
  the entries kombu's ``QoS.append`` writes) in one pipeline *before* any of
  its messages reaches a consumer, so an ack can never overtake its unacked
  entry. A crash between the pop and that pipeline loses the popped messages,
  as kombu's own BRPOP + append does for one. Older servers keep BRPOP.
- Batched ack removal. An ack made on the worker's event loop frees its
  prefetch slot at once; the ZREM + HDEL of every ack of one loop turn go out
  in one pipeline before the loop polls again (and when the hub closes). A crash in
  between leaves those entries, and the restore sweep hands the tasks out again
  after the visibility timeout: at least once, as for a crash just before an
  ack, and the claims make the rerun a no-op. Acks off the loop go at once.
- The unacked bookkeeping of single messages and of acks (ZREM + HDEL) in plain
  pipelines instead of MULTI/EXEC: the two commands already travel in one
  write, and the restore sweep (the only other reader) takes its own lock and
  WATCHes the hash before it moves a message back. ``restore_by_tag`` keeps
  its WATCH/MULTI transaction (it passes its own pipeline).
- One synchronous ``redis.Redis`` per channel instead of one per operation
  (redis-py 8 builds one slower than the command it sends; ~10% of the
  worker's GIL time). A client is thread-safe: every command takes a
  connection from the channel's pool.

Selected by ``vocoeng.settings`` for ``redis://`` and ``rediss://`` broker URLs.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis
from kombu.asynchronous import get_event_loop
from kombu.transport import redis as kombu_redis
from kombu.transport.virtual import base as virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads
from kombu.utils.objects import cached_property

logger = logging.getLogger(__name__)

# Messages taken by one BLMPOP at most (the prefetch credit also bounds it).
RECEIVE_BATCH = 64


class QoS(kombu_redis.QoS):
    """Plain pipelines; batched unacked entries; acks removed per loop turn."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._stored: set[Any] = set()  # tags whose unacked entries exist
        self._acked: list[Any] = []  # acked tags whose entries are still there

    def ack(self, delivery_tag: Any) -> None:
        hub = get_event_loop()
        if hub is None or hub._loop_thread != threading.get_ident():
            super().ack(delivery_tag)
            return
        # On the worker's event loop: the prefetch slot is free at once; the
        # Redis entries of every ack of this loop turn go in one pipeline, run
        # by the loop before it polls again (on_tick) and by the hub when it
        # closes (call_soon). Not call_soon alone: what the loop thread adds
        # there waits for the next poll to return, up to a second when the
        # worker is idle, and a worker killed in that second had its finished
        # task delivered again (seen as a pipeline chord counting a review
        # twice: pipeline/tests/test_failures.py, about one run in four).
        virtual.QoS.ack(self, delivery_tag)
        self._acked.append(delivery_tag)
        if len(self._acked) == 1:
            hub.on_tick.add(self.acks_flush)
            hub.call_soon(self.acks_flush)

    def acks_flush(self) -> None:
        """Remove the unacked entries of the acks made since the last flush."""
        if not self._acked:  # the loop calls this every turn (on_tick)
            return
        tags, self._acked = self._acked, []
        try:
            with self.pipe_or_acquire() as pipe:
                pipe.zrem(self.unacked_index_key, *tags)
                pipe.hdel(self.unacked_key, *tags)
                pipe.execute()
        except self.channel.connection_errors as exc:
            # The entries stay: after the visibility timeout the restore sweep
            # hands those tasks out again, and their claims make that a no-op.
            logger.warning("redis_acks_not_removed count=%s error=%s", len(tags), exc)

    def restore_unacked(self, client: Any = None) -> Any:
        self.acks_flush()
        return super().restore_unacked(client)

    def append(self, message: Any, delivery_tag: Any) -> None:
        if delivery_tag in self._stored:
            self._stored.discard(delivery_tag)
            virtual.QoS.append(self, message, delivery_tag)
            return
        super().append(message, delivery_tag)

    def append_many(self, entries: list[tuple[Any, dict, str, str]]) -> None:
        """Write the unacked entries of ``(tag, payload, exchange, key)``."""
        now = time.time()
        with self.pipe_or_acquire() as pipe:
            pipe.zadd(self.unacked_index_key, {tag: now for tag, *_ in entries})
            pipe.hset(
                self.unacked_key,
                mapping={tag: dumps([raw, ex, rk]) for tag, raw, ex, rk in entries},
            )
            pipe.execute()
        self._stored.update(tag for tag, *_ in entries)

    def credit(self) -> int:
        """Return how many more messages the prefetch limit admits."""
        if not self.prefetch_count:
            return RECEIVE_BATCH
        return self.can_consume_max_estimate() or 0

    @contextmanager
    def pipe_or_acquire(self, pipe: Any = None, client: Any = None) -> Iterator[Any]:
        if pipe:
            yield pipe
        else:
            with self.channel.conn_or_acquire(client) as client:
                yield client.pipeline(transaction=False)


class Channel(kombu_redis.Channel):
    """Batched receive (Redis >= 7), plain pipelines, one sync client."""

    QoS = QoS
    _sync_client: Any = None
    _blmpop_count = 0  # the COUNT of the BLMPOP in flight (0: a BRPOP is)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._no_ack_queues: set[str] = set()

    _tag_pid = 0

    def _next_delivery_tag(self) -> str:
        """A unique tag without a uuid4 per message (an os.urandom call, and
        a GIL hand-over, per publish): 80 random bits per channel and process,
        then a counter, in the UUID's shape kombu's tags have. Tags key the
        shared unacked hash, so they must be unique across every publisher;
        the pid check covers a channel copied into a forked child."""
        pid = os.getpid()
        if pid != self._tag_pid:
            self._tag_pid = pid
            p = uuid.uuid4().hex
            self._tag_prefix = f"{p[:8]}-{p[8:12]}-{p[12:16]}-{p[16:20]}-"
            self._tag_counter = itertools.count(1)
        return f"{self._tag_prefix}{next(self._tag_counter):012x}"

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)
        client = self._sync_client
        if client is None or client.connection_pool is not self.pool:
            client = self._sync_client = super()._create_client()
        return client

    _capture: list[tuple[str, dict]] | None = None

    def _put(self, queue: str, message: dict, **kwargs: Any) -> Any:
        if self._capture is not None:
            self._capture.append((queue, message))
            return None
        return super()._put(queue, message, **kwargs)

    @contextmanager
    def capturing(self) -> Iterator[list[tuple[str, dict]]]:
        """Collect ``(queue, message)`` of what is published, instead of sending it.

        For building a message template (vocoeng.celery_batch): the message is
        routed, declared and encoded as usual, and stops at the final LPUSH.
        """
        self._capture = captured = []
        try:
            yield captured
        finally:
            self._capture = None

    def queue_key(self, queue: str, message: dict) -> str | None:
        """Return the list ``_put`` pushes ``message`` on; None: not a plain push."""
        if self._expires and queue in self._expires:
            return None  # _put also sets the list's expiry
        return self._q_for_pri(
            queue, self._get_message_priority(message, reverse=False)
        )

    def push_many(self, entries: list[tuple[str, str]]) -> None:
        """LPUSH encoded messages, in order, one command per list key, together.

        The same commands as ``_put`` for each message, under the channel's
        key prefix: all of them are queued or none. One key (the usual batch:
        one queue) is one LPUSH, atomic by itself; several are one MULTI/EXEC.
        A transaction for one command cost a third of the push's CPU (two more
        replies to parse), measured on the webhook hand-off's batches.
        """
        by_key: dict[str, list[str]] = {}
        for key, payload in entries:
            by_key.setdefault(key, []).append(payload)
        if len(by_key) == 1:
            [(key, payloads)] = by_key.items()
            self._lpush(key, payloads)
            return
        with self.conn_or_acquire() as client:
            with client.pipeline(transaction=True) as pipe:
                for key, payloads in by_key.items():
                    pipe.lpush(key, *payloads)
                pipe.execute()

    _push_pid = 0
    _push_conns: list[Any]

    def _lpush(self, key: str, payloads: list[str]) -> None:
        """LPUSH ``payloads`` on ``key`` (under the channel's key prefix) on a
        connection of the channel's own, not through the client.

        A command through ``redis.Redis`` takes a connection from the pool and
        gives it back, each with redis-py 8's event dispatch and connection
        metrics, inside its retry wrapper: ~170 Python calls for one LPUSH,
        and ~50 us of the webhook hand-off's CPU per batch (measured: 81 us
        against 32 for the same LPUSH sent on a connection). The connections
        are the pool's kind, with its settings (timeouts, TLS, health checks),
        and checked as the pool checks one it lends: a connection the server
        closed meanwhile (a restart, an idle timeout) is opened again before
        the command is sent. A command that fails leaves it disconnected (the
        next one connects again), and the error goes up as the client's would.
        """
        pid = os.getpid()
        if pid != self._push_pid:  # a forked child: never the parent's socket
            self._push_pid, self._push_conns = pid, []
        try:
            conn = self._push_conns.pop()
        except IndexError:  # none free (another thread's): one more
            pool = self.client.connection_pool
            conn = pool.connection_class(**pool.connection_kwargs)
        try:
            conn.connect()
            try:
                if conn.can_read():  # closed by the server, or a stray reply
                    raise redis.ConnectionError("connection has data")
            except (redis.ConnectionError, TimeoutError, OSError):
                conn.disconnect()
                conn.connect()
            conn.send_command("LPUSH", self.global_keyprefix + key, *payloads)
            conn.read_response()
        except BaseException:
            conn.disconnect()
            raise
        finally:
            self._push_conns.append(conn)

    def close(self) -> None:
        for conn in self.__dict__.pop("_push_conns", []):
            conn.disconnect()
        super().close()

    def basic_consume(self, queue: str, no_ack: bool, *args: Any, **kwargs: Any):
        # A no_ack consumer never calls QoS.append: its messages must not be
        # stored as unacked ahead of delivery (they would come back later).
        if no_ack:
            self._no_ack_queues.add(queue)
        else:
            self._no_ack_queues.discard(queue)
        return super().basic_consume(queue, no_ack, *args, **kwargs)

    @cached_property
    def _blmpop_supported(self) -> bool:
        try:
            with self.conn_or_acquire() as client:
                version = client.info("server").get("redis_version", "0")
            return tuple(int(p) for p in str(version).split(".")[:2]) >= (7, 0)
        except Exception:  # a server that will not say: BRPOP
            return False

    def _brpop_start(self, timeout: float | None = None) -> None:
        count = min(RECEIVE_BATCH, self.qos.credit())
        if count <= 1 or not self._blmpop_supported:
            self._blmpop_count = 0
            return super()._brpop_start(timeout)
        if timeout is None:
            timeout = self.brpop_timeout
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return
        keys = [
            self.global_keyprefix + self._q_for_pri(queue, pri)
            for pri in self.priority_steps
            for queue in queues
        ]
        self._in_poll = self.client.connection
        self._brpop_sent_at = time.monotonic()
        self._blmpop_count = count
        self.client.connection.send_command(
            "BLMPOP", timeout or 0, len(keys), *keys, "RIGHT", "COUNT", count
        )

    def _brpop_read(self, **options: Any) -> bool:
        if not self._blmpop_count:
            return super()._brpop_read(**options)
        self._blmpop_count = 0
        try:
            try:
                # Not client.parse_response: the prefixing client only knows
                # how to strip the prefix from a BRPOP reply.
                reply = kombu_redis.redis.Redis.parse_response(
                    self.client, self.client.connection, "BLMPOP", **options
                )
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            if not reply:
                raise kombu_redis.Empty()
            key, items = reply
            key = bytes_to_str(key)[len(self.global_keyprefix) :]
            queue = key.rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(queue)
            payloads = [loads(bytes_to_str(item)) for item in items]
            if queue not in self._no_ack_queues:
                self.qos.append_many(
                    [
                        (
                            p["properties"]["delivery_tag"],
                            p,
                            p["properties"]["delivery_info"]["exchange"],
                            p["properties"]["delivery_info"]["routing_key"],
                        )
                        for p in payloads
                    ]
                )
            try:
                for payload in payloads:
                    self.connection._deliver(payload, queue)
            finally:
                self.qos._stored.clear()
            return True
        finally:
            self._in_poll = None
            self._flush_brpop_reauth()

    def _poll_error(self, type: str, **options: Any) -> None:
        if type == "BRPOP" and self._blmpop_count:
            self._blmpop_count = 0
            kombu_redis.redis.Redis.parse_response(
                self.client, self.client.connection, "BLMPOP"
            )
            return
        super()._poll_error(type, **options)


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with :class:`Channel`."""

    Channel = Channel
