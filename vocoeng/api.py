"""Shared DRF pieces: the JSON error handler and tenant resolution."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from rest_framework import routers, serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.reverse import reverse
from rest_framework.views import exception_handler as drf_exception_handler


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """Return DRF's error response with an ``error`` message clients can show."""
    response = drf_exception_handler(exc, context)
    if response is not None and isinstance(response.data, dict):
        detail = response.data.get("detail")
        response.data.setdefault("error", str(detail) if detail else "invalid request")
    return response


def errors_text(errors: dict[str, Any]) -> str:
    """Flatten serializer errors into one readable reason."""
    parts = []
    for field, msgs in errors.items():
        text = "; ".join(str(m) for m in msgs) if isinstance(msgs, list) else str(msgs)
        parts.append(f"{field}: {text}")
    return ", ".join(parts)


class StrictCharField(serializers.CharField):
    """Accept JSON strings only: a number where text belongs is a client bug."""

    def to_internal_value(self, data: object) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class ApiRootView(routers.APIRootView):
    """The VocoEng API. Its OpenAPI schema is at /api/schema/ (``schema``
    below: Swagger UI; /api/schema/redoc/ for Redoc)."""

    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        response = super().get(request, *args, **kwargs)
        response.data["schema"] = reverse("swagger-ui", request=request)
        return response


# Paths whose clients are machines: they get JSON errors, not HTML pages.
JSON_PATHS = ("/api/", "/webhooks/", "/process")


def bad_request(
    request: HttpRequest, exception: Exception | None = None
) -> HttpResponse:
    """Answer a request Django refused (e.g. a body over DATA_UPLOAD_MAX_MEMORY_SIZE)
    in JSON under the API and webhook paths, with Django's page elsewhere."""
    if request.path.startswith(JSON_PATHS):
        reason = (
            "request body too large"
            if isinstance(exception, RequestDataTooBig)
            else "bad request"
        )
        return JsonResponse({"error": reason}, status=400)
    return defaults.bad_request(request, exception)


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """Answer an unrouted API or webhook path in JSON, any other with Django's page.

    DRF's views answer their own 404s in JSON; this covers URLs no route
    matches (an id of the wrong shape, a typo), which Django would answer in
    HTML. (Django shows its debug page instead when DEBUG is on.)
    """
    if request.path.startswith(JSON_PATHS):
        return JsonResponse({"error": "not found"}, status=404)
    return defaults.page_not_found(request, exception)
