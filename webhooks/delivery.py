"""Deliver replies to WhatsApp (Cloud API) and AiSensy: the registered adapters."""

from __future__ import annotations

import logging
from dataclasses import replace

from django.conf import settings

from conversations.delivery import DeliveryError, DeliveryResult
from conversations.models import Message

from .aisensy_client import aisensy_send
from .whatsapp_client import (
    OUTSIDE_WINDOW,
    WhatsAppConfig,
    WhatsAppError,
    send,
    template_body,
    text_body,
)

logger = logging.getLogger(__name__)


def _to(reply: Message) -> str:
    return reply.conversation.external_user_id


def _sent(wamid: str, note: str = "") -> DeliveryResult:
    return DeliveryResult(status="sent", external_id=wamid, error=note)


def _retryable(exc: WhatsAppError) -> DeliveryError:
    return DeliveryError(str(exc), transient=True, retry_after=exc.retry_after)


class WhatsAppDelivery:
    """Send a reply as text through the Cloud API; template outside 24 h."""

    def deliver(self, reply: Message) -> DeliveryResult:
        # A channel account answers with its own token and number.
        account = reply.conversation.account
        config = WhatsAppConfig.from_settings()
        if account is not None:
            config = replace(
                config,
                access_token=account.access_token,
                api_base=(account.api_base or config.api_base).rstrip("/"),
            )
        inbound = reply.reply_to
        phone_id = (
            (inbound.metadata.get("phone_number_id") if inbound else "")
            or (account.phone_number_id if account is not None else "")
            or settings.WHATSAPP_PHONE_NUMBER_ID
        )
        if not config.access_token or not phone_id:
            logger.info("whatsapp_delivery_logged reply=%s (no credentials)", reply.pk)
            return DeliveryResult(
                status="logged", error="WhatsApp credentials not configured"
            )
        try:
            wamid = send(
                config=config,
                phone_number_id=phone_id,
                body=text_body(to=_to(reply), text=reply.content),
            )
        except WhatsAppError as exc:
            if exc.code == OUTSIDE_WINDOW:
                return self._outside_window(reply, config, phone_id, exc)
            if exc.transient:
                raise _retryable(exc) from exc
            raise DeliveryError(str(exc), transient=False) from exc
        return _sent(wamid)

    def _outside_window(
        self, reply: Message, config: WhatsAppConfig, phone_id: str, exc: WhatsAppError
    ) -> DeliveryResult:
        spec = settings.WHATSAPP_FALLBACK_TEMPLATE
        if not spec:
            return DeliveryResult(status="failed", error=str(exc))
        try:
            wamid = send(
                config=config,
                phone_number_id=phone_id,
                body=template_body(to=_to(reply), spec=spec),
            )
        except WhatsAppError as tpl_exc:
            if tpl_exc.transient:
                raise _retryable(tpl_exc) from tpl_exc
            return DeliveryResult(
                status="failed", error=f"{exc}; fallback template failed: {tpl_exc}"
            )
        logger.info("whatsapp_fallback_template reply=%s", reply.pk)
        return _sent(wamid, f"{exc}; sent template {spec.partition(':')[0]} instead")


class AiSensyDelivery:
    """Send a reply as text through AiSensy's direct API."""

    def deliver(self, reply: Message) -> DeliveryResult:
        account = reply.conversation.account
        api_key = (
            settings.AISENSY_API_KEY if account is None else account.aisensy_api_key
        )
        api_base = (account.api_base if account is not None else "") or (
            settings.AISENSY_API_BASE
        )
        if not api_key:
            logger.info("aisensy_delivery_logged reply=%s (no API key)", reply.pk)
            return DeliveryResult(
                status="logged", error="AiSensy API key not configured"
            )
        try:
            external = aisensy_send(
                body=text_body(to=_to(reply), text=reply.content),
                api_key=api_key,
                api_base=api_base,
            )
        except WhatsAppError as exc:
            if exc.code == OUTSIDE_WINDOW or not exc.transient:
                return DeliveryResult(status="failed", error=str(exc))
            raise _retryable(exc) from exc
        return _sent(external)
