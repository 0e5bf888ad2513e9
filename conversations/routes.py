"""Route an inbound chat message (kind ``chat_message``) to the reply chain."""

from __future__ import annotations

import uuid
from typing import Any

from celery import chain
from celery.canvas import Signature

from vocoeng.models import Tenant
from vocoeng.routing import PermanentMessageError
from vocoeng.services import tenant_get_default

from .models import Message
from .serializers import InboundMessageSerializer, errors_text
from .services import message_needs_reply, message_receive


def inbound_validate(data: Any) -> dict[str, Any]:
    """Return the validated inbound message or raise a permanent error."""
    if not isinstance(data, dict):
        raise PermanentMessageError("a chat message must be a JSON object")
    serializer = InboundMessageSerializer(data=data)
    if not serializer.is_valid():
        raise PermanentMessageError(errors_text(serializer.errors))
    return dict(serializer.validated_data)


def inbound_store(*, data: Any, tenant: Tenant | None = None) -> tuple[Message, bool]:
    """Validate and store an inbound chat message, once per message_id."""
    valid = inbound_validate(data)
    return message_receive(
        tenant=tenant or tenant_get_default(),
        channel=valid["source"],
        user_id=valid["user_id"],
        text=valid["message"],
        external_id=valid.get("message_id") or f"gen-{uuid.uuid4()}",
        timestamp=valid.get("timestamp"),
        metadata=valid.get("metadata") or {},
    )


def reply_chain(message: Message) -> Signature:
    """Build the reply chain for a stored inbound message."""
    from .tasks import reply_deliver, reply_generate, reply_publish

    return chain(
        reply_generate.si(str(message.pk)), reply_publish.s(), reply_deliver.s()
    )


def chat_message(*, data: Any, attributes: dict[str, str]) -> Signature | None:
    """Store the message and return its reply chain; None for a duplicate."""
    tenant = None
    if slug := attributes.get("tenant"):
        tenant = Tenant.objects.filter(slug=slug).first()
        if tenant is None:
            raise PermanentMessageError(f"unknown tenant {slug!r}")
    message, _created = inbound_store(data=data, tenant=tenant)
    if not message_needs_reply(message):
        return None
    return reply_chain(message)
