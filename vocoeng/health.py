"""Liveness (``/health``) and readiness (``/readyz``) endpoints."""

from __future__ import annotations

import logging
from collections.abc import Callable

from django import db
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_GET

from .openapi import document, json_response

_CHECKS = {"type": "object", "additionalProperties": {"enum": ["ok", "failing"]}}
READINESS: dict = {
    "type": "object",
    "properties": {
        "status": {"type": "string", "enum": ["ok", "unavailable"]},
        "checks": _CHECKS,
        "errors": {"type": "object", "additionalProperties": {"type": "string"}},
    },
    "required": ["status", "checks"],
}

logger = logging.getLogger(__name__)


@document(
    get={
        "operationId": "health",
        "summary": "Liveness",
        "tags": ["operations"],
        "security": [{}],
        "responses": {
            "200": json_response(
                "The process is alive.",
                {
                    "type": "object",
                    "properties": {"status": {"enum": ["ok"]}},
                    "required": ["status"],
                },
            )
        },
    }
)
@require_GET
def health(request: HttpRequest) -> JsonResponse:
    """Answer that the process is alive; touches nothing outside it."""
    return JsonResponse({"status": "ok"})


def _check_database() -> str | None:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc)[:200]}"
    return None


def _check_broker() -> str | None:
    from .celery import app

    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, timeout=2)
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc)[:200]}"
    return None


def _check_pubsub() -> str | None:
    from . import pubsub

    try:
        pubsub.topic_check(settings.PUBSUB_TOPIC_MESSAGES)
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc)[:200]}"
    return None


@document(
    get={
        "operationId": "readyz",
        "summary": "Readiness: database, broker and (BUS=pubsub) Pub/Sub",
        "tags": ["operations"],
        "security": [{}],
        "responses": {
            "200": json_response("Every check passed.", READINESS),
            "503": json_response("A check failed; `errors` names it.", READINESS),
        },
    }
)
@require_GET
def readyz(request: HttpRequest) -> JsonResponse:
    """Answer 200 when the database and broker (and Pub/Sub) are reachable.

    503 names each failing part, so a load balancer and a person both know why.
    """
    checks = {"database": _check_database, "broker": _check_broker}
    if settings.BUS == "pubsub":
        checks["pubsub"] = _check_pubsub
    results = {name: check() for name, check in checks.items()}
    failing = {name: err for name, err in results.items() if err}
    body = {
        "status": "ok" if not failing else "unavailable",
        "checks": {
            name: ("ok" if not err else "failing") for name, err in results.items()
        },
    }
    if failing:
        body["errors"] = failing
        logger.warning("readyz failing=%s", ",".join(failing))
    return JsonResponse(body, status=503 if failing else 200)


def dependency_down(exc: BaseException) -> str | None:
    """Name the dependency ``exc`` says is unreachable, or None for anything else.

    ``django.db``'s OperationalError and InterfaceError (server gone, refused,
    locked, deadlocked): "database"; kombu's OperationalError (what Celery
    raises once the broker refuses): "broker"; a transient PubSubError:
    "pubsub". A bug (IntegrityError, ProgrammingError, anything else) is None.
    """
    from kombu.exceptions import OperationalError as BrokerError

    from .pubsub import PubSubError

    if isinstance(exc, db.OperationalError | db.InterfaceError):
        return "database"
    if isinstance(exc, BrokerError):
        return "broker"
    if isinstance(exc, PubSubError) and exc.transient:
        return "pubsub"
    return None


class DependencyDownMiddleware:
    """Answer 503 with Retry-After when a view fails because the database or
    the broker cannot be reached, instead of Django's 500.

    Only what :func:`dependency_down` names is translated (the database,
    the broker, a transient Pub/Sub failure); a bug (IntegrityError,
    ProgrammingError, anything else) stays a 500. Views that know better
    (the webhooks, the analytics ingest) answer their own 503 first and
    never get here.
    """

    RETRY_AFTER_SECONDS = 5

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(
        self, request: HttpRequest, exception: Exception
    ) -> HttpResponse | None:
        part = dependency_down(exception)
        if part is None:
            return None
        logger.error(
            "dependency_down part=%s path=%s error=%s",
            part,
            request.path,
            type(exception).__name__,
            exc_info=exception,
        )
        response = JsonResponse(
            {"error": f"temporarily unavailable ({part}), retry"}, status=503
        )
        response["Retry-After"] = str(self.RETRY_AFTER_SECONDS)
        return response
