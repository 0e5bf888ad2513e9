"""Shared DRF pieces: the JSON error handler and tenant resolution."""

from __future__ import annotations

from typing import Any

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
