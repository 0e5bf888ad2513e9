"""In-memory topics, subscriptions and leases behind the Pub/Sub emulator.

Nothing here knows about gRPC transport details; the servicers in ``_server``
translate :class:`EmulatorError` into gRPC status codes.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import re
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

import grpc
from google.pubsub_v1 import types as pubsub_types

logger = logging.getLogger(__name__)

# Raw protobuf classes: proto-plus wrappers are far too slow for the hot path.
PubsubMessage: Any = pubsub_types.PubsubMessage.pb()
Subscription: Any = pubsub_types.Subscription.pb()
Topic: Any = pubsub_types.Topic.pb()

DELETED_TOPIC = "_deleted-topic_"
DEFAULT_ACK_DEADLINE = 10
MIN_ACK_DEADLINE = 10
MAX_ACK_DEADLINE = 600
DEFAULT_MAX_DELIVERY_ATTEMPTS = 5
MIN_MAX_DELIVERY_ATTEMPTS = 5
MAX_MAX_DELIVERY_ATTEMPTS = 100
DEFAULT_RETENTION_SECONDS = 7 * 24 * 3600
# The client's emulator channel keeps gRPC's default 4 MiB receive limit and a
# larger response kills the stream silently, so leave room for framing.
MAX_RESPONSE_BYTES = 3 * 1024 * 1024
# Per-message framing inside a response: ack_id, delivery_attempt, tags.
_RECEIVED_OVERHEAD = 64

_RESOURCE_ID = r"[A-Za-z][A-Za-z0-9\-_.~+%]{2,254}"
_TOPIC_RE = re.compile(rf"projects/([^/]+)/topics/({_RESOURCE_ID})")
_SUBSCRIPTION_RE = re.compile(rf"projects/([^/]+)/subscriptions/({_RESOURCE_ID})")


class EmulatorError(Exception):
    """Carry a gRPC status code and message up to the servicer."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def check_topic_name(name: str) -> None:
    """Raise INVALID_ARGUMENT unless *name* is a well-formed topic path."""
    match = _TOPIC_RE.fullmatch(name)
    if match is None or match.group(2).startswith("goog"):
        raise EmulatorError(
            grpc.StatusCode.INVALID_ARGUMENT, f"Invalid [topics] name: ({name})"
        )


def check_subscription_name(name: str) -> None:
    """Raise INVALID_ARGUMENT unless *name* is a well-formed subscription path."""
    match = _SUBSCRIPTION_RE.fullmatch(name)
    if match is None or match.group(2).startswith("goog"):
        raise EmulatorError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"Invalid [subscriptions] name: ({name})",
        )


def check_ack_deadline(seconds: int) -> None:
    """Raise INVALID_ARGUMENT for a ModifyAckDeadline value outside 0..600."""
    if not 0 <= seconds <= MAX_ACK_DEADLINE:
        raise EmulatorError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"Invalid ack deadline {seconds}: must be between 0 and "
            f"{MAX_ACK_DEADLINE} seconds",
        )


class Delivery:
    """Track one published message queued on one subscription."""

    __slots__ = ("attempts", "message", "size")

    def __init__(self, message: Any, size: int) -> None:
        self.message = message
        self.size = size
        self.attempts = 0


class StreamState:
    """Hold the flow-control window and liveness of one StreamingPull call."""

    __slots__ = (
        "ack_deadline",
        "closed",
        "max_bytes",
        "max_messages",
        "out_bytes",
        "out_count",
    )

    def __init__(self, ack_deadline: int, max_messages: int, max_bytes: int) -> None:
        self.ack_deadline = ack_deadline
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.out_count = 0
        self.out_bytes = 0
        self.closed = False

    def has_room(self, size: int) -> bool:
        """Return whether one more message of *size* bytes fits the window."""
        if self.max_messages > 0 and self.out_count >= self.max_messages:
            return False
        # An empty window always admits one message, or a single message
        # larger than max_bytes would never be delivered.
        return not (
            self.max_bytes > 0
            and self.out_count > 0
            and self.out_bytes + size > self.max_bytes
        )


class Lease:
    """Record an outstanding (delivered, unacked) message and its deadline."""

    __slots__ = ("deadline", "delivery", "stream")

    def __init__(
        self, delivery: Delivery, deadline: float, stream: StreamState | None
    ) -> None:
        self.delivery = delivery
        self.deadline = deadline
        self.stream = stream


# A message that exhausted its delivery attempts: (dead letter topic, source
# subscription name, delivery).
DeadLetter = tuple[str, str, Delivery]


class SubscriptionState:
    """Queue, lease table and wake-up condition of one subscription.

    Every method ending in ``_locked`` must be called with ``cond`` held; the
    others take it themselves.
    """

    def __init__(self, pb: Any) -> None:
        self.pb = pb
        self.name: str = pb.name
        self.cond = threading.Condition(threading.Lock())
        self.ready: collections.deque[Delivery] = collections.deque()
        self.leases: dict[str, Lease] = {}
        # Min-heap of (deadline, ack_id). Extending a lease pushes a new entry
        # and leaves the old one stale; stale entries are skipped on pop and
        # purged by _compact_locked so the heap cannot grow without bound.
        self.deadlines: list[tuple[float, str]] = []
        self.deleted = False
        self._ack_ids = itertools.count(1)
        self._ack_prefix = f"{id(self):x}-"

    def enqueue(self, deliveries: Iterable[Delivery]) -> None:
        """Append freshly published messages and wake any waiting pullers."""
        with self.cond:
            self.ready.extend(deliveries)
            self.cond.notify_all()

    def take_locked(
        self, limit: int, ack_deadline: float, stream: StreamState | None
    ) -> list[tuple[str, Delivery]]:
        """Lease up to *limit* ready messages, within one response's byte budget."""
        batch: list[tuple[str, Delivery]] = []
        ready = self.ready
        if not ready:
            return batch
        budget = MAX_RESPONSE_BYTES
        deadline = time.monotonic() + ack_deadline
        prefix = self._ack_prefix
        ack_ids = self._ack_ids
        while ready and len(batch) < limit:
            delivery = ready[0]
            cost = delivery.size + _RECEIVED_OVERHEAD
            if batch and cost > budget:
                break
            if stream is not None:
                if not stream.has_room(delivery.size):
                    break
                stream.out_count += 1
                stream.out_bytes += delivery.size
            ready.popleft()
            budget -= cost
            delivery.attempts += 1
            ack_id = f"{prefix}{next(ack_ids)}"
            self.leases[ack_id] = Lease(delivery, deadline, stream)
            heapq.heappush(self.deadlines, (deadline, ack_id))
            batch.append((ack_id, delivery))
            if cost > MAX_RESPONSE_BYTES:
                logger.warning(
                    "Message of %s bytes on %s exceeds the client's 4 MiB "
                    "receive limit and will not reach it",
                    delivery.size,
                    self.name,
                )
        if batch:
            self._compact_locked()
        return batch

    def ack(self, ack_ids: Iterable[str]) -> None:
        """Drop the leases for *ack_ids*; unknown or expired ids are ignored."""
        with self.cond:
            leases = self.leases
            freed = False
            for ack_id in ack_ids:
                lease = leases.pop(ack_id, None)
                if lease is not None and lease.stream is not None:
                    self._release(lease)
                    freed = True
            if freed:
                # A stream blocked on its flow-control window may proceed.
                self.cond.notify_all()

    def modify(
        self, ack_ids: Sequence[str], seconds: Sequence[int]
    ) -> list[DeadLetter]:
        """Extend leases, or nack them (0 s) for immediate redelivery."""
        dead: list[DeadLetter] = []
        with self.cond:
            now = time.monotonic()
            leases = self.leases
            requeued = False
            for ack_id, secs in zip(ack_ids, seconds, strict=True):
                lease = leases.get(ack_id)
                if lease is None:
                    continue
                if secs > 0:
                    lease.deadline = now + secs
                    heapq.heappush(self.deadlines, (lease.deadline, ack_id))
                else:
                    del leases[ack_id]
                    self._release(lease)
                    requeued |= self._requeue_locked(lease.delivery, dead)
            if requeued or dead:
                self.cond.notify_all()
            self._compact_locked()
        return dead

    def expire_locked(self, dead: list[DeadLetter]) -> None:
        """Requeue (or dead-letter) every lease whose deadline has passed."""
        heap = self.deadlines
        if not heap:
            return
        now = time.monotonic()
        if heap[0][0] > now:
            return
        leases = self.leases
        requeued = False
        while heap and heap[0][0] <= now:
            deadline, ack_id = heapq.heappop(heap)
            lease = leases.get(ack_id)
            if lease is None or lease.deadline != deadline:
                continue  # acked, nacked or extended since this entry was pushed
            del leases[ack_id]
            self._release(lease)
            requeued |= self._requeue_locked(lease.delivery, dead)
        if requeued:
            self.cond.notify_all()

    def next_deadline_locked(self) -> float | None:
        """Return the earliest (possibly stale) lease deadline, if any."""
        return self.deadlines[0][0] if self.deadlines else None

    def _requeue_locked(self, delivery: Delivery, dead: list[DeadLetter]) -> bool:
        """Put a failed delivery back at the front, or hand it to the DLQ."""
        policy = self.pb.dead_letter_policy
        if policy.dead_letter_topic and delivery.attempts >= (
            policy.max_delivery_attempts or DEFAULT_MAX_DELIVERY_ATTEMPTS
        ):
            dead.append((policy.dead_letter_topic, self.name, delivery))
            return False
        self.ready.appendleft(delivery)
        return True

    @staticmethod
    def _release(lease: Lease) -> None:
        stream = lease.stream
        if stream is not None:
            stream.out_count -= 1
            stream.out_bytes -= lease.delivery.size

    def _compact_locked(self) -> None:
        heap = self.deadlines
        if len(heap) > 2 * len(self.leases) + 1024:
            self.deadlines = [(lease.deadline, a) for a, lease in self.leases.items()]
            heapq.heapify(self.deadlines)


class TopicState:
    """Hold a topic and the subscriptions currently attached to it."""

    def __init__(self, pb: Any) -> None:
        self.pb = pb
        self.subscriptions: dict[str, SubscriptionState] = {}


def _page(names: list[str], page_size: int, page_token: str) -> tuple[list[str], str]:
    """Slice sorted *names* after *page_token*; return the page and next token."""
    names.sort()
    if page_token:
        names = [n for n in names if n > page_token]
    size = page_size if page_size > 0 else 1000
    page = names[:size]
    return page, (page[-1] if len(names) > size else "")


class Store:
    """Own every topic and subscription of one emulator instance."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.topics: dict[str, TopicState] = {}
        self.subscriptions: dict[str, SubscriptionState] = {}
        # Message ids are unique across restarts, as Pub/Sub's are: numbers
        # from the start time in µs. Counted from 1, a restarted emulator gave
        # new messages the ids of old ones, which the bridge's durable dedup
        # claims (kept 8 days) then acked as duplicates, unhandled.
        self._message_ids = itertools.count(time.time_ns() // 1000)

    # -- topics -----------------------------------------------------------

    def create_topic(self, pb: Any) -> Any:
        """Store a new topic; ALREADY_EXISTS if the name is taken."""
        check_topic_name(pb.name)
        pb.state = Topic.State.ACTIVE
        with self._lock:
            if pb.name in self.topics:
                raise EmulatorError(
                    grpc.StatusCode.ALREADY_EXISTS, "Topic already exists"
                )
            self.topics[pb.name] = TopicState(pb)
        logger.info("Created topic %s", pb.name)
        return pb

    def get_topic(self, name: str) -> TopicState:
        """Return the topic called *name* or raise NOT_FOUND."""
        topic = self.topics.get(name)
        if topic is None:
            check_topic_name(name)
            raise EmulatorError(grpc.StatusCode.NOT_FOUND, "Topic not found")
        return topic

    def delete_topic(self, name: str) -> None:
        """Remove a topic; its subscriptions live on, detached."""
        with self._lock:
            topic = self.get_topic(name)
            del self.topics[name]
            for sub in topic.subscriptions.values():
                sub.pb.topic = DELETED_TOPIC
        logger.info("Deleted topic %s", name)

    def list_topics(self, project: str, page_size: int, token: str) -> tuple:
        """Return one page of topics in *project* and the next page token."""
        prefix = f"{project}/topics/"
        with self._lock:
            names = [n for n in self.topics if n.startswith(prefix)]
            page, next_token = _page(names, page_size, token)
            return [self.topics[n].pb for n in page], next_token

    def list_topic_subscriptions(
        self, name: str, page_size: int, token: str
    ) -> tuple[list[str], str]:
        """Return one page of subscription names attached to topic *name*."""
        with self._lock:
            names = list(self.get_topic(name).subscriptions)
        return _page(names, page_size, token)

    def publish(self, topic_name: str, messages: Sequence[Any]) -> list[str]:
        """Stamp *messages* and fan them out to every attached subscription."""
        with self._lock:
            subs = tuple(self.get_topic(topic_name).subscriptions.values())
        if not messages:
            raise EmulatorError(
                grpc.StatusCode.INVALID_ARGUMENT, "The request contains no messages"
            )
        for message in messages:
            if not message.data and not message.attributes:
                raise EmulatorError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "Some messages contain neither data nor attributes",
                )
        seconds, nanos = divmod(time.time_ns(), 1_000_000_000)
        ids = []
        sizes = []
        for message in messages:
            message_id = str(next(self._message_ids))
            message.message_id = message_id
            message.publish_time.seconds = seconds
            message.publish_time.nanos = nanos
            ids.append(message_id)
            sizes.append(message.ByteSize())
        for sub in subs:
            sub.enqueue(map(Delivery, messages, sizes))
        return ids

    # -- subscriptions ----------------------------------------------------

    def create_subscription(self, pb: Any) -> Any:
        """Validate, normalise and store a new subscription."""
        check_subscription_name(pb.name)
        check_topic_name(pb.topic)
        _reject_unsupported(pb)
        if pb.ack_deadline_seconds == 0:
            pb.ack_deadline_seconds = DEFAULT_ACK_DEADLINE
        elif not MIN_ACK_DEADLINE <= pb.ack_deadline_seconds <= MAX_ACK_DEADLINE:
            raise EmulatorError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Invalid ack_deadline_seconds {pb.ack_deadline_seconds}: must be "
                f"between {MIN_ACK_DEADLINE} and {MAX_ACK_DEADLINE}",
            )
        if pb.HasField("dead_letter_policy"):
            policy = pb.dead_letter_policy
            check_topic_name(policy.dead_letter_topic)
            if policy.max_delivery_attempts == 0:
                policy.max_delivery_attempts = DEFAULT_MAX_DELIVERY_ATTEMPTS
            elif not (
                MIN_MAX_DELIVERY_ATTEMPTS
                <= policy.max_delivery_attempts
                <= MAX_MAX_DELIVERY_ATTEMPTS
            ):
                raise EmulatorError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "max_delivery_attempts must be between "
                    f"{MIN_MAX_DELIVERY_ATTEMPTS} and {MAX_MAX_DELIVERY_ATTEMPTS}",
                )
        if not pb.HasField("message_retention_duration"):
            pb.message_retention_duration.seconds = DEFAULT_RETENTION_SECONDS
        pb.state = Subscription.State.ACTIVE
        with self._lock:
            if pb.name in self.subscriptions:
                raise EmulatorError(
                    grpc.StatusCode.ALREADY_EXISTS, "Subscription already exists"
                )
            topic = self.get_topic(pb.topic)
            sub = SubscriptionState(pb)
            self.subscriptions[pb.name] = sub
            topic.subscriptions[pb.name] = sub
        logger.info("Created subscription %s on %s", pb.name, pb.topic)
        return pb

    def get_subscription(self, name: str) -> SubscriptionState:
        """Return the subscription called *name* or raise NOT_FOUND."""
        sub = self.subscriptions.get(name)
        if sub is None:
            check_subscription_name(name)
            raise EmulatorError(
                grpc.StatusCode.NOT_FOUND, "Subscription does not exist"
            )
        return sub

    def delete_subscription(self, name: str) -> None:
        """Remove a subscription and end the streams pulling from it."""
        with self._lock:
            sub = self.get_subscription(name)
            del self.subscriptions[name]
            topic = self.topics.get(sub.pb.topic)
            if topic is not None:
                topic.subscriptions.pop(name, None)
        with sub.cond:
            sub.deleted = True
            sub.cond.notify_all()
        logger.info("Deleted subscription %s", name)

    def list_subscriptions(self, project: str, page_size: int, token: str) -> tuple:
        """Return one page of subscriptions in *project* and the next token."""
        prefix = f"{project}/subscriptions/"
        with self._lock:
            names = [n for n in self.subscriptions if n.startswith(prefix)]
            page, next_token = _page(names, page_size, token)
            return [self.subscriptions[n].pb for n in page], next_token

    def all_subscriptions(self) -> list[SubscriptionState]:
        """Return a snapshot of every live subscription."""
        with self._lock:
            return list(self.subscriptions.values())

    # -- dead letters -----------------------------------------------------

    def forward_dead_letters(self, dead: Iterable[DeadLetter]) -> None:
        """Publish exhausted messages to their dead letter topics.

        Call this without holding any subscription lock: publishing takes the
        locks of the dead letter topic's subscriptions.
        """
        by_topic: dict[str, list[Any]] = collections.defaultdict(list)
        for topic_name, sub_name, delivery in dead:
            original = delivery.message
            message = PubsubMessage(
                data=original.data,
                attributes=original.attributes,
                ordering_key=original.ordering_key,
            )
            # The real service annotates forwarded messages the same way.
            _, project, _, sub_id = sub_name.split("/")
            attrs = message.attributes
            attrs["CloudPubSubDeadLetterSourceDeliveryCount"] = str(delivery.attempts)
            attrs["CloudPubSubDeadLetterSourceSubscription"] = sub_id
            attrs["CloudPubSubDeadLetterSourceSubscriptionProject"] = project
            attrs["CloudPubSubDeadLetterSourceTopicPublishTime"] = (
                original.publish_time.ToJsonString()
            )
            by_topic[topic_name].append(message)
        for topic_name, messages in by_topic.items():
            try:
                self.publish(topic_name, messages)
            except EmulatorError as exc:
                logger.warning(
                    "Dropping %s dead-lettered message(s) for %s: %s",
                    len(messages),
                    topic_name,
                    exc.message,
                )


def _reject_unsupported(pb: Any) -> None:
    """Fail loudly on subscription features this emulator does not implement."""
    unsupported = []
    if pb.push_config.push_endpoint:
        unsupported.append("push_config")
    for field in ("bigquery_config", "cloud_storage_config", "bigtable_config"):
        if pb.HasField(field):
            unsupported.append(field)
    if pb.filter:
        unsupported.append("filter")
    if pb.enable_exactly_once_delivery:
        unsupported.append("enable_exactly_once_delivery")
    if pb.message_transforms:
        unsupported.append("message_transforms")
    if unsupported:
        raise EmulatorError(
            grpc.StatusCode.UNIMPLEMENTED,
            "The VocoEng Pub/Sub emulator does not support: " + ", ".join(unsupported),
        )
