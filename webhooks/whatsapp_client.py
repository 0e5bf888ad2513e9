"""Talk to the WhatsApp Cloud (Graph) API: the only module that calls it.

Errors are split the way the delivery task needs them: transient (429, 5xx,
throughput and pair rate limits, a connection that never reached Meta) are
retried; the rest are permanent. A request that may have reached Meta
(read timeout, dropped connection) is permanent too: retrying it could send
the reply twice, and the Cloud API has no idempotency key.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import httpx
from django.conf import settings

logger = logging.getLogger(__name__)

# Graph error codes worth another try: throughput, pair rate limit, temporary
# service errors, Meta's generic "API unknown/service/too many calls".
TRANSIENT_CODES = frozenset({1, 2, 4, 17, 341, 80007, 130429, 131000, 131016, 131056})
OUTSIDE_WINDOW = 131047
MAX_TEXT = 4096


class WhatsAppError(Exception):
    """A send failed; ``code`` is Graph's error code when it gave one."""

    def __init__(
        self,
        message: str,
        *,
        transient: bool,
        code: int | None = None,
        http_status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.transient = transient
        self.code = code
        self.http_status = http_status
        self.retry_after = retry_after


@dataclass(frozen=True)
class WhatsAppConfig:
    """Where and as whom to send."""

    api_base: str
    access_token: str
    timeout: float = 10.0

    @classmethod
    def from_settings(cls) -> WhatsAppConfig:
        return cls(
            api_base=settings.WHATSAPP_API_BASE.rstrip("/"),
            access_token=settings.WHATSAPP_ACCESS_TOKEN,
            timeout=settings.WHATSAPP_TIMEOUT_SECONDS,
        )


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return max(0.0, float(response.headers["Retry-After"]))
    except (KeyError, ValueError):
        return None


def _error(response: httpx.Response) -> WhatsAppError:
    try:
        error = response.json().get("error") or {}
    except ValueError:
        error = {}
    code = error.get("code") if isinstance(error.get("code"), int) else None
    details = (error.get("error_data") or {}).get("details") or ""
    text = f"{code} {error.get('message') or response.reason_phrase}".strip()
    if details:
        text = f"{text}: {details}"
    transient = (
        response.status_code == 429
        or response.status_code >= 500
        or code in TRANSIENT_CODES
    )
    return WhatsAppError(
        f"WhatsApp HTTP {response.status_code}: {text}",
        transient=transient,
        code=code,
        http_status=response.status_code,
        retry_after=_retry_after(response),
    )


def send(*, config: WhatsAppConfig, phone_number_id: str, body: dict[str, Any]) -> str:
    """POST one message and return its wamid; raise WhatsAppError on failure."""
    url = f"{config.api_base}/{phone_number_id}/messages"
    timeout = httpx.Timeout(config.timeout, connect=min(5.0, config.timeout))
    try:
        response = httpx.post(
            url,
            json={"messaging_product": "whatsapp", **body},
            headers={"Authorization": f"Bearer {config.access_token}"},
            timeout=timeout,
        )
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
        raise WhatsAppError(f"WhatsApp unreachable: {exc}", transient=True) from exc
    except httpx.HTTPError as exc:
        raise WhatsAppError(
            f"WhatsApp outcome unknown ({type(exc).__name__}); not retried to "
            "avoid a duplicate send",
            transient=False,
        ) from exc
    if response.status_code != 200:
        raise _error(response)
    try:
        return str(response.json()["messages"][0]["id"])
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise WhatsAppError(
            "WhatsApp answered 200 without a message id", transient=False
        ) from exc


def text_body(*, to: str, text: str) -> dict[str, Any]:
    """Return a text message body; Meta caps text at 4096 characters."""
    if len(text) > MAX_TEXT:
        logger.warning("whatsapp_text_truncated chars=%s", len(text))
        text = text[: MAX_TEXT - 1] + "…"
    return {
        "recipient_type": "individual",
        "to": to,
        "type": "text",
        "text": {"preview_url": False, "body": text},
    }


def template_body(*, to: str, spec: str) -> dict[str, Any]:
    """Return a template message body from ``name`` or ``name:language``."""
    name, _, language = spec.partition(":")
    return {
        "to": to,
        "type": "template",
        "template": {"name": name, "language": {"code": language or "en_US"}},
    }
