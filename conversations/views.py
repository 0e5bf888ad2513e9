"""``POST /process``: run one message through the reply path synchronously."""

from __future__ import annotations

import logging

from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from vocoeng.openapi import document
from vocoeng.pubsub import PubSubError
from vocoeng.routing import PermanentMessageError, decode_json

from . import openapi
from .models import Message
from .routes import inbound_store
from .services import reply_finish_sync, reply_process_sync, response_build

logger = logging.getLogger(__name__)


@document(**openapi.PROCESS)
@csrf_exempt
@require_POST
def process(request: HttpRequest) -> JsonResponse:
    """Store the inbound message, answer it in-process, return the response.

    The same message_id again returns the stored response without a new model
    call. For testing and demos; production traffic goes through the webhooks.
    """
    try:
        message, _created = inbound_store(data=decode_json(request.body))
    except PermanentMessageError as exc:
        return JsonResponse({"error": exc.reason}, status=400)
    reply = Message.objects.filter(reply_to=message).first()
    try:
        if reply is None:
            if message.status not in (Message.Status.RECEIVED, Message.Status.FAILED):
                return JsonResponse(
                    {"error": "message is being processed", "status": message.status},
                    status=409,
                )
            if message.status == Message.Status.FAILED:
                Message.objects.filter(pk=message.pk).update(
                    status=Message.Status.RECEIVED
                )
            reply = reply_process_sync(message=message)
        else:  # answered before: finish what that request left undone, if any
            reply = reply_finish_sync(reply=reply)
    except PubSubError as exc:
        # The reply is stored: the same message_id again publishes it (once)
        # and returns it, with no second model call.
        logger.warning("process_unavailable message=%s error=%s", message.pk, exc)
        return JsonResponse(
            {"error": "temporarily unavailable, retry", "reason": str(exc)},
            status=503,
            headers={"Retry-After": "5"},
        )
    if reply is None:
        message.refresh_from_db()
        return JsonResponse(
            {"error": "the AI reply failed", "reason": message.error}, status=502
        )
    return JsonResponse(response_build(reply=reply))
