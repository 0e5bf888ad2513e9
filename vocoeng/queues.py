"""Name the Celery queues in one place (kept in step with the Procfile)."""

from __future__ import annotations

from enum import StrEnum


class Queue(StrEnum):
    """Celery queues: `ai` is I/O-bound model calls, served by a thread pool."""

    DEFAULT = "default"
    AI = "ai"
    ANALYTICS = "analytics"
