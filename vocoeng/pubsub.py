"""Talk to Google Cloud Pub/Sub: the only module that imports google-cloud-pubsub.

``PUBSUB_EMULATOR_HOST`` points the real client at an emulator (ours:
``python -m vocoeng.pubsub_emulator``, or Google's); no credentials are needed
then.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from django.conf import settings

_lock = threading.Lock()
_publisher: Any = None


class PubSubError(Exception):
    """Report a Pub/Sub failure; ``transient`` says whether a retry may pass."""

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


def _apply_emulator_env() -> None:
    # The client reads the emulator address from the process environment only.
    if settings.PUBSUB_EMULATOR_HOST:
        os.environ["PUBSUB_EMULATOR_HOST"] = settings.PUBSUB_EMULATOR_HOST


def publisher() -> Any:
    """Return the process-wide batching PublisherClient (thread-safe)."""
    global _publisher
    with _lock:
        if _publisher is None:
            from google.cloud import pubsub_v1

            _apply_emulator_env()
            _publisher = pubsub_v1.PublisherClient(
                batch_settings=pubsub_v1.types.BatchSettings(
                    max_messages=500, max_latency=0.01
                )
            )
        return _publisher


def topic_path(topic: str) -> str:
    """Return the full resource name of ``topic`` in PUBSUB_PROJECT_ID."""
    return f"projects/{settings.PUBSUB_PROJECT_ID}/topics/{topic}"


def publish(
    *, topic: str, data: bytes, attributes: dict[str, str], timeout: float = 30.0
) -> str:
    """Publish one message and return its Pub/Sub message id once accepted."""
    from google.api_core import exceptions as gexc

    future = publisher().publish(topic_path(topic), data, **attributes)
    try:
        return future.result(timeout=timeout)
    except gexc.NotFound as exc:
        raise PubSubError(f"topic {topic} does not exist", transient=False) from exc
    except (gexc.GoogleAPICallError, TimeoutError) as exc:
        raise PubSubError(f"publish to {topic} failed: {exc}", transient=True) from exc


def topic_check(topic: str, timeout: float = 3.0) -> None:
    """Raise unless ``topic`` exists and Pub/Sub answers within ``timeout``."""
    publisher().get_topic(request={"topic": topic_path(topic)}, timeout=timeout)
