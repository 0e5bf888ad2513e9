"""OpenAPI operations of the webhook views (attached with vocoeng.openapi.document).

The bodies are the senders' formats (Meta, AiSensy, Pub/Sub), so they are
described loosely: what VocoEng reads, with other fields allowed.
"""

from __future__ import annotations

from typing import Any

from vocoeng.openapi import error_responses, json_response

TAGS = ["webhooks"]
DELIVERY_ACCEPTED: dict[str, Any] = {
    "type": "object",
    "description": (
        "The delivery is recorded and queued; a worker acts on it (its verdict "
        "and summary are on the delivery record)."
    ),
    "properties": {
        "status": {"type": "string", "enum": ["ok"]},
        "delivery": {"type": "string", "format": "uuid"},
    },
    "required": ["status", "delivery"],
}

WHATSAPP_NOTIFICATION: dict[str, Any] = {
    "type": "object",
    "description": "A Meta Cloud API notification.",
    "properties": {
        "object": {"type": "string", "enum": ["whatsapp_business_account"]},
        "entry": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "id": {"type": "string"},
                    "changes": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "field": {"type": "string"},
                                "value": {"type": "object"},
                            },
                        },
                    },
                },
            },
        },
    },
    "required": ["object", "entry"],
}

AISENSY_EVENT: dict[str, Any] = {
    "type": "object",
    "description": (
        "An AiSensy event (`message.sender.user` is acted on, other topics are "
        "ignored) or a forwarded Cloud API notification."
    ),
    "properties": {
        "topic": {"type": "string"},
        "data": {
            "type": "object",
            "properties": {
                "message": {
                    "type": "object",
                    "properties": {
                        "messageId": {"type": "string"},
                        "phone_number": {"type": "string"},
                        "message_type": {"type": "string"},
                        "message_content": {"type": "object"},
                    },
                }
            },
        },
    },
}

PUSH_ENVELOPE: dict[str, Any] = {
    "type": "object",
    "properties": {
        "message": {
            "type": "object",
            "properties": {
                "data": {"type": "string", "format": "byte"},
                "attributes": {
                    "type": "object",
                    "additionalProperties": {"type": "string"},
                },
                "messageId": {"type": "string"},
                "publishTime": {"type": "string"},
            },
            "required": ["data"],
        },
        "subscription": {"type": "string"},
    },
    "required": ["message"],
}

PUSH_RESULT: dict[str, Any] = {
    "type": "object",
    "properties": {
        "status": {"type": "string", "enum": ["ok"]},
        "delivery": {"type": "string", "format": "uuid"},
        "message_id": {"type": "string"},
        "kind": {"type": "string", "nullable": True},
        "outcome": {"type": "string", "enum": ["queued", "duplicate", "rejected"]},
        "reason": {"type": "string", "description": "Why it was rejected."},
    },
    "required": ["status", "delivery", "message_id", "kind", "outcome"],
}

API_SOURCE_RESULT: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {
            "type": "string",
            "nullable": True,
            "description": "VocoEng's message id.",
        },
        "message_id": {"type": "string", "description": "The channel's own id."},
        "outcome": {"type": "string"},
        "status": {"type": "string"},
    },
    "required": ["id", "message_id", "outcome", "status"],
}


def _json_body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _text(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"text/plain": {"schema": {"type": "string"}}},
    }


WHATSAPP = {
    "get": {
        "operationId": "webhooks_whatsapp_verify",
        "summary": "Answer Meta's verification handshake",
        "tags": TAGS,
        "security": [{}],
        "parameters": [
            {"name": "hub.mode", "in": "query", "schema": {"enum": ["subscribe"]}},
            *(
                {"name": name, "in": "query", "schema": {"type": "string"}}
                for name in ("hub.verify_token", "hub.challenge")
            ),
        ],
        "responses": {
            "200": _text("The challenge, echoed (mode and token match)."),
            "403": _text("Verification failed."),
        },
    },
    "post": {
        "operationId": "webhooks_whatsapp_receive",
        "summary": "Take a Cloud API notification (signed)",
        "description": (
            "Recorded (committed) and answered; its task is queued right after "
            "(with the broker down, once it is back), then a worker sends its "
            "messages to the bus and moves the sent messages by its statuses. A "
            "signed, well-formed delivery is always 200; 503 only when the "
            "database refuses it."
        ),
        "tags": TAGS,
        "security": [{"whatsappSignature": []}],
        "requestBody": _json_body(WHATSAPP_NOTIFICATION),
        "responses": {
            "200": json_response("Recorded; its task follows.", DELIVERY_ACCEPTED),
            **error_responses(400, 401, 403, 503),
        },
    },
}

AISENSY = {
    "post": {
        "operationId": "webhooks_aisensy_receive",
        "summary": "Take an AiSensy event (shared secret)",
        "tags": TAGS,
        "security": [{"aisensySecret": []}],
        "requestBody": _json_body(AISENSY_EVENT),
        "responses": {
            "200": json_response("Recorded; its task follows.", DELIVERY_ACCEPTED),
            **error_responses(400, 401, 403, 503),
        },
    },
}

PUBSUB_PUSH = {
    "post": {
        "operationId": "webhooks_pubsub_push",
        "summary": "Take a Pub/Sub push delivery",
        "description": (
            "2xx only once the message's work is enqueued or it is rejected for "
            "good (recorded with the reason); 503 makes Pub/Sub redeliver."
        ),
        "tags": TAGS,
        "security": [{"pubsubOidc": []}, {}],
        "requestBody": _json_body(PUSH_ENVELOPE),
        "responses": {
            "200": json_response("Enqueued, a duplicate, or rejected.", PUSH_RESULT),
            **error_responses(400, 401, 503),
        },
    },
}
