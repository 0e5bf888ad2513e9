"""Create and describe topics and subscriptions (pubsub_setup, the bridge's check).

Each call is tried again while Pub/Sub is unreachable (an emulator still
starting, as under docker compose) for PUBSUB_STARTUP_WAIT_SECONDS, then
fails with a message naming the endpoint. The client library's own retry is
off for these calls: its policy retried an unreachable endpoint for minutes
whatever the call's timeout, so pubsub_setup hung with no word.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from django.conf import settings

from . import (
    PubSubError,
    _not_found,
    endpoint,
    publisher,
    subscriber,
    subscription_path,
    topic_path,
)
from .streaming import retryable

logger = logging.getLogger("vocoeng.pubsub")
T = TypeVar("T")

ACK_DEADLINE_SECONDS = 600
MAX_DELIVERY_ATTEMPTS = 5
RETENTION_SECONDS = 7 * 24 * 3600


# What one attempt of an admin call waits for at most.
_ATTEMPT_SECONDS = 10.0


def _unreachable(exc: Exception) -> bool:
    """Say whether ``exc`` means Pub/Sub did not answer (yet): a code a stream
    reopens on, except RESOURCE_EXHAUSTED (a quota, not an absence)."""
    from google.api_core import exceptions as gexc

    return retryable(exc) and not isinstance(exc, gexc.ResourceExhausted)


def _admin_call(what: str, call: Callable[..., T]) -> T:
    """Return ``call(retry=None, timeout=...)``, tried again while Pub/Sub is
    unreachable (an emulator still starting) for PUBSUB_STARTUP_WAIT_SECONDS.

    Any other error propagates as the client raised it. Still unreachable
    after the wait: PubSubError naming the endpoint and the last error.
    """
    wait = settings.PUBSUB_STARTUP_WAIT_SECONDS
    deadline = time.monotonic() + wait
    delay, warned = 0.25, False
    while True:
        left = deadline - time.monotonic()
        try:
            return call(retry=None, timeout=max(min(_ATTEMPT_SECONDS, left), 1.0))
        except Exception as exc:
            if not _unreachable(exc):
                raise
            if time.monotonic() + delay > deadline:
                raise PubSubError(
                    f"{what}: Pub/Sub at {endpoint()} is unreachable "
                    f"(waited {wait:g} s, PUBSUB_STARTUP_WAIT_SECONDS): {exc}",
                    transient=True,
                ) from exc
            if not warned:
                logger.warning(
                    "pubsub_unreachable endpoint=%s call=%s error=%s: "
                    "trying again for up to %g s",
                    endpoint(),
                    what,
                    type(exc).__name__,
                    wait,
                )
                warned = True
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


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

    client = publisher()
    try:
        _admin_call(
            f"create topic {topic}",
            lambda **kw: client.create_topic(request={"name": topic_path(topic)}, **kw),
        )
    except gexc.AlreadyExists:
        return False
    except gexc.GoogleAPIError as exc:
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
    client = subscriber()
    try:
        _admin_call(
            f"create subscription {spec.name}",
            lambda **kw: client.create_subscription(request=request, **kw),
        )
    except gexc.AlreadyExists:
        return False
    except gexc.GoogleAPIError as exc:
        raise PubSubError(
            f"create subscription {spec.name}: {exc}", transient=True
        ) from exc
    return True


def subscription_describe(subscription: str) -> dict[str, Any]:
    """Return the settings of ``subscription`` that pubsub_setup manages."""
    from google.api_core import exceptions as gexc

    client = subscriber()
    request = {"subscription": subscription_path(subscription)}
    try:
        sub = _admin_call(
            f"get subscription {subscription}",
            lambda **kw: client.get_subscription(request=request, **kw),
        )
    except gexc.NotFound as exc:
        raise _not_found(subscription) from exc
    except gexc.GoogleAPIError as exc:
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
