"""Parse WhatsApp Cloud API and AiSensy webhook bodies into plain items.

A Meta notification holds entries, each with changes; a change of field
``messages`` holds messages (from several users) and/or statuses. Every other
field (template status, quality, account updates, calls, ...) is counted and
ignored. Nothing here touches the database.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

# The inbound serializer's limit; longer texts are cut rather than rejected.
MAX_TEXT = 8192
MEDIA_TYPES = ("image", "audio", "video", "document", "sticker")
STATUS_VALUES = ("sent", "delivered", "read", "failed")


class NotANotification(ValueError):
    """Reject a body that is not a notification of the expected kind."""


@dataclass
class InboundItem:
    """One user message: its id, sender, the text the model sees, and facts."""

    message_id: str
    user_id: str
    text: str
    type: str
    timestamp: str | None = None
    replyable: bool = True  # False: store without an AI call (reactions, unknown)
    metadata: dict[str, Any] = field(default_factory=dict)

    def payload(self, *, source: str, received_at: str) -> dict[str, Any]:
        """Return the inbound chat message of ARCHITECTURE.md for this item."""
        data: dict[str, Any] = {
            "source": source,
            "user_id": self.user_id,
            "message": self.text,
            "message_id": self.message_id,
            "metadata": {
                **self.metadata,
                "type": self.type,
                "received_at": received_at,
            },
        }
        if self.timestamp:
            data["timestamp"] = self.timestamp
        return data


@dataclass
class StatusItem:
    """One status update of a message we sent."""

    message_id: str
    status: str
    recipient_id: str = ""
    timestamp: str | None = None
    error: str = ""


@dataclass
class Notification:
    """What a delivery holds: messages, statuses, and what was skipped and why."""

    messages: list[InboundItem] = field(default_factory=list)
    statuses: list[StatusItem] = field(default_factory=list)
    ignored: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def ignore(self, what: str) -> None:
        self.ignored[what] = self.ignored.get(what, 0) + 1


def _ts(value: Any) -> str | None:
    try:
        return datetime.fromtimestamp(int(value), tz=UTC).isoformat()
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def _cut(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    # Not ``value or []``: a stray ``true`` or ``5`` is not iterable.
    return value if isinstance(value, list) else []


def _describe(kind: str, body: dict[str, Any]) -> tuple[str, dict[str, Any], bool]:
    """Return (text for the model, metadata, replyable) of one message body."""
    if kind == "text":
        return str(_obj(body.get("text")).get("body") or ""), {}, True
    if kind == "interactive":
        inter = _obj(body.get("interactive"))
        sub = str(inter.get("type") or "")
        choice = _obj(inter.get(sub))
        meta = {"interactive": sub, "reply_id": choice.get("id", "")}
        title = str(choice.get("title") or "")
        if choice.get("description"):
            title = f"{title} ({choice['description']})"
        if sub in ("button_reply", "list_reply") and title:
            return title, meta, True
        return f"[interactive: {sub or 'unknown'}]", meta, False
    if kind == "button":  # a quick-reply button of a template
        button = _obj(body.get("button"))
        text = str(button.get("text") or "")
        return text or "[button]", {"payload": button.get("payload", "")}, bool(text)
    if kind in MEDIA_TYPES:
        media = _obj(body.get(kind))
        meta = {
            "media_id": media.get("id", ""),
            "mime_type": media.get("mime_type", ""),
        }
        if media.get("filename"):
            meta["filename"] = media["filename"]
        label = str(media.get("caption") or media.get("filename") or "")
        return (f"[{kind}: {label}]" if label else f"[{kind}]"), meta, True
    if kind == "location":
        loc = _obj(body.get("location"))
        lat, lon = loc.get("latitude"), loc.get("longitude")
        meta = {
            k: loc[k] for k in ("latitude", "longitude", "name", "address") if k in loc
        }
        place = ", ".join(str(loc[k]) for k in ("name", "address") if loc.get(k))
        text = f"[location: {lat}, {lon}]" + (f" {place}" if place else "")
        return text, meta, True
    if kind == "contacts":
        people = []
        for contact in _list(body.get("contacts")):
            contact = _obj(contact)
            name = str(_obj(contact.get("name")).get("formatted_name") or "")
            phones = [
                str(_obj(p).get("phone") or "") for p in _list(contact.get("phones"))
            ]
            people.append(" ".join(x for x in [name, *phones] if x))
        return f"[contacts: {'; '.join(people)}]", {"count": len(people)}, True
    if kind == "reaction":
        reaction = _obj(body.get("reaction"))
        meta = {
            "emoji": reaction.get("emoji", ""),
            "reacted_to": reaction.get("message_id", ""),
        }
        return f"[reaction: {reaction.get('emoji', '')}]", meta, False
    return f"[{kind or 'unknown'}]", {}, False


def _message(
    raw: Any, value: dict[str, Any], names: dict[str, str], out: Notification
) -> None:
    msg = _obj(raw)
    wamid, sender = msg.get("id"), msg.get("from")
    if not isinstance(wamid, str) or not wamid or not isinstance(sender, str):
        out.problems.append("a message without id or from was skipped")
        return
    kind = str(msg.get("type") or "unknown")
    text, meta, replyable = _describe(kind, msg)
    if not text.strip():
        text, replyable = f"[{kind}: empty]", False
    phone = _obj(value.get("metadata"))
    meta.update(
        {
            "phone_number_id": str(phone.get("phone_number_id") or ""),
            "display_phone_number": str(phone.get("display_phone_number") or ""),
        }
    )
    if sender in names:
        meta["profile_name"] = names[sender]
    if context := _obj(msg.get("context")):
        meta["context_id"] = context.get("id", "")
    if msg.get("errors"):
        meta["errors"] = msg["errors"]
    out.messages.append(
        InboundItem(
            message_id=wamid,
            user_id=sender,
            text=_cut(text),
            type=kind,
            timestamp=_ts(msg.get("timestamp")),
            replyable=replyable,
            metadata=meta,
        )
    )


def _status(raw: Any, out: Notification) -> None:
    item = _obj(raw)
    wamid, status = item.get("id"), item.get("status")
    if not isinstance(wamid, str) or status not in STATUS_VALUES:
        out.ignore(f"status:{status}")
        return
    error = ""
    for err in _list(item.get("errors")):
        err = _obj(err)
        details = _obj(err.get("error_data")).get("details") or err.get("message") or ""
        error = f"{err.get('code')} {err.get('title', '')}".strip()
        if details:
            error = f"{error}: {details}"
    out.statuses.append(
        StatusItem(
            message_id=wamid,
            status=status,
            recipient_id=str(item.get("recipient_id") or ""),
            timestamp=_ts(item.get("timestamp")),
            error=error,
        )
    )


def whatsapp_notification_check(body: Any) -> list:
    """Return a Cloud API notification's entries; raise NotANotification,
    with the reason, when the body is not one.

    What decides 200 or 400 for a WhatsApp delivery: past these checks
    :func:`parse_whatsapp` takes any shape (what it does not know it
    ignores or stores as unknown), so the webhook checks only this and the
    worker parses.
    """
    if not isinstance(body, dict):
        raise NotANotification("body is not a JSON object")
    if body.get("object") != "whatsapp_business_account":
        raise NotANotification(
            f"object is {body.get('object')!r}, not 'whatsapp_business_account'"
        )
    entries = body.get("entry")
    if not isinstance(entries, list):
        raise NotANotification("entry is missing or not a list")
    return entries


def parse_whatsapp(body: Any) -> Notification:
    """Parse a Cloud API notification; raise NotANotification when it is not one."""
    entries = whatsapp_notification_check(body)
    out = Notification()
    for entry in entries:
        for change in _list(_obj(entry).get("changes")):
            change = _obj(change)
            name, value = str(change.get("field") or ""), _obj(change.get("value"))
            if name != "messages":
                out.ignore(f"field:{name}")
                continue
            names = {
                str(c.get("wa_id")): str(_obj(c.get("profile")).get("name") or "")
                for c in map(_obj, _list(value.get("contacts")))
            }
            for msg in _list(value.get("messages")):
                _message(msg, value, names, out)
            for status in _list(value.get("statuses")):
                _status(status, out)
            if not value.get("messages") and not value.get("statuses"):
                out.ignore("field:messages:other")
    return out


def whatsapp_phone_number_ids(body: Any) -> set[str]:
    """Return the business numbers (``metadata.phone_number_id``) a body is for.

    Tolerant of any shape: what is not a notification names no number.
    """
    ids: set[str] = set()
    for entry in _list(_obj(body).get("entry")):
        for change in _list(_obj(entry).get("changes")):
            phone = _obj(_obj(_obj(change).get("value")).get("metadata")).get(
                "phone_number_id"
            )
            if isinstance(phone, str | int) and not isinstance(phone, bool):
                if text := str(phone).strip():
                    ids.add(text[:64])
    return ids


def parse_aisensy(body: Any) -> Notification:
    """Parse an AiSensy webhook: its event envelope or a forwarded Cloud API body.

    AiSensy posts ``{"topic": "message.sender.user", "data": {"message": {...}}}``
    for a user's message (``phone_number``, ``message_type``,
    ``message_content``); other topics (status and campaign events) are ignored.
    Projects on AiSensy's direct (Cloud API) plan forward Meta's own body.
    """
    if isinstance(body, dict) and body.get("object") == "whatsapp_business_account":
        return parse_whatsapp(body)
    if not isinstance(body, dict) or not isinstance(body.get("topic"), str):
        raise NotANotification("body is not an AiSensy event (no topic)")
    out = Notification()
    if body["topic"] != "message.sender.user":
        out.ignore(f"topic:{body['topic']}")
        return out
    msg = _obj(_obj(body.get("data")).get("message"))
    wamid = msg.get("messageId") or msg.get("id")
    sender = msg.get("phone_number") or msg.get("userNumber")
    if not isinstance(wamid, str) or not isinstance(sender, str) or not wamid:
        raise NotANotification("message.sender.user without message id or phone")
    kind = str(msg.get("message_type") or "text").lower()
    content = _obj(msg.get("message_content"))
    # AiSensy mirrors the Cloud API bodies under message_content, except that
    # a text is {"text": "..."} rather than {"body": "..."}.
    if kind == "text":
        content = {"body": content.get("text") or content.get("body") or ""}
    text, meta, replyable = _describe(kind, {kind: content})
    if not text.strip():
        text, replyable = f"[{kind}: empty]", False
    out.messages.append(
        InboundItem(
            message_id=wamid,
            user_id="".join(ch for ch in sender if ch.isdigit()) or sender,
            text=_cut(text),
            type=kind,
            timestamp=None,
            replyable=replyable,
            metadata={**meta, "aisensy_topic": body["topic"]},
        )
    )
    return out
