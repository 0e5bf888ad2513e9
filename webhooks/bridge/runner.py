"""Run streaming pulls on the bridge's subscriptions and ack after enqueue."""

from __future__ import annotations

import logging
import queue
import signal
import threading
import time
from collections.abc import Iterable
from typing import Any

from django.conf import settings

from vocoeng import pubsub

from . import defaults, metrics
from .batching import Result, batch_handle
from .handling import Delivery, Outcome

logger = logging.getLogger("webhooks.bridge")


def subscription_kinds() -> dict[str, str]:
    """Return the kind of the messages on each bridge subscription."""
    return {
        settings.PUBSUB_SUBSCRIPTION_MESSAGES: "chat_message",
        settings.PUBSUB_SUBSCRIPTION_JOBS: "pipeline_job",
        settings.PUBSUB_SUBSCRIPTION_VOC: "voc_event",
    }


class _Item:
    """Hold one delivered message until its batch is handled."""

    __slots__ = ("delivery", "message")

    def __init__(self, delivery: Delivery, message: Any) -> None:
        self.delivery = delivery
        self.message = message


class Bridge:
    """Pull ``subscriptions`` at once; each message is acked only once handled.

    Each stream's callback only hands its messages to a queue; ``batch_workers``
    threads take up to ``batch_size`` messages at a time (waiting at most
    ``linger_seconds`` for a batch to fill), handle them together (see
    :mod:`batching`) and ack or nack each. A stop first nacks what arrives
    from then on, waits until every message taken is acked or nacked, and
    only then stops the streams, which send every ack and nack queued (those
    of the enqueues in flight too) before they return.
    """

    def __init__(
        self,
        *,
        subscriptions: Iterable[str],
        max_in_flight: int,
        retry_seconds: float | None = None,
        batch_size: int = defaults.BATCH_SIZE,
        batch_workers: int = defaults.BATCH_WORKERS,
        linger_seconds: float = 0.005,
    ) -> None:
        self.subscriptions = list(subscriptions)
        self.max_in_flight = max_in_flight
        self.batch_size = max(batch_size, 1)
        self.batch_workers = max(batch_workers, 1)
        self.linger_seconds = linger_seconds
        self._queue: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._workers: list[threading.Thread] = []
        self._closed = threading.Event()
        # messages taken and not yet acked or nacked, guarded by _lock
        self._lock = threading.Condition()
        self._taken = 0
        self._delayed: queue.SimpleQueue[tuple[float, _Item] | None] = (
            queue.SimpleQueue()
        )
        self.retry_seconds = (
            settings.PUBSUB_BRIDGE_BROKER_RETRY_SECONDS
            if retry_seconds is None
            else retry_seconds
        )
        self.stopping = threading.Event()
        self._streams: list[pubsub.StreamingPull] = []
        kinds = subscription_kinds()
        self._kinds = {name: kinds.get(name, "") for name in self.subscriptions}
        self._counters: dict[tuple[str, str], Any] = {}

    def check(self) -> None:
        """Raise PubSubError unless every subscription exists and is reachable."""
        for name in self.subscriptions:
            pubsub.subscription_describe(name)

    def _callback(self, subscription: str) -> Any:
        default_kind = self._kinds[subscription]
        received = metrics.MESSAGES.labels(subscription, "received")
        nacked = metrics.MESSAGES.labels(subscription, "nacked")
        put = self._queue.put

        def on_messages(messages: list[pubsub.Received]) -> None:
            received.inc(len(messages))
            with self._lock:
                if self.stopping.is_set():
                    for message in messages:
                        message.nack()  # for the next bridge
                    nacked.inc(len(messages))
                    return
                self._taken += len(messages)
            for message in messages:
                delivery = Delivery(
                    subscription=subscription,
                    message_id=message.message_id,
                    data=message.data,
                    attributes=message.attributes,
                    delivery_attempt=message.delivery_attempt,
                    default_kind=default_kind,
                )
                put(_Item(delivery, message))

        return on_messages

    def _take_batch(self) -> list[_Item] | None:
        """Return the next batch, or None once closed and drained."""
        while True:
            try:
                first = self._queue.get(timeout=0.2)
                break
            except queue.Empty:
                if self._closed.is_set():
                    return None
        batch = [first]
        deadline = time.monotonic() + self.linger_seconds
        while len(batch) < self.batch_size:
            try:
                batch.append(self._queue.get_nowait())
                continue
            except queue.Empty:
                pass
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                batch.append(self._queue.get(timeout=left))
            except queue.Empty:
                break
        return batch

    def _settle(self, item: _Item, result: Result) -> bool:
        """Ack or nack ``item``; nacks after a pause go to the delayed queue.

        Returns whether ``item`` is settled now (the caller then releases it).
        """
        outcome, pause = result
        subscription = item.delivery.subscription
        if outcome is Outcome.RETRY:
            if pause and not self.stopping.is_set():
                # Each nack is a delivery attempt (5 before Pub/Sub
                # dead-letters it): pace them while the cause lasts.
                self._delayed.put((time.monotonic() + pause, item))
                return False
            item.message.nack()
            self._counter(subscription, "nacked").inc()
        else:
            item.message.ack()
            self._counter(subscription, outcome.value).inc()
        return True

    def _counter(self, subscription: str, event: str) -> Any:
        """Return the counter child of ``(subscription, event)``, looked up once."""
        key = (subscription, event)
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = metrics.MESSAGES.labels(*key)
        return counter

    def _release(self, n: int) -> None:
        with self._lock:
            self._taken -= n
            if self._taken == 0:
                self._lock.notify_all()

    def _nack_later(self) -> None:
        while (entry := self._delayed.get()) is not None:
            due, item = entry
            self.stopping.wait(max(due - time.monotonic(), 0))
            item.message.nack()
            metrics.MESSAGES.labels(item.delivery.subscription, "nacked").inc()
            self._release(1)

    def _work(self) -> None:
        from django.db import connection

        while (batch := self._take_batch()) is not None:
            started = time.monotonic()
            try:
                results = batch_handle(
                    [item.delivery for item in batch],
                    retry_seconds=self.retry_seconds,
                    stop=self.stopping,
                )
            except Exception:
                logger.exception("bridge_batch_failed size=%s: all nacked", len(batch))
                results = [(Outcome.RETRY, 0.0)] * len(batch)
            settled = sum(
                self._settle(item, result)
                for item, result in zip(batch, results, strict=True)
            )
            self._release(settled)  # once a batch, not once a message
            logger.debug(
                "bridge_batch size=%s seconds=%.4f queued=%s",
                len(batch),
                time.monotonic() - started,
                self._queue.qsize(),
            )
        connection.close()

    def start(self) -> None:
        """Start the batch workers, then open one streaming pull per subscription."""
        for n in range(self.batch_workers):
            worker = threading.Thread(
                target=self._work, name=f"bridge-batch-{n}", daemon=True
            )
            worker.start()
            self._workers.append(worker)
        nacker = threading.Thread(
            target=self._nack_later, name="bridge-nack-later", daemon=True
        )
        nacker.start()
        self._workers.append(nacker)
        for name in self.subscriptions:
            self._streams.append(
                pubsub.streaming_pull(
                    subscription=name,
                    on_messages=self._callback(name),
                    max_messages=self.max_in_flight,
                    max_bytes=defaults.MAX_IN_FLIGHT_BYTES,
                )
            )
        logger.info(
            "bridge_started subscriptions=%s max_in_flight=%s batch_size=%s "
            "batch_workers=%s project=%s",
            ",".join(self.subscriptions),
            self.max_in_flight,
            self.batch_size,
            self.batch_workers,
            settings.PUBSUB_PROJECT_ID,
        )

    def install_signal_handlers(self) -> None:
        """Make SIGTERM and SIGINT stop the bridge gracefully."""

        def request_stop(signum: int, frame: Any) -> None:
            logger.info("bridge_stopping signal=%s", signal.Signals(signum).name)
            self.stopping.set()

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)

    def wait(self) -> pubsub.PubSubError | None:
        """Block until a stop is requested or a stream fails; return the failure."""
        failure: pubsub.PubSubError | None = None
        # A timed wait keeps the main thread responsive to signals.
        while not self.stopping.wait(0.5):
            for stream in self._streams:
                if stream.done():
                    # error() is the stream's translate(): a PubSubError
                    failure = stream.error() or pubsub.PubSubError(
                        f"streaming pull on {stream.path} ended", transient=True
                    )
                    self.stopping.set()
                    break
        return failure

    def stop(self, timeout: float = 60.0) -> None:
        """Stop taking messages, settle those taken, then close the streams."""
        with self._lock:
            self.stopping.set()  # callbacks nack from here on
            # the enqueues in flight finish and queue their acks
            self._lock.wait_for(lambda: self._taken <= 0, timeout=timeout)
        for stream in self._streams:
            stream.stop()  # nacks what is still outstanding, sends every settle
        self._closed.set()
        self._delayed.put(None)
        for worker in self._workers:
            worker.join(timeout=timeout)
        logger.info("bridge_stopped")
