"""Pull a subscription on the client's own gRPC channel, a response at a time.

The client library's high-level subscriber turns every received message into
a Message with its own lease bookkeeping, histogram sample, dispatcher queue
entry and callback call: measured at 36-80 µs of CPU a message here, more
than the bridge's own work. :class:`StreamingPull` opens the same
``google.pubsub.v1.Subscriber/StreamingPull`` call on the same channel
(credentials, emulator address and channel options are the client's), but
decodes with the raw protobuf classes and hands each response's messages over
as one list; acks and nacks go out as batched unary Acknowledge /
ModifyAckDeadline calls, as the library itself sends them. Measured: 15-22 µs
of CPU a message (``bench/bridge.py``, "(a') the bridge's stream").

What it keeps of the library's behaviour: flow control by the server
(``max_outstanding_messages`` on the stream), a heartbeat every 30 s, leases
extended while a message is held, the stream reopened on the errors the library
reopens on, and the ``x-goog-request-params`` routing header.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

logger = logging.getLogger("vocoeng.pubsub")

HEARTBEAT_SECONDS = 30.0
STREAM_ACK_DEADLINE_SECONDS = 60
ACK_IDS_PER_REQUEST = 1000  # as the library's dispatcher (512 KiB request cap)
# How long the sender lets settles gather into one request, as the library's
# dispatcher does (its _MAX_BATCH_LATENCY): one Acknowledge call costs about
# as much client CPU as 20 messages.
SETTLE_LINGER_SECONDS = 0.01
_RECONNECT_MAX_SECONDS = 10.0
# The codes on which the library reopens a stream (streaming_pull_manager's
# _RETRYABLE_STREAM_ERRORS); any other code ends it.
_RETRYABLE = frozenset(
    {
        "ABORTED",
        "DEADLINE_EXCEEDED",
        "INTERNAL",
        "RESOURCE_EXHAUSTED",
        "UNAVAILABLE",
        "UNKNOWN",
    }
)


def retryable(exc: BaseException) -> bool:
    """Say whether a Google API error carries one of the _RETRYABLE codes."""
    code = getattr(exc, "grpc_status_code", None)
    return code is not None and code.name in _RETRYABLE


class Received:
    """Hold one delivered message; ``ack()`` / ``nack()`` settle it (batched)."""

    __slots__ = (
        "_stream",
        "ack_id",
        "attributes",
        "data",
        "delivery_attempt",
        "message_id",
    )

    def __init__(self, stream: StreamingPull, received: Any) -> None:
        message = received.message
        self._stream = stream
        self.ack_id: str = received.ack_id
        self.message_id: str = message.message_id
        self.data: bytes = message.data
        self.attributes: dict[str, str] = dict(message.attributes)
        # 0 when the subscription has no dead-letter policy: None, as the
        # library's Message says it.
        self.delivery_attempt: int | None = received.delivery_attempt or None

    def ack(self) -> None:
        """Acknowledge the message (sent with others within milliseconds)."""
        self._stream.settle(self.ack_id, ack=True)

    def nack(self) -> None:
        """Hand the message back for redelivery (its deadline set to 0)."""
        self._stream.settle(self.ack_id, ack=False)


class StreamingPull:
    """Pull one subscription; ``on_messages(list[Received])`` gets each response.

    ``on_messages`` runs on the stream's own thread and must only hand the
    messages over. At most ``max_messages`` are outstanding (delivered, not yet
    acked or nacked), and at most ``max_bytes`` of them when set: the server
    holds back the rest. ``stop()`` ends the
    stream, nacks what is still outstanding and sends every ack and nack
    before it returns; ``done()`` / ``error()`` report a stream that ended on
    its own (an error the library would not reopen on).
    """

    def __init__(
        self,
        *,
        client: Any,
        path: str,
        on_messages: Callable[[list[Received]], None],
        max_messages: int,
        translate: Callable[[Exception], Exception],
        ack_deadline: int = STREAM_ACK_DEADLINE_SECONDS,
        max_bytes: int = 0,
    ) -> None:
        from google.api_core import retry
        from google.pubsub_v1 import types

        self._client = client
        self.path = path
        self._on_messages = on_messages
        self._max_messages = max_messages
        self._max_bytes = max_bytes  # 0: no byte limit
        self._translate = translate
        self._ack_deadline = ack_deadline
        self._request = types.StreamingPullRequest.pb()
        response = types.StreamingPullResponse.pb()
        self._call = client.api.transport.grpc_channel.stream_stream(
            "/google.pubsub.v1.Subscriber/StreamingPull",
            request_serializer=self._request.SerializeToString,
            response_deserializer=response.FromString,
        )
        self._client_id = uuid.uuid4().hex
        self._lock = threading.Lock()
        self._outstanding: dict[str, float] = {}  # ack id -> when received
        self._acks: list[str] = []
        self._nacks: list[str] = []
        self._wake = threading.Event()  # settles queued, or stopping
        self._stopping = threading.Event()
        self._closed = False  # stop() has queued its nacks: the sender may end
        self._rpc: Any = None
        self._error: Exception | None = None
        self._done = threading.Event()
        self._threads: list[threading.Thread] = []
        # An ack or modack call is tried again on the codes a stream reopens on.
        self._retry = retry.Retry(
            predicate=retryable, initial=0.1, maximum=5, timeout=60
        )

    # --- lifecycle -----------------------------------------------------------

    def start(self) -> StreamingPull:
        """Open the stream and start its sender and lease threads."""
        for target, name in (
            (self._pull_loop, "pull"),
            (self._send_loop, "settle"),
            (self._lease_loop, "lease"),
        ):
            thread = threading.Thread(
                target=target,
                name=f"pubsub-{name}-{self.path.rsplit('/', 1)[-1]}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)
        return self

    def done(self) -> bool:
        """Return True once the stream has ended (stopped or failed)."""
        return self._done.is_set()

    def error(self) -> Exception | None:
        """Return why the stream ended on its own, None if it runs or was stopped."""
        return self._error

    def stop(self, timeout: float = 60.0) -> None:
        """Stop pulling, nack what is outstanding, send every settle, then return."""
        self._stopping.set()
        rpc = self._rpc
        if rpc is not None:
            rpc.cancel()
        if not self._threads:
            return  # never started
        self._threads[0].join(timeout)  # the pull loop: nothing more arrives
        with self._lock:
            self._nacks.extend(self._outstanding)
            self._outstanding.clear()
            self._closed = True
        self._wake.set()
        for thread in self._threads[1:]:
            thread.join(timeout)

    # --- settling ------------------------------------------------------------

    def settle(self, ack_id: str, *, ack: bool) -> None:
        """Queue an ack or a nack of ``ack_id`` for the sender thread."""
        with self._lock:
            if self._outstanding.pop(ack_id, None) is None:
                return  # settled already (or nacked by stop())
            (self._acks if ack else self._nacks).append(ack_id)
        self._wake.set()

    def outstanding(self) -> int:
        """Return how many delivered messages are not yet acked or nacked."""
        with self._lock:
            return len(self._outstanding)

    def _send_loop(self) -> None:
        while True:
            self._wake.wait()
            if not self._stopping.is_set():
                time.sleep(SETTLE_LINGER_SECONDS)
            with self._lock:
                self._wake.clear()
                acks, self._acks = self._acks, []
                nacks, self._nacks = self._nacks, []
                finished = self._closed
            self._unary("acknowledge", acks)
            self._unary("modify_ack_deadline", nacks, 0)
            if finished:
                return

    def _unary(self, method: str, ack_ids: list[str], seconds: int = -1) -> None:
        """Send Acknowledge or ModifyAckDeadline calls for ``ack_ids``.

        At most ACK_IDS_PER_REQUEST ids a call, each retried while the error
        is transient. A settle that never arrives is not a loss: the message
        comes again when its lease runs out, and the bridge's dedup claim
        catches it.
        """
        from google.api_core import exceptions as gexc

        send = getattr(self._client, method)
        for i in range(0, len(ack_ids), ACK_IDS_PER_REQUEST):
            chunk = ack_ids[i : i + ACK_IDS_PER_REQUEST]
            request: dict[str, Any] = {"subscription": self.path, "ack_ids": chunk}
            if seconds >= 0:
                request["ack_deadline_seconds"] = seconds
            try:
                send(request=request, timeout=30, retry=self._retry)
            except gexc.GoogleAPICallError as exc:
                logger.warning(
                    "pubsub_settle_failed method=%s subscription=%s count=%s: %s "
                    "(the messages come again when their leases run out)",
                    method,
                    self.path,
                    len(chunk),
                    exc,
                )

    # --- leases --------------------------------------------------------------

    def _lease_loop(self) -> None:
        """Extend the lease of every message held for a third of its deadline."""
        period = max(self._ack_deadline / 3, 1.0)
        while not self._stopping.wait(period / 2):
            cutoff = time.monotonic() - period
            with self._lock:
                held = [a for a, t in self._outstanding.items() if t <= cutoff]
                now = time.monotonic()
                for ack_id in held:
                    self._outstanding[ack_id] = now
            self._unary("modify_ack_deadline", held, self._ack_deadline)

    # --- the stream ----------------------------------------------------------

    def _requests(self, ended: threading.Event) -> Iterator[Any]:
        """Yield the opening request, then a heartbeat every 30 s until ``ended``.

        gRPC reads this on a thread of its own; ``ended`` lets that thread go
        as soon as the call is over, not at the next heartbeat.
        """
        yield self._request(
            subscription=self.path,
            stream_ack_deadline_seconds=self._ack_deadline,
            max_outstanding_messages=self._max_messages,
            max_outstanding_bytes=self._max_bytes,
            client_id=self._client_id,
        )
        while not ended.wait(HEARTBEAT_SECONDS):
            yield self._request()  # a heartbeat keeps an idle stream open

    def _pull_loop(self) -> None:
        import grpc

        backoff = 0.1
        try:
            while not self._stopping.is_set():
                ended = threading.Event()
                rpc = self._call(
                    self._requests(ended),
                    metadata=[("x-goog-request-params", f"subscription={self.path}")],
                )
                self._rpc = rpc
                if self._stopping.is_set():
                    rpc.cancel()  # stop() ran before the call existed
                code = "OK"
                try:
                    for response in rpc:
                        backoff = 0.1
                        self._deliver(response.received_messages)
                except grpc.RpcError as exc:
                    if self._stopping.is_set():
                        break
                    status = exc.code()
                    if status is None or status.name not in _RETRYABLE:
                        self._error = self._translate(_api_error(exc))
                        break
                    code = status.name
                finally:
                    ended.set()
                if self._stopping.is_set():
                    break
                # The server ended the stream (it does every so often) or a
                # transient error did: open another, backing off.
                logger.info(
                    "pubsub_stream_reopen subscription=%s code=%s", self.path, code
                )
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, _RECONNECT_MAX_SECONDS)
        except Exception as exc:  # the callback failed: end, reported
            logger.exception("pubsub_stream_failed subscription=%s", self.path)
            self._error = self._translate(exc)
        finally:
            self._done.set()

    def _deliver(self, received: Any) -> None:
        messages = [Received(self, r) for r in received]
        now = time.monotonic()
        with self._lock:
            for message in messages:
                self._outstanding[message.ack_id] = now
        self._on_messages(messages)


def _api_error(exc: Any) -> Exception:
    """Return the google.api_core exception the library would raise for ``exc``."""
    from google.api_core import exceptions as gexc

    return gexc.from_grpc_error(exc)
