"""Carry a correlation id from the bridge into Celery task headers and task logs.

The bridge enqueues a chain with ``headers={HEADER: id}``; ``task_prerun`` puts
the id of the running task into a context variable and logs it, and
``before_task_publish`` copies it onto every task published from inside a task
(the next step of a chain, a chord's callback), so the whole chain carries it.

The header is not called ``correlation_id``: Celery already uses that name
(the task id, from the AMQP property) in ``task.request``.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar
from typing import Any

from celery.signals import before_task_publish, task_postrun, task_prerun

HEADER = "x_correlation_id"

logger = logging.getLogger(__name__)
_current: ContextVar[str | None] = ContextVar("correlation_id", default=None)


def current() -> str | None:
    """Return the correlation id of the task running in this context, if any."""
    return _current.get()


def headers_for(correlation_id: str) -> dict[str, str]:
    """Return the Celery message headers that carry ``correlation_id``."""
    return {HEADER: correlation_id}


@task_prerun.connect(dispatch_uid="vocoeng.correlation.prerun")
def _on_prerun(task_id: str, task: Any, **_: Any) -> None:
    value = getattr(task.request, HEADER, None)
    if value is None and isinstance(task.request.headers, dict):
        value = task.request.headers.get(HEADER)
    _current.set(value)
    if value:
        logger.info(
            "task_started task=%s id=%s correlation_id=%s", task.name, task_id, value
        )


@task_postrun.connect(dispatch_uid="vocoeng.correlation.postrun")
def _on_postrun(**_: Any) -> None:
    _current.set(None)


@before_task_publish.connect(dispatch_uid="vocoeng.correlation.publish")
def _on_publish(headers: dict[str, Any] | None = None, **_: Any) -> None:
    value = _current.get()
    if value and headers is not None:
        headers.setdefault(HEADER, value)
