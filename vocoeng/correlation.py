"""Carry a correlation id from the edge (HTTP, Pub/Sub) through Celery tasks.

An id is born at the edge: :class:`CorrelationIdMiddleware` gives every HTTP
request one (the caller's ``X-Request-ID`` / ``X-Correlation-ID`` when it is
well formed, else a new one) and echoes it in the response; the bridge names
each Pub/Sub message's id and enqueues its chain with ``headers={HEADER: id}``.

While an id is current (a request, a task) ``before_task_publish`` copies it
onto every task published from that context: chains enqueued after commit,
the next step of a chain, a chord's callback, a retry. ``task_prerun`` makes
the id of the running task current, so its log records carry it
(vocoeng.logging_setup adds it to every record).

The header is not called ``correlation_id``: Celery already uses that name
(the task id, from the AMQP property) in ``task.request``.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from typing import Any

from celery.signals import before_task_publish, task_postrun, task_prerun
from django.http import HttpRequest, HttpResponse

HEADER = "x_correlation_id"
# Request headers an edge id may come in, first match wins; the response
# carries the id in RESPONSE_HEADER.
REQUEST_HEADERS = ("X-Request-ID", "X-Correlation-ID")
RESPONSE_HEADER = "X-Request-ID"
# What a caller's id may look like: UUIDs, trace ids, "pubsub-<id>". Anything
# else (spaces, newlines, very long values) would let a client forge or break
# log lines, so it is replaced by a new id.
_WELL_FORMED = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")

logger = logging.getLogger(__name__)
_current: ContextVar[str | None] = ContextVar("correlation_id", default=None)
_task: ContextVar[tuple[str, str] | None] = ContextVar("celery_task", default=None)
# task id -> tokens to restore after the task: an eager task (run inside a
# request) must give the request its id back, not clear it.
_restore: dict[str, tuple[Token, Token]] = {}


def current() -> str | None:
    """Return the correlation id of this context (request or task), if any."""
    return _current.get()


def current_task() -> tuple[str, str] | None:
    """Return ``(task name, task id)`` of the task running in this context."""
    return _task.get()


def headers_for(correlation_id: str) -> dict[str, str]:
    """Return the Celery message headers that carry ``correlation_id``."""
    return {HEADER: correlation_id}


def new_id() -> str:
    """Return a fresh correlation id."""
    return uuid.uuid4().hex


def well_formed(value: str | None) -> bool:
    """Say whether a caller-supplied id may be used as is."""
    return value is not None and _WELL_FORMED.fullmatch(value) is not None


def activate(correlation_id: str | None) -> Token:
    """Make ``correlation_id`` current; hand the token to :func:`deactivate`."""
    return _current.set(correlation_id)


def deactivate(token: Token) -> None:
    """Restore the id that was current before :func:`activate`."""
    _current.reset(token)


@contextmanager
def active(correlation_id: str | None) -> Iterator[None]:
    """Make ``correlation_id`` current within the block (activate, deactivate)."""
    token = activate(correlation_id)
    try:
        yield
    finally:
        deactivate(token)


def from_request(request: HttpRequest) -> str:
    """Return the caller's well-formed id, or a new one."""
    for name in REQUEST_HEADERS:
        value = request.META.get("HTTP_" + name.upper().replace("-", "_"))
        if value is not None and well_formed(value):
            return value
    return new_id()


class CorrelationIdMiddleware:
    """Give each request a correlation id, current while it is answered.

    The id replaces the request's ``X-Request-ID`` header, so views that keep
    a request's headers (webhooks.services.KEPT_HEADERS) record the id in
    use, never a malformed one a client sent.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        from .logging_setup import role_default

        role_default("web")

    def __call__(self, request: HttpRequest) -> HttpResponse:
        correlation_id = from_request(request)
        request.META["HTTP_X_REQUEST_ID"] = correlation_id
        request.__dict__.pop("headers", None)  # a cached_property built from META
        token = activate(correlation_id)
        try:
            response = self.get_response(request)
        finally:
            deactivate(token)
        response[RESPONSE_HEADER] = correlation_id
        return response


@task_prerun.connect(dispatch_uid="vocoeng.correlation.prerun")
def _on_prerun(task_id: str, task: Any, **_: Any) -> None:
    value = getattr(task.request, HEADER, None)
    if value is None and isinstance(task.request.headers, dict):
        value = task.request.headers.get(HEADER)
    if value is None and task.request.is_eager:
        value = _current.get()  # run inline: the caller's id is the task's
    _restore[task_id] = (_current.set(value), _task.set((task.name, task_id)))
    if value:
        logger.info(
            "task_started task=%s id=%s correlation_id=%s", task.name, task_id, value
        )


@task_postrun.connect(dispatch_uid="vocoeng.correlation.postrun")
def _on_postrun(task_id: str, **_: Any) -> None:
    tokens = _restore.pop(task_id, None)
    if tokens is None:
        _current.set(None)
        _task.set(None)
        return
    try:
        _current.reset(tokens[0])
        _task.reset(tokens[1])
    except ValueError:  # set in another context (should not happen): clear
        _current.set(None)
        _task.set(None)


@before_task_publish.connect(dispatch_uid="vocoeng.correlation.publish")
def _on_publish(headers: dict[str, Any] | None = None, **_: Any) -> None:
    value = _current.get()
    if value and headers is not None:
        headers.setdefault(HEADER, value)
