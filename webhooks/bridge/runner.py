"""Run streaming pulls on the bridge's subscriptions and ack after enqueue."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterable
from typing import Any

from django.conf import settings

from vocoeng import pubsub

from . import metrics
from .handling import Delivery, Outcome, message_handle

logger = logging.getLogger("webhooks.bridge")


def subscription_kinds() -> dict[str, str]:
    """Return the kind of the messages on each bridge subscription."""
    return {
        settings.PUBSUB_SUBSCRIPTION_MESSAGES: "chat_message",
        settings.PUBSUB_SUBSCRIPTION_JOBS: "pipeline_job",
        settings.PUBSUB_SUBSCRIPTION_VOC: "voc_event",
    }


class Bridge:
    """Pull ``subscriptions`` at once; each message is acked only once handled."""

    def __init__(
        self,
        *,
        subscriptions: Iterable[str],
        max_in_flight: int,
        retry_seconds: float | None = None,
    ) -> None:
        self.subscriptions = list(subscriptions)
        self.max_in_flight = max_in_flight
        self.retry_seconds = (
            settings.PUBSUB_BRIDGE_BROKER_RETRY_SECONDS
            if retry_seconds is None
            else retry_seconds
        )
        self.stopping = threading.Event()
        self._streams: list[pubsub.Streaming] = []
        kinds = subscription_kinds()
        self._kinds = {name: kinds.get(name, "") for name in self.subscriptions}

    def check(self) -> None:
        """Raise PubSubError unless every subscription exists and is reachable."""
        for name in self.subscriptions:
            pubsub.subscription_describe(name)

    def _callback(self, subscription: str) -> Any:
        default_kind = self._kinds[subscription]

        def on_message(message: Any) -> None:
            delivery = Delivery(
                subscription=subscription,
                message_id=message.message_id,
                data=message.data,
                attributes=dict(message.attributes),
                delivery_attempt=message.delivery_attempt,
                default_kind=default_kind,
            )
            metrics.MESSAGES.labels(subscription, "received").inc()
            try:
                outcome = message_handle(
                    delivery, retry_seconds=self.retry_seconds, stop=self.stopping
                )
            except Exception:
                logger.exception(
                    "bridge_message event=nacked message_id=%s", message.message_id
                )
                outcome = Outcome.RETRY
            if outcome is Outcome.RETRY:
                message.nack()
                metrics.MESSAGES.labels(subscription, "nacked").inc()
            else:
                message.ack()
                metrics.MESSAGES.labels(subscription, outcome.value).inc()

        return on_message

    def start(self) -> None:
        """Open one streaming pull per subscription."""
        for name in self.subscriptions:
            self._streams.append(
                pubsub.subscribe(
                    subscription=name,
                    callback=self._callback(name),
                    max_messages=self.max_in_flight,
                )
            )
        logger.info(
            "bridge_started subscriptions=%s max_in_flight=%s project=%s",
            ",".join(self.subscriptions),
            self.max_in_flight,
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
                    failure = stream.error() or pubsub.PubSubError(
                        f"streaming pull on {stream.subscription} ended",
                        transient=True,
                    )
                    self.stopping.set()
                    break
        return failure

    def stop(self) -> None:
        """Stop pulling, nack what was not handed out, finish callbacks running."""
        self.stopping.set()
        for stream in self._streams:
            stream.stop()
        logger.info("bridge_stopped")
