"""Talk to Google Cloud Pub/Sub: the only package that imports google-cloud-pubsub.

``PUBSUB_EMULATOR_HOST`` points the real client at an emulator (ours:
``python -m vocoeng.pubsub_emulator``, or Google's); no credentials are needed
then. Every Google error leaves this module as :class:`PubSubError`, split into
transient (retry may pass) and permanent.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable
from typing import Any

from django.conf import settings

from .streaming import Received, StreamingPull

_lock = threading.Lock()
_publisher: Any = None
_subscriber: Any = None


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


def endpoint() -> str:
    """Return where the clients talk to: the emulator's address, or Google's."""
    return settings.PUBSUB_EMULATOR_HOST or "pubsub.googleapis.com"


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
    *,
    topic: str,
    data: bytes,
    attributes: dict[str, str],
    timeout: float | None = None,
) -> str:
    """Publish one message and return its Pub/Sub message id once accepted.

    Waits ``timeout`` seconds at most (PUBSUB_PUBLISH_TIMEOUT_SECONDS), then
    raises PubSubError: a web request publishing must answer (503) well
    within gunicorn's timeout when Pub/Sub is unreachable.
    """
    return publish_async(topic=topic, data=data, attributes=attributes).result(
        timeout=timeout
    )


class _PublishFuture:
    """Wrap a client publish future so its errors come out as PubSubError."""

    def __init__(self, topic: str, future: Any) -> None:
        self.topic, self._future = topic, future

    def result(self, timeout: float | None = None) -> str:
        from google.api_core import exceptions as gexc

        if timeout is None:
            timeout = settings.PUBSUB_PUBLISH_TIMEOUT_SECONDS
        try:
            return self._future.result(timeout=timeout)
        except gexc.NotFound as exc:
            raise PubSubError(
                f"topic {self.topic} does not exist", transient=False
            ) from exc
        except (gexc.GoogleAPIError, TimeoutError) as exc:
            reason = str(exc) or f"no answer from {endpoint()} in {timeout:g} s"
            raise PubSubError(
                f"publish to {self.topic} failed: {reason}", transient=True
            ) from exc


def publish_async(
    *, topic: str, data: bytes, attributes: dict[str, str]
) -> _PublishFuture:
    """Queue one message on the batching publisher; ``.result()`` waits for it.

    The batch that carries it gives up when its caller does: its commit is
    retried for PUBSUB_PUBLISH_TIMEOUT_SECONDS at most (:func:`_publish_retry`).
    """
    seconds = settings.PUBSUB_PUBLISH_TIMEOUT_SECONDS
    future = publisher().publish(
        topic_path(topic),
        data,
        retry=_publish_retry(seconds),
        timeout=seconds,
        **attributes,
    )
    return _PublishFuture(topic, future)


@functools.cache
def _publish_retry(seconds: float) -> Any:
    """Return the client's own retry policy for Publish, ``seconds`` long.

    The client's default (google.pubsub_v1's publisher transport) retries a
    batch's commit for up to 600 s in a thread of its own: a publish that
    ``result()`` had already reported failed (after
    PUBSUB_PUBLISH_TIMEOUT_SECONDS; the webhook answered 503, the sender
    retries) went on being tried for minutes, and went out after all if
    Pub/Sub came back meanwhile. Same backoff and retried errors; only the
    deadline is ours.
    """
    from google.api_core import exceptions as gexc
    from google.api_core import retry as retries

    return retries.Retry(
        initial=0.1,
        maximum=60.0,
        multiplier=4,
        predicate=retries.if_exception_type(
            gexc.Aborted,
            gexc.Cancelled,
            gexc.DeadlineExceeded,
            gexc.InternalServerError,
            gexc.ResourceExhausted,
            gexc.ServiceUnavailable,
            gexc.Unknown,
        ),
        timeout=seconds,
    )


def topic_check(topic: str, timeout: float = 3.0) -> None:
    """Raise unless ``topic`` exists and Pub/Sub answers within ``timeout``.

    One attempt (for /readyz): the client's retry policy would wait for an
    unreachable endpoint far longer than ``timeout``.
    """
    publisher().get_topic(
        request={"topic": topic_path(topic)}, timeout=timeout, retry=None
    )


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
    max_bytes: int = 0,
) -> StreamingPull:
    """Open and start a streaming pull on ``subscription`` with flow control.

    ``on_messages(messages)`` gets the messages of each response, on the
    stream's own thread (it must only hand them over); each is a
    :class:`Received` (``data``, ``attributes``, ``message_id``,
    ``delivery_attempt``, ``ack()``, ``nack()``). At most ``max_messages`` are
    outstanding at a time, and when ``max_bytes`` is set, no more than that
    many bytes of them (always at least one message). See
    :mod:`vocoeng.pubsub.streaming`.
    """
    return StreamingPull(
        client=subscriber(),
        path=subscription_path(subscription),
        on_messages=on_messages,
        max_messages=max_messages,
        max_bytes=max_bytes,
        translate=lambda exc: _translate(subscription, exc),
    ).start()


# Topics and subscriptions (pubsub_setup, the bridge's check): vocoeng.pubsub.admin.
from .admin import (  # noqa: E402 - it uses the clients above
    ACK_DEADLINE_SECONDS,
    MAX_DELIVERY_ATTEMPTS,
    RETENTION_SECONDS,
    SubscriptionSpec,
    subscription_describe,
    subscription_ensure,
    subscriptions_wanted,
    topic_ensure,
    topics_wanted,
)

__all__ = [
    "ACK_DEADLINE_SECONDS",
    "MAX_DELIVERY_ATTEMPTS",
    "RETENTION_SECONDS",
    "CredentialsMissing",
    "PubSubError",
    "Received",
    "StreamingPull",
    "SubscriptionNotFound",
    "SubscriptionSpec",
    "endpoint",
    "publish",
    "publish_async",
    "publisher",
    "reset_clients",
    "streaming_pull",
    "subscriber",
    "subscription_describe",
    "subscription_ensure",
    "subscription_path",
    "subscriptions_wanted",
    "topic_check",
    "topic_ensure",
    "topic_path",
    "topics_wanted",
]
