"""Talk to Google Cloud Pub/Sub: the only module that imports google-cloud-pubsub.

``PUBSUB_EMULATOR_HOST`` points the real client at an emulator (ours:
``python -m vocoeng.pubsub_emulator``, or Google's); no credentials are needed
then. Every Google error leaves this module as :class:`PubSubError`, split into
transient (retry may pass) and permanent.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from .streaming import Received, StreamingPull

_lock = threading.Lock()
_publisher: Any = None
_subscriber: Any = None

ACK_DEADLINE_SECONDS = 600
MAX_DELIVERY_ATTEMPTS = 5
RETENTION_SECONDS = 7 * 24 * 3600


class PubSubError(Exception):
    """Report a Pub/Sub failure; ``transient`` says whether a retry may pass."""

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


class SubscriptionNotFound(PubSubError):
    """Report that a subscription (or its project) does not exist."""

    def __init__(self, message: str) -> None:
        super().__init__(message, transient=False)


class CredentialsMissing(PubSubError):
    """Report that no Google credentials were found and no emulator is set."""

    def __init__(self, message: str) -> None:
        super().__init__(message, transient=False)


def _apply_emulator_env() -> None:
    # The client reads the emulator address from the process environment only.
    if settings.PUBSUB_EMULATOR_HOST:
        os.environ["PUBSUB_EMULATOR_HOST"] = settings.PUBSUB_EMULATOR_HOST


def _not_found(subscription: str) -> SubscriptionNotFound:
    return SubscriptionNotFound(
        f"subscription {subscription} does not exist in project "
        f"{settings.PUBSUB_PROJECT_ID} (run `manage.py pubsub_setup`)"
    )


def _credentials_error(exc: Exception) -> CredentialsMissing:
    return CredentialsMissing(
        "no Google credentials: set GOOGLE_APPLICATION_CREDENTIALS (or run on "
        f"Google Cloud), or PUBSUB_EMULATOR_HOST for an emulator ({exc})"
    )


def publisher() -> Any:
    """Return the process-wide batching PublisherClient (thread-safe)."""
    global _publisher
    with _lock:
        if _publisher is None:
            from google.auth.exceptions import DefaultCredentialsError
            from google.cloud import pubsub_v1

            _apply_emulator_env()
            try:
                _publisher = pubsub_v1.PublisherClient(
                    batch_settings=pubsub_v1.types.BatchSettings(
                        max_messages=500, max_latency=0.01
                    )
                )
            except DefaultCredentialsError as exc:
                raise _credentials_error(exc) from exc
        return _publisher


def subscriber() -> Any:
    """Return the process-wide SubscriberClient (thread-safe)."""
    global _subscriber
    with _lock:
        if _subscriber is None:
            from google.auth.exceptions import DefaultCredentialsError
            from google.cloud import pubsub_v1

            _apply_emulator_env()
            try:
                _subscriber = pubsub_v1.SubscriberClient()
            except DefaultCredentialsError as exc:
                raise _credentials_error(exc) from exc
        return _subscriber


def reset_clients() -> None:
    """Drop the cached clients, e.g. after pointing settings at another emulator."""
    global _publisher, _subscriber
    with _lock:
        if _publisher is not None:
            _publisher.stop()
        if _subscriber is not None:
            _subscriber.close()
        _publisher = _subscriber = None


def topic_path(topic: str) -> str:
    """Return the full resource name of ``topic`` in PUBSUB_PROJECT_ID."""
    return f"projects/{settings.PUBSUB_PROJECT_ID}/topics/{topic}"


def subscription_path(subscription: str) -> str:
    """Return the full resource name of ``subscription`` in PUBSUB_PROJECT_ID."""
    return f"projects/{settings.PUBSUB_PROJECT_ID}/subscriptions/{subscription}"


def publish(
    *, topic: str, data: bytes, attributes: dict[str, str], timeout: float = 30.0
) -> str:
    """Publish one message and return its Pub/Sub message id once accepted."""
    return publish_async(topic=topic, data=data, attributes=attributes).result(
        timeout=timeout
    )


class _PublishFuture:
    """Wrap a client publish future so its errors come out as PubSubError."""

    def __init__(self, topic: str, future: Any) -> None:
        self.topic, self._future = topic, future

    def result(self, timeout: float = 30.0) -> str:
        from google.api_core import exceptions as gexc

        try:
            return self._future.result(timeout=timeout)
        except gexc.NotFound as exc:
            raise PubSubError(
                f"topic {self.topic} does not exist", transient=False
            ) from exc
        except (gexc.GoogleAPICallError, TimeoutError) as exc:
            raise PubSubError(
                f"publish to {self.topic} failed: {exc}", transient=True
            ) from exc


def publish_async(
    *, topic: str, data: bytes, attributes: dict[str, str]
) -> _PublishFuture:
    """Queue one message on the batching publisher; ``.result()`` waits for it."""
    future = publisher().publish(topic_path(topic), data, **attributes)
    return _PublishFuture(topic, future)


def topic_check(topic: str, timeout: float = 3.0) -> None:
    """Raise unless ``topic`` exists and Pub/Sub answers within ``timeout``."""
    publisher().get_topic(request={"topic": topic_path(topic)}, timeout=timeout)


# --- Topics and subscriptions (manage.py pubsub_setup) -------------------------------


@dataclass(frozen=True)
class SubscriptionSpec:
    """Describe one subscription that ``pubsub_setup`` creates."""

    name: str
    topic: str
    dead_letter: bool = True


def topics_wanted() -> list[str]:
    """Return every topic VocoEng uses, from settings."""
    return [
        settings.PUBSUB_TOPIC_MESSAGES,
        settings.PUBSUB_TOPIC_RESPONSES,
        settings.PUBSUB_TOPIC_JOBS,
        settings.PUBSUB_TOPIC_VOC,
        settings.PUBSUB_TOPIC_DEAD_LETTER,
    ]


def subscriptions_wanted() -> list[SubscriptionSpec]:
    """Return the bridge's subscriptions and the dead-letter store, from settings."""
    return [
        SubscriptionSpec(
            settings.PUBSUB_SUBSCRIPTION_MESSAGES, settings.PUBSUB_TOPIC_MESSAGES
        ),
        SubscriptionSpec(settings.PUBSUB_SUBSCRIPTION_JOBS, settings.PUBSUB_TOPIC_JOBS),
        SubscriptionSpec(settings.PUBSUB_SUBSCRIPTION_VOC, settings.PUBSUB_TOPIC_VOC),
        # Dead letters must not be dead-lettered again.
        SubscriptionSpec(
            settings.PUBSUB_SUBSCRIPTION_DEAD_LETTER,
            settings.PUBSUB_TOPIC_DEAD_LETTER,
            dead_letter=False,
        ),
    ]


def topic_ensure(topic: str) -> bool:
    """Create ``topic`` unless it exists; return True when it was created."""
    from google.api_core import exceptions as gexc

    try:
        publisher().create_topic(request={"name": topic_path(topic)}, timeout=30)
    except gexc.AlreadyExists:
        return False
    except gexc.GoogleAPICallError as exc:
        raise PubSubError(f"create topic {topic}: {exc}", transient=True) from exc
    return True


def subscription_ensure(spec: SubscriptionSpec) -> bool:
    """Create the subscription unless it exists; return True when it was created.

    Ack deadline 600 s, 7-day retention and (unless ``dead_letter`` is off) a
    dead-letter policy of 5 delivery attempts onto PUBSUB_TOPIC_DEAD_LETTER.
    An existing subscription is left as it is.
    """
    from google.api_core import exceptions as gexc

    request: dict[str, Any] = {
        "name": subscription_path(spec.name),
        "topic": topic_path(spec.topic),
        "ack_deadline_seconds": ACK_DEADLINE_SECONDS,
        "message_retention_duration": {"seconds": RETENTION_SECONDS},
    }
    if spec.dead_letter:
        request["dead_letter_policy"] = {
            "dead_letter_topic": topic_path(settings.PUBSUB_TOPIC_DEAD_LETTER),
            "max_delivery_attempts": MAX_DELIVERY_ATTEMPTS,
        }
    try:
        subscriber().create_subscription(request=request, timeout=30)
    except gexc.AlreadyExists:
        return False
    except gexc.GoogleAPICallError as exc:
        raise PubSubError(
            f"create subscription {spec.name}: {exc}", transient=True
        ) from exc
    return True


def subscription_describe(subscription: str) -> dict[str, Any]:
    """Return the settings of ``subscription`` that pubsub_setup manages."""
    from google.api_core import exceptions as gexc

    try:
        sub = subscriber().get_subscription(
            request={"subscription": subscription_path(subscription)}, timeout=10
        )
    except gexc.NotFound as exc:
        raise _not_found(subscription) from exc
    except gexc.GoogleAPICallError as exc:
        raise PubSubError(
            f"get subscription {subscription}: {exc}", transient=True
        ) from exc
    return {
        "name": subscription,
        "topic": sub.topic.rsplit("/", 1)[-1],
        "ack_deadline_seconds": sub.ack_deadline_seconds,
        "retention_seconds": int(sub.message_retention_duration.total_seconds()),
        "dead_letter_topic": sub.dead_letter_policy.dead_letter_topic.rsplit("/", 1)[
            -1
        ],
        "max_delivery_attempts": sub.dead_letter_policy.max_delivery_attempts,
    }


# --- Streaming pull (manage.py pubsub_bridge) ------------------------------------


def _translate(subscription: str, exc: Exception) -> PubSubError:
    from google.api_core import exceptions as gexc

    if isinstance(exc, gexc.NotFound):
        return _not_found(subscription)
    if isinstance(exc, PubSubError):
        return exc
    return PubSubError(f"streaming pull on {subscription}: {exc}", transient=True)


def streaming_pull(
    *,
    subscription: str,
    on_messages: Callable[[list[Received]], None],
    max_messages: int,
) -> StreamingPull:
    """Open and start a streaming pull on ``subscription`` with flow control.

    ``on_messages(messages)`` gets the messages of each response, on the
    stream's own thread (it must only hand them over); each is a
    :class:`Received` (``data``, ``attributes``, ``message_id``,
    ``delivery_attempt``, ``ack()``, ``nack()``). At most ``max_messages`` are
    outstanding at a time. See :mod:`vocoeng.pubsub.streaming`.
    """
    return StreamingPull(
        client=subscriber(),
        path=subscription_path(subscription),
        on_messages=on_messages,
        max_messages=max_messages,
        translate=lambda exc: _translate(subscription, exc),
    ).start()
