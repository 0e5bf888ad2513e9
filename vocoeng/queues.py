"""Name the Celery queues in one place (kept in step with the Procfile).

A task names its queue where it is defined, ``@shared_task(route=Queue.AI)``,
and :func:`route_task` (the ``task_routes`` router) sends it there. Celery
5.7 deprecates the ``queue=`` task attribute this replaces.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class Queue(StrEnum):
    """Celery queues: `ai` is I/O-bound model calls, served by a thread pool."""

    DEFAULT = "default"
    AI = "ai"
    ANALYTICS = "analytics"


def route_task(
    name: str, args: Any, kwargs: Any, options: Any, task: Any = None, **_: Any
) -> dict[str, str] | None:
    """Return the queue named by the task's ``route`` attribute, if any.

    An explicit ``apply_async(queue=...)`` still wins (Celery merges the
    call's options over the route).
    """
    queue = getattr(task, "route", None)
    return {"queue": str(queue)} if queue else None
