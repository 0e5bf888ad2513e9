"""Talk to AiSensy's send API (its Cloud API pass-through): the only module that does.

AiSensy's direct API takes the Cloud API message body at
``POST {AISENSY_API_BASE}/direct-apis/t1/messages`` with the project's API key
as bearer token and answers like the Graph API, so errors map the same way.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings

from .whatsapp_client import WhatsAppConfig, send

DIRECT_PATH = "/direct-apis/t1/messages"


def aisensy_send(
    *, body: dict[str, Any], api_key: str | None = None, api_base: str | None = None
) -> str:
    """Send one message through AiSensy and return its id; raise WhatsAppError.

    ``api_key`` / ``api_base`` are a channel account's; the environment's
    AISENSY_API_KEY / AISENSY_API_BASE otherwise.
    """
    base = (api_base or settings.AISENSY_API_BASE).rstrip("/") + DIRECT_PATH
    config = WhatsAppConfig(
        api_base=base.rsplit("/", 2)[0],
        access_token=settings.AISENSY_API_KEY if api_key is None else api_key,
        timeout=settings.WHATSAPP_TIMEOUT_SECONDS,
    )
    # send() appends "/{id}/messages": the direct path ends ".../t1/messages".
    return send(config=config, phone_number_id="t1", body=body)
