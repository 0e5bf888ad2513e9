"""Build WhatsApp Cloud API webhook bodies shaped like Meta's, and sign them."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from webhooks.security import whatsapp_signature

APP_SECRET = "test-app-secret"
PHONE_NUMBER_ID = "106540352242922"
DISPLAY_NUMBER = "15550783881"
WABA_ID = "102290129340398"


def wamid() -> str:
    """Return a fresh wamid-looking id."""
    return "wamid.HBgL" + uuid.uuid4().hex.upper()


def text(user: str, body: str, *, id: str | None = None) -> dict[str, Any]:
    return _msg(user, "text", {"text": {"body": body}}, id)


def image(user: str, caption: str = "", *, id: str | None = None) -> dict[str, Any]:
    media = {"mime_type": "image/jpeg", "sha256": "abc=", "id": "1479537139650973"}
    if caption:
        media["caption"] = caption
    return _msg(user, "image", {"image": media}, id)


def media(user: str, kind: str, **fields: Any) -> dict[str, Any]:
    return _msg(user, kind, {kind: {"id": "2222", "mime_type": "x/y", **fields}})


def location(user: str, lat: float, lon: float, **extra: Any) -> dict[str, Any]:
    loc = {"latitude": lat, "longitude": lon, **extra}
    return _msg(user, "location", {"location": loc})


def button_reply(user: str, title: str, reply_id: str = "btn-1") -> dict[str, Any]:
    inter = {"type": "button_reply", "button_reply": {"id": reply_id, "title": title}}
    return _msg(user, "interactive", {"interactive": inter, "context": _ctx()})


def list_reply(user: str, title: str, description: str = "") -> dict[str, Any]:
    row = {"id": "row-1", "title": title, "description": description}
    inter = {"type": "list_reply", "list_reply": row}
    return _msg(user, "interactive", {"interactive": inter, "context": _ctx()})


def contacts(user: str, name: str, phone: str) -> dict[str, Any]:
    card = {
        "name": {"formatted_name": name, "first_name": name.split()[0]},
        "phones": [{"phone": phone, "wa_id": phone.lstrip("+"), "type": "CELL"}],
    }
    return _msg(user, "contacts", {"contacts": [card]})


def reaction(user: str, emoji: str, to: str) -> dict[str, Any]:
    return _msg(user, "reaction", {"reaction": {"message_id": to, "emoji": emoji}})


def unsupported(user: str) -> dict[str, Any]:
    errors = [
        {
            "code": 131051,
            "title": "Message type unknown",
            "message": "Message type unknown",
            "error_data": {"details": "Message type is currently not supported."},
        }
    ]
    return _msg(user, "unsupported", {"errors": errors})


def status(
    id: str, value: str, recipient: str, *, error: tuple[int, str] | None = None
) -> dict[str, Any]:
    item: dict[str, Any] = {
        "id": id,
        "status": value,
        "timestamp": str(int(time.time())),
        "recipient_id": recipient,
    }
    if value in ("sent", "delivered"):
        item["conversation"] = {
            "id": uuid.uuid4().hex,
            "origin": {"type": "service"},
        }
        item["pricing"] = {
            "billable": True,
            "pricing_model": "CBP",
            "category": "service",
        }
    if error:
        code, title = error
        item["errors"] = [
            {
                "code": code,
                "title": title,
                "message": title,
                "error_data": {"details": f"{title} details"},
            }
        ]
    return item


def _ctx() -> dict[str, str]:
    return {"from": DISPLAY_NUMBER, "id": wamid()}


def _msg(user: str, kind: str, fields: dict[str, Any], id: str | None = None) -> dict:
    return {
        "from": user,
        "id": id or wamid(),
        "timestamp": str(int(time.time())),
        "type": kind,
        **fields,
    }


def notification(
    messages: list[dict] = (),  # type: ignore[assignment]
    statuses: list[dict] = (),  # type: ignore[assignment]
    *,
    phone_number_id: str = PHONE_NUMBER_ID,
) -> dict[str, Any]:
    """Wrap messages and statuses in one entry/change, as Meta does."""
    value: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "metadata": {
            "display_phone_number": DISPLAY_NUMBER,
            "phone_number_id": phone_number_id,
        },
    }
    users = sorted({m["from"] for m in messages})
    if users:
        value["contacts"] = [
            {"profile": {"name": f"User {u[-4:]}"}, "wa_id": u} for u in users
        ]
        value["messages"] = list(messages)
    if statuses:
        value["statuses"] = list(statuses)
    return envelope([{"field": "messages", "value": value}])


def envelope(changes: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": WABA_ID, "changes": changes}],
    }


def template_status_update() -> dict[str, Any]:
    value = {
        "event": "APPROVED",
        "message_template_id": 1234567,
        "message_template_name": "order_update",
        "message_template_language": "en_US",
        "reason": "NONE",
    }
    return envelope([{"field": "message_template_status_update", "value": value}])


def account_update() -> dict[str, Any]:
    value = {
        "phone_number": DISPLAY_NUMBER,
        "event": "VERIFIED_ACCOUNT",
    }
    return envelope([{"field": "account_update", "value": value}])


def signed(body: dict[str, Any] | bytes, secret: str = APP_SECRET) -> tuple[bytes, str]:
    """Return the raw body and its X-Hub-Signature-256."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return raw, whatsapp_signature(body=raw, secret=secret)
