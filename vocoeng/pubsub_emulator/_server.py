"""gRPC surface of the Pub/Sub emulator: Publisher, Subscriber and the server."""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
from google.protobuf import empty_pb2
from google.pubsub_v1 import types as pubsub_types

from vocoeng.pubsub_emulator._state import (
    MAX_ACK_DEADLINE,
    MIN_ACK_DEADLINE,
    DeadLetter,
    EmulatorError,
    Store,
    StreamState,
    SubscriptionState,
    check_ack_deadline,
)

logger = logging.getLogger(__name__)

_pb = {
    name: getattr(pubsub_types, name).pb()
    for name in (
        "AcknowledgeRequest",
        "DeleteSubscriptionRequest",
        "DeleteTopicRequest",
        "GetSubscriptionRequest",
        "GetTopicRequest",
        "ListSubscriptionsRequest",
        "ListSubscriptionsResponse",
        "ListTopicSubscriptionsRequest",
        "ListTopicSubscriptionsResponse",
        "ListTopicsRequest",
        "ListTopicsResponse",
        "ModifyAckDeadlineRequest",
        "PublishRequest",
        "PublishResponse",
        "PullRequest",
        "PullResponse",
        "StreamingPullRequest",
        "StreamingPullResponse",
        "Subscription",
        "Topic",
    )
}
Empty = empty_pb2.Empty
StreamingPullResponse = _pb["StreamingPullResponse"]

# Longest a unary Pull without return_immediately waits for a first message.
_PULL_WAIT_SECONDS = 10.0
# Upper bound on any blocking wait, so a missed wake-up costs at most this.
_MAX_WAIT_SECONDS = 1.0
# How often idle subscriptions are scanned for expired leases.
_JANITOR_INTERVAL = 0.25
_NO_LIMIT = 1 << 62


def _rpc(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a unary handler so EmulatorError becomes a gRPC status."""

    @functools.wraps(fn)
    def handler(self: _Servicer, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return fn(self, request, context)
        except EmulatorError as exc:
            context.abort(exc.code, exc.message)

    return handler


class _Servicer:
    """Implement google.pubsub.v1.Publisher and Subscriber on a Store."""

    def __init__(self, store: Store, stopping: threading.Event) -> None:
        self.store = store
        self.stopping = stopping

    # -- Publisher --------------------------------------------------------

    @_rpc
    def create_topic(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self.store.create_topic(request)

    @_rpc
    def get_topic(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self.store.get_topic(request.topic).pb

    @_rpc
    def delete_topic(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.store.delete_topic(request.topic)
        return Empty()

    @_rpc
    def list_topics(self, request: Any, context: grpc.ServicerContext) -> Any:
        topics, token = self.store.list_topics(
            request.project, request.page_size, request.page_token
        )
        return _pb["ListTopicsResponse"](topics=topics, next_page_token=token)

    @_rpc
    def list_topic_subscriptions(
        self, request: Any, context: grpc.ServicerContext
    ) -> Any:
        names, token = self.store.list_topic_subscriptions(
            request.topic, request.page_size, request.page_token
        )
        return _pb["ListTopicSubscriptionsResponse"](
            subscriptions=names, next_page_token=token
        )

    @_rpc
    def publish(self, request: Any, context: grpc.ServicerContext) -> Any:
        ids = self.store.publish(request.topic, request.messages)
        return _pb["PublishResponse"](message_ids=ids)

    # -- Subscriber: administration ----------------------------------------

    @_rpc
    def create_subscription(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self.store.create_subscription(request)

    @_rpc
    def get_subscription(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self.store.get_subscription(request.subscription).pb

    @_rpc
    def delete_subscription(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.store.delete_subscription(request.subscription)
        return Empty()

    @_rpc
    def list_subscriptions(self, request: Any, context: grpc.ServicerContext) -> Any:
        subs, token = self.store.list_subscriptions(
            request.project, request.page_size, request.page_token
        )
        return _pb["ListSubscriptionsResponse"](
            subscriptions=subs, next_page_token=token
        )

    # -- Subscriber: delivery ----------------------------------------------

    @_rpc
    def acknowledge(self, request: Any, context: grpc.ServicerContext) -> Any:
        sub = self.store.get_subscription(request.subscription)
        if not request.ack_ids:
            raise EmulatorError(
                grpc.StatusCode.INVALID_ARGUMENT, "No ack ids were specified"
            )
        sub.ack(request.ack_ids)
        return Empty()

    @_rpc
    def modify_ack_deadline(self, request: Any, context: grpc.ServicerContext) -> Any:
        sub = self.store.get_subscription(request.subscription)
        check_ack_deadline(request.ack_deadline_seconds)
        if not request.ack_ids:
            raise EmulatorError(
                grpc.StatusCode.INVALID_ARGUMENT, "No ack ids were specified"
            )
        ack_ids = list(request.ack_ids)
        dead = sub.modify(ack_ids, [request.ack_deadline_seconds] * len(ack_ids))
        if dead:
            self.store.forward_dead_letters(dead)
        return Empty()

    @_rpc
    def pull(self, request: Any, context: grpc.ServicerContext) -> Any:
        sub = self.store.get_subscription(request.subscription)
        if request.max_messages <= 0:
            raise EmulatorError(
                grpc.StatusCode.INVALID_ARGUMENT, "max_messages must be positive"
            )
        wait = 0.0 if request.return_immediately else _PULL_WAIT_SECONDS
        remaining = context.time_remaining()
        if remaining is not None:
            # Answer (empty) before the client's own deadline fires.
            wait = max(0.0, min(wait, remaining - 0.5))
        give_up = time.monotonic() + wait
        dead: list[DeadLetter] = []
        context.add_callback(functools.partial(_notify, sub))
        with sub.cond:
            while True:
                if sub.deleted:
                    raise EmulatorError(
                        grpc.StatusCode.NOT_FOUND, "Subscription does not exist"
                    )
                sub.expire_locked(dead)
                batch = sub.take_locked(
                    request.max_messages, sub.pb.ack_deadline_seconds, None
                )
                now = time.monotonic()
                if (
                    batch
                    or now >= give_up
                    or self.stopping.is_set()
                    or not context.is_active()
                ):
                    break
                sub.cond.wait(_wait_time(sub, give_up - now))
        if dead:
            self.store.forward_dead_letters(dead)
        response = _pb["PullResponse"]()
        _fill(response.received_messages, batch, sub)
        return response

    def streaming_pull(
        self, request_iterator: Iterator[Any], context: grpc.ServicerContext
    ) -> Iterator[Any]:
        try:
            first = next(request_iterator)
            sub = self.store.get_subscription(first.subscription)
            deadline = first.stream_ack_deadline_seconds
            if not MIN_ACK_DEADLINE <= deadline <= MAX_ACK_DEADLINE:
                raise EmulatorError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"Invalid stream_ack_deadline_seconds {deadline}",
                )
            stream = StreamState(
                deadline, first.max_outstanding_messages, first.max_outstanding_bytes
            )
            self._apply_stream_request(sub, first, strict=True)
        except StopIteration:
            return
        except EmulatorError as exc:
            context.abort(exc.code, exc.message)
        if not context.add_callback(functools.partial(_close_stream, sub, stream)):
            return  # already cancelled: the callback would never fire
        threading.Thread(
            target=self._read_stream,
            args=(request_iterator, sub, stream),
            name=f"pubsub-emulator-reader-{first.client_id[:8]}",
            daemon=True,
        ).start()
        logger.debug("Opened stream on %s (client %s)", sub.name, first.client_id)
        properties = {
            "message_ordering_enabled": sub.pb.enable_message_ordering,
        }
        while True:
            dead: list[DeadLetter] = []
            with sub.cond:
                while True:
                    if stream.closed:
                        return
                    if self.stopping.is_set():
                        context.abort(
                            grpc.StatusCode.UNAVAILABLE, "The emulator is shutting down"
                        )
                    if sub.deleted:
                        context.abort(
                            grpc.StatusCode.NOT_FOUND, "Subscription does not exist"
                        )
                    sub.expire_locked(dead)
                    batch = sub.take_locked(_NO_LIMIT, stream.ack_deadline, stream)
                    if batch or dead:
                        break
                    sub.cond.wait(_wait_time(sub, _MAX_WAIT_SECONDS))
            if dead:
                self.store.forward_dead_letters(dead)
            if batch:
                response = StreamingPullResponse(subscription_properties=properties)
                _fill(response.received_messages, batch, sub)
                yield response

    def _read_stream(
        self, requests: Iterator[Any], sub: SubscriptionState, stream: StreamState
    ) -> None:
        """Apply acks, modacks and deadline changes sent on an open stream."""
        try:
            for request in requests:
                self._apply_stream_request(sub, request, strict=False)
                if request.stream_ack_deadline_seconds:
                    stream.ack_deadline = min(
                        max(request.stream_ack_deadline_seconds, MIN_ACK_DEADLINE),
                        MAX_ACK_DEADLINE,
                    )
        except grpc.RpcError:
            pass  # the client cancelled; the response side sees it too
        except Exception:
            logger.exception("StreamingPull reader on %s failed", sub.name)
        finally:
            # A half-closed request stream means the client is going away.
            _close_stream(sub, stream)

    def _apply_stream_request(
        self, sub: SubscriptionState, request: Any, *, strict: bool
    ) -> None:
        """Handle ack_ids / modify_deadline_* carried on a StreamingPullRequest."""
        if request.ack_ids:
            sub.ack(request.ack_ids)
        if not request.modify_deadline_ack_ids:
            return
        ack_ids = list(request.modify_deadline_ack_ids)
        seconds = list(request.modify_deadline_seconds)
        if len(ack_ids) != len(seconds) or not all(
            0 <= s <= MAX_ACK_DEADLINE for s in seconds
        ):
            if strict:
                raise EmulatorError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "modify_deadline_ack_ids and modify_deadline_seconds must "
                    "have equal length and deadlines within 0..600",
                )
            logger.warning("Ignoring malformed modack on stream for %s", sub.name)
            return
        dead = sub.modify(ack_ids, seconds)
        if dead:
            self.store.forward_dead_letters(dead)


def _wait_time(sub: SubscriptionState, cap: float) -> float:
    """Return how long to sleep: until the next lease expiry, at most *cap*."""
    next_deadline = sub.next_deadline_locked()
    if next_deadline is not None:
        cap = min(cap, next_deadline - time.monotonic())
    return max(cap, 0.001)


def _fill(received: Any, batch: list, sub: SubscriptionState) -> None:
    """Append one ReceivedMessage per leased delivery to *received*."""
    counted = bool(sub.pb.dead_letter_policy.dead_letter_topic)
    for ack_id, delivery in batch:
        item = received.add()
        item.ack_id = ack_id
        item.message.CopyFrom(delivery.message)
        if counted:
            # Only populated when a dead letter policy exists, as in the service.
            item.delivery_attempt = delivery.attempts


def _notify(sub: SubscriptionState) -> None:
    with sub.cond:
        sub.cond.notify_all()


def _close_stream(sub: SubscriptionState, stream: StreamState) -> None:
    stream.closed = True
    _notify(sub)


def _handlers(servicer: _Servicer) -> list[grpc.GenericRpcHandler]:
    """Build the generic handlers for both services."""

    def unary(fn: Callable[..., Any], request: str, response: Any) -> Any:
        return grpc.unary_unary_rpc_method_handler(
            fn,
            request_deserializer=_pb[request].FromString,
            response_serializer=response.SerializeToString,
        )

    s = servicer
    publisher = {
        "CreateTopic": unary(s.create_topic, "Topic", _pb["Topic"]),
        "GetTopic": unary(s.get_topic, "GetTopicRequest", _pb["Topic"]),
        "DeleteTopic": unary(s.delete_topic, "DeleteTopicRequest", Empty),
        "ListTopics": unary(
            s.list_topics, "ListTopicsRequest", _pb["ListTopicsResponse"]
        ),
        "ListTopicSubscriptions": unary(
            s.list_topic_subscriptions,
            "ListTopicSubscriptionsRequest",
            _pb["ListTopicSubscriptionsResponse"],
        ),
        "Publish": unary(s.publish, "PublishRequest", _pb["PublishResponse"]),
    }
    subscriber = {
        "CreateSubscription": unary(
            s.create_subscription, "Subscription", _pb["Subscription"]
        ),
        "GetSubscription": unary(
            s.get_subscription, "GetSubscriptionRequest", _pb["Subscription"]
        ),
        "DeleteSubscription": unary(
            s.delete_subscription, "DeleteSubscriptionRequest", Empty
        ),
        "ListSubscriptions": unary(
            s.list_subscriptions,
            "ListSubscriptionsRequest",
            _pb["ListSubscriptionsResponse"],
        ),
        "Acknowledge": unary(s.acknowledge, "AcknowledgeRequest", Empty),
        "ModifyAckDeadline": unary(
            s.modify_ack_deadline, "ModifyAckDeadlineRequest", Empty
        ),
        "Pull": unary(s.pull, "PullRequest", _pb["PullResponse"]),
        "StreamingPull": grpc.stream_stream_rpc_method_handler(
            s.streaming_pull,
            request_deserializer=_pb["StreamingPullRequest"].FromString,
            response_serializer=StreamingPullResponse.SerializeToString,
        ),
    }
    return [
        grpc.method_handlers_generic_handler("google.pubsub.v1.Publisher", publisher),
        grpc.method_handlers_generic_handler("google.pubsub.v1.Subscriber", subscriber),
    ]


class PubSubEmulator:
    """Run an in-memory Google Cloud Pub/Sub emulator on a local gRPC port.

    Point the real client at it with ``PUBSUB_EMULATOR_HOST=<address>``.
    """

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, *, max_workers: int = 128
    ) -> None:
        self.host = host
        self.port = port
        # Every open StreamingPull pins one worker thread for its lifetime.
        self.max_workers = max_workers
        self.store = Store()
        self._stopping = threading.Event()
        self._server: grpc.Server | None = None
        self._janitor: threading.Thread | None = None

    @property
    def address(self) -> str:
        """Return "host:port", suitable for PUBSUB_EMULATOR_HOST."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def start(self) -> int:
        """Bind, start serving and return the bound port."""
        if self._server is not None:
            raise RuntimeError("The emulator is already running")
        self._stopping.clear()
        server = grpc.server(
            futures.ThreadPoolExecutor(
                max_workers=self.max_workers, thread_name_prefix="pubsub-emulator"
            ),
            handlers=_handlers(_Servicer(self.store, self._stopping)),
            options=[
                # Real Pub/Sub accepts 10 MB publish requests.
                ("grpc.max_receive_message_length", 32 * 1024 * 1024),
                ("grpc.max_send_message_length", -1),
                # Without this a second emulator on a busy port "binds" too.
                ("grpc.so_reuseport", 0),
            ],
        )
        host = f"[{self.host}]" if ":" in self.host else self.host
        try:
            port = server.add_insecure_port(f"{host}:{self.port}")
        except RuntimeError as exc:
            raise OSError(f"Cannot bind {host}:{self.port}: {exc}") from exc
        if port == 0:
            raise OSError(f"Cannot bind {host}:{self.port}")
        self.port = port
        server.start()
        self._server = server
        self._janitor = threading.Thread(
            target=self._expire_idle, name="pubsub-emulator-janitor", daemon=True
        )
        self._janitor.start()
        logger.info("Pub/Sub emulator listening on %s", self.address)
        return port

    def stop(self, grace: float | None = 1.0) -> None:
        """Stop serving; open streams end with UNAVAILABLE straight away."""
        server = self._server
        if server is None:
            return
        self._stopping.set()
        for sub in self.store.all_subscriptions():
            _notify(sub)
        server.stop(grace).wait()
        if self._janitor is not None:
            self._janitor.join()
        self._server = None
        self._janitor = None
        logger.info("Pub/Sub emulator on %s stopped", self.address)

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        """Block until the server stops; return False on timeout."""
        if self._server is None:
            return True
        return self._server.wait_for_termination(timeout)

    def __enter__(self) -> PubSubEmulator:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _expire_idle(self) -> None:
        """Requeue expired leases on subscriptions that nobody is pulling.

        Pullers expire leases themselves; this only keeps dead-lettering and
        redelivery timely for subscriptions without an active puller.
        """
        while not self._stopping.wait(_JANITOR_INTERVAL):
            for sub in self.store.all_subscriptions():
                dead: list[DeadLetter] = []
                with sub.cond:
                    sub.expire_locked(dead)
                if dead:
                    self.store.forward_dead_letters(dead)
