"""Webhook endpoints: verify, record the raw delivery, hand off, answer fast."""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial

import orjson
from django.conf import settings
from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods, require_POST
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework.parsers import JSONParser
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.views import APIView

from conversations.serializers import InboundMessageSerializer
from vocoeng import channels
from vocoeng.auth import ApiKeyAuthentication
from vocoeng.openapi import document
from vocoeng.routing import PermanentMessageError, decode_json

from . import openapi, services
from .inbound import REQUEUE_AFTER
from .ingress import TENANT_HEADER, api_delivery_process, pubsub_delivery_process
from .models import WebhookDelivery
from .oidc import PushAuthError, push_token_verify
from .parsers import whatsapp_phone_number_ids
from .security import whatsapp_signature_valid

logger = logging.getLogger(__name__)

Accept = Callable[..., WebhookDelivery]


def _accept(request: HttpRequest, *, source: str, accept: Accept) -> HttpResponse:
    """Record the delivery; 200 once it is committed (its task follows)."""
    try:
        delivery = accept(
            body=request.body, headers=services.headers_kept(request.META)
        )
    except services.DeliveryRejected as exc:
        return JsonResponse({"error": exc.reason}, status=400)
    except services.DeliveryFailed as exc:  # DB down: the sender retries
        logger.warning("webhook_failed source=%s delivery=%s", source, exc.delivery)
        return JsonResponse({"error": "temporarily unavailable, retry"}, status=503)
    return _accepted(delivery)


def _accepted(delivery: WebhookDelivery) -> HttpResponse:
    """Return ``{"status": "ok", "delivery": <id>}``, encoded by orjson.

    Every accepted webhook answers this: JsonResponse's encoder (a
    DjangoJSONEncoder made per response) cost ~25 us of a request's CPU
    under load, orjson ~3 (bench/webhooks.py's in-process profile).
    """
    return HttpResponse(
        orjson.dumps({"status": "ok", "delivery": str(delivery.pk)}),
        content_type="application/json",
    )


def _process(
    request: HttpRequest, *, source: str, process: services.Processor
) -> HttpResponse:
    delivery = services.delivery_record(
        source=source, body=request.body, headers=dict(request.headers)
    )
    try:
        summary = process(delivery=delivery)
    except services.DeliveryRejected as exc:
        return JsonResponse({"error": exc.reason}, status=400)
    except Exception as exc:  # DB or broker down: answer 503 so the sender retries
        return _failed(delivery, source=source, exc=exc)
    return JsonResponse({"status": "ok", "delivery": str(delivery.pk), **summary})


def _failed(delivery: WebhookDelivery, *, source: str, exc: Exception) -> HttpResponse:
    """Record the delivery as failed on our side and answer 503: retry later."""
    logger.error(
        "webhook_failed source=%s delivery=%s", source, delivery.pk, exc_info=exc
    )
    try:
        services.delivery_fail(delivery=delivery, error=f"{type(exc).__name__}: {exc}")
    except DatabaseError:
        pass
    return JsonResponse({"error": "temporarily unavailable, retry"}, status=503)


def _unavailable(source: str, exc: Exception) -> JsonResponse:
    logger.error("webhook_failed source=%s (channel lookup)", source, exc_info=exc)
    return JsonResponse({"error": "temporarily unavailable, retry"}, status=503)


def _unauthorized(source: str, reason: str, status: int) -> JsonResponse:
    # Recorded without the body: an unsigned request is not worth keeping.
    services.delivery_record(
        source=source,
        body=b"",
        headers={},
        verdict=WebhookDelivery.Verdict.UNAUTHORIZED,
        error=reason,
    )
    logger.warning("webhook_unauthorized source=%s reason=%s", source, reason)
    return JsonResponse({"error": reason}, status=status)


def _app_secrets(
    ids: set[str], *, fresh: bool = False
) -> dict[str, str] | HttpResponse:
    """Return the app secrets of the numbers, or the answer refusing them."""
    try:
        return channels.whatsapp_app_secrets(phone_number_ids=ids, fresh=fresh)
    except channels.UnknownChannel as exc:
        return _unauthorized("whatsapp", exc.reason, 403)
    except DatabaseError as exc:  # the sender retries
        return _unavailable("whatsapp", exc)


def _signed(body: bytes, header: str, secrets: dict[str, str]) -> bool:
    """Say whether every app secret of the delivery's numbers signed ``body``."""
    return all(
        whatsapp_signature_valid(body=body, header=header, secret=secret)
        for secret in set(secrets.values()) or {settings.WHATSAPP_APP_SECRET}
    )


@document(**openapi.WHATSAPP)
@csrf_exempt
@require_http_methods(["GET", "POST"])
def whatsapp(request: HttpRequest) -> HttpResponse:
    """Answer Meta's verification handshake (GET) or take a notification (POST)."""
    if request.method == "GET":
        if request.GET.get(
            "hub.mode"
        ) == "subscribe" and channels.whatsapp_verify_token_valid(
            given=request.GET.get("hub.verify_token", "")
        ):
            return HttpResponse(
                request.GET.get("hub.challenge", ""), content_type="text/plain"
            )
        return HttpResponse(
            "verification failed", status=403, content_type="text/plain"
        )
    header = request.META.get("HTTP_X_HUB_SIGNATURE_256", "")
    if not header:
        return _unauthorized("whatsapp", "X-Hub-Signature-256 is missing", 401)
    try:
        data = decode_json(request.body)
    except PermanentMessageError:
        data = None  # rejected with the reason once the signature checks out
    # The number a delivery is for picks the channel, whose app secret must
    # have signed it (all of them, when one delivery names several numbers).
    ids = whatsapp_phone_number_ids(data)
    secrets = _app_secrets(ids)
    if isinstance(secrets, HttpResponse):
        return secrets
    if not _signed(request.body, header, secrets):
        # Perhaps read before a rotation (they are kept a few seconds): again.
        secrets = _app_secrets(ids, fresh=True)
        if isinstance(secrets, HttpResponse):
            return secrets
        if not _signed(request.body, header, secrets):
            return _unauthorized("whatsapp", "X-Hub-Signature-256 does not match", 403)
    return _accept(
        request, source="whatsapp", accept=partial(services.whatsapp_accept, data=data)
    )


@document(**openapi.AISENSY)
@csrf_exempt
@require_POST
def aisensy(request: HttpRequest) -> HttpResponse:
    """Take an AiSensy event; the shared secret comes in ``X-AiSensy-Secret``."""
    given = request.headers.get("X-AiSensy-Secret", "")
    if not given:
        return _unauthorized("aisensy", "X-AiSensy-Secret is missing", 401)
    try:
        channel = channels.aisensy_channel_for_secret(given=given)
    except channels.UnknownChannel as exc:
        return _unauthorized("aisensy", exc.reason, 403)
    except DatabaseError as exc:
        return _unavailable("aisensy", exc)
    return _accept(
        request,
        source="aisensy",
        accept=partial(services.aisensy_accept, channel=channel),
    )


@document(**openapi.PUBSUB_PUSH)
@csrf_exempt
@require_POST
def pubsub_push(request: HttpRequest) -> HttpResponse:
    """Take a Pub/Sub push; 2xx only once the work is enqueued (or rejected)."""
    if settings.PUBSUB_PUSH_AUDIENCE:
        try:
            push_token_verify(authorization=request.headers.get("Authorization", ""))
        except PushAuthError as exc:
            return _unauthorized("pubsub", str(exc), 401)
    return _process(request, source="pubsub", process=pubsub_delivery_process)


_ERROR = {
    "type": "object",
    "properties": {"error": {"type": "string"}},
    "required": ["error"],
}


class ApiSourceView(APIView):
    """``POST /webhooks/api/``: an inbound chat message from a machine client."""

    authentication_classes = [ApiKeyAuthentication]
    permission_classes = [IsAuthenticated]
    # The view reads the raw body (JSON); this tells the schema and the
    # browsable API so.
    parser_classes = [JSONParser]

    @extend_schema(
        operation_id="webhooks_api_receive",
        tags=openapi.TAGS,
        request=InboundMessageSerializer,
        responses={
            202: OpenApiResponse(
                openapi.API_SOURCE_RESULT, description="Accepted for a reply."
            ),
            400: OpenApiResponse(
                _ERROR, description="Malformed or invalid body (recorded as rejected)."
            ),
            503: OpenApiResponse(
                _ERROR,
                description="Broker, Pub/Sub or database unavailable (recorded "
                "as failed); retry with the same message_id after Retry-After "
                "seconds.",
            ),
        },
    )
    def post(self, request: Request) -> HttpResponse:
        raw = request.body
        headers = {**request.headers, TENANT_HEADER: request.user.tenant.slug}
        delivery = services.delivery_record(source="api", body=raw, headers=headers)
        try:
            result = api_delivery_process(delivery=delivery, raw=raw)
        except services.DeliveryRejected as exc:
            return JsonResponse({"error": exc.reason}, status=400)
        except Exception as exc:  # broker, Pub/Sub or database down: retry later
            # Nothing is lost: the message's transaction is undone, or, when
            # it committed and only the enqueue after it failed, the message
            # waits `received`, and a retry with the same message_id once it
            # is REQUEUE_AFTER old enqueues its chain (sooner, a retry counts
            # as a duplicate): Retry-After says when.
            response = _failed(delivery, source="api", exc=exc)
            response["Retry-After"] = str(int(REQUEUE_AFTER.total_seconds()) + 1)
            return response
        return JsonResponse(result, status=202)


api_source = ApiSourceView.as_view()
