"""Document the HTTP surface in the OpenAPI schema (drf-spectacular).

DRF views describe themselves (serializers + ``extend_schema``). The plain
Django views (webhooks, ``/process``, health) carry their OpenAPI operations
on the function, attached by :func:`document` beside the view, and the
post-processing hook :func:`plain_views_add` puts them into the schema under
the path Django routes them on; so the docs live with the code and this module
imports no app.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.generators import EndpointEnumerator
from drf_spectacular.openapi import AutoSchema as SpectacularAutoSchema
from drf_spectacular.plumbing import ResolvedComponent

View = TypeVar("View", bound=Callable[..., Any])

# Schemes of the plain views; the DRF ones come from the authentication
# classes (tokenAuth below, cookieAuth for the session).
SECURITY_SCHEMES: dict[str, dict[str, Any]] = {
    "whatsappSignature": {
        "type": "apiKey",
        "in": "header",
        "name": "X-Hub-Signature-256",
        "description": (
            "`sha256=<hex>`: HMAC-SHA256 of the raw body with WHATSAPP_APP_SECRET "
            "(Meta signs every Cloud API notification)."
        ),
    },
    "aisensySecret": {
        "type": "apiKey",
        "in": "header",
        "name": "X-AiSensy-Secret",
        "description": "The shared secret AISENSY_WEBHOOK_SECRET.",
    },
    "pubsubOidc": {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": (
            "Google-signed OIDC token of the push subscription; checked only when "
            "PUBSUB_PUSH_AUDIENCE is set."
        ),
    },
}

# Every error body: ``error`` says why; DRF's adds ``detail`` or field errors.
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "error": {"type": "string"},
        "detail": {"type": "string"},
    },
    "required": ["error"],
    "additionalProperties": True,
}
API_ERRORS = {
    400: "Invalid input: `error` says why, field errors by field name.",
    401: "No or an unknown API key.",
    403: "The caller may not do this.",
    404: "Not found (or another tenant's).",
    415: "The body's Content-Type is not one the operation reads.",
}


ERROR_REF = {"$ref": "#/components/schemas/Error"}


def json_response(description: str, schema: dict[str, Any] | None = None) -> dict:
    """Return an OpenAPI response object with a JSON body (by default an error)."""
    return {
        "description": description,
        "content": {"application/json": {"schema": schema or ERROR_REF}},
    }


def error_responses(*codes: int) -> dict[str, dict]:
    """Return the ``{"error": ...}`` responses of the given status codes."""
    reasons = {
        400: "Malformed or invalid body (recorded as rejected).",
        401: "Credentials missing or wrong.",
        403: "Signature or secret does not match.",
        405: "Method not allowed.",
        409: "Conflict with the stored state.",
        502: "The AI reply failed.",
        503: "Temporarily unavailable (database, broker or Pub/Sub); retry.",
    }
    return {str(code): json_response(reasons[code]) for code in codes}


def document(**operations: dict[str, Any]) -> Callable[[View], View]:
    """Attach OpenAPI operations (by lower-case HTTP method) to a plain view.

    Apply it outermost, so Django's decorators (which copy ``__dict__``) do
    not hide it.
    """

    def attach(view: View) -> View:
        view.openapi_operations = operations  # type: ignore[attr-defined]
        return view

    return attach


class AutoSchema(SpectacularAutoSchema):
    """Document the JSON errors (vocoeng.api.exception_handler) DRF views give."""

    def _get_response_bodies(self, direction: str = "response") -> dict[str, Any]:
        responses = super()._get_response_bodies(direction)  # type: ignore[arg-type]
        if direction != "response":
            return responses
        codes = []
        query = any(p.get("in") == "query" for p in self._get_parameters())
        if self.method != "GET" or query:
            codes.append(400)
        if self.method in ("POST", "PUT", "PATCH"):
            codes.append(415)  # a Content-Type none of the view's parsers reads
        if self.get_auth():
            codes += [401, 403]
        if "{" in self.path:
            codes.append(404)
        error = ResolvedComponent(
            name="Error",
            type=ResolvedComponent.SCHEMA,
            schema={**ERROR_SCHEMA},
            object="vocoeng.api.Error",
        )
        self.registry.register_on_missing(error)
        for code in codes:
            responses.setdefault(str(code), {"description": API_ERRORS[code]})
        for code, response in responses.items():
            # Every DRF error comes through vocoeng.api.exception_handler.
            if code >= "400" and "content" not in response:
                response["content"] = {"application/json": {"schema": error.ref}}
        return responses


class TokenAuthScheme(OpenApiAuthenticationExtension):
    """Describe ``Authorization: Token <key>`` (vocoeng.auth.ApiKeyAuthentication)."""

    target_class = "vocoeng.auth.ApiKeyAuthentication"
    name = "tokenAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, Any]:
        return {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": (
                "`Token <key>`: a tenant API key from `manage.py create_api_key`; "
                "it sees its own tenant's data only."
            ),
        }


class _PlainViewEnumerator(EndpointEnumerator):
    """Enumerate the URL patterns whose view carries ``openapi_operations``."""

    def should_include_endpoint(self, path: str, callback: Any) -> bool:
        return hasattr(callback, "openapi_operations")

    def get_allowed_methods(self, callback: Any) -> list[str]:
        return [method.upper() for method in callback.openapi_operations]


def plain_views_add(
    result: dict[str, Any], generator: Any, request: Any, public: bool
) -> dict[str, Any]:
    """Add the documented plain Django views and their security schemes."""
    enumerator = _PlainViewEnumerator(urlconf=generator.urlconf)
    # _get_api_endpoints: the public one runs the DRF preprocessing hooks,
    # which are about DRF views.
    for path, _regex, method, callback in enumerator._get_api_endpoints(None, ""):
        operation = callback.openapi_operations[method.lower()]
        result["paths"].setdefault(path, {})[method.lower()] = operation
    result["paths"] = dict(sorted(result["paths"].items()))
    components = result.setdefault("components", {})
    components.setdefault("securitySchemes", {}).update(SECURITY_SCHEMES)
    components.setdefault("schemas", {}).setdefault("Error", ERROR_SCHEMA)
    return result


def summary_alias_drop(endpoints: list[tuple]) -> list[tuple]:
    """Drop ``/api/v1/analytics/summary`` (no slash): an alias of ``summary/``.

    Documenting both would give two operations the same operationId.
    """
    return [e for e in endpoints if e[0] != "/api/v1/analytics/summary"]
