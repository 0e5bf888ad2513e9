"""OpenAPI operation of ``POST /process`` (attached with vocoeng.openapi.document)."""

from __future__ import annotations

from typing import Any

from vocoeng.openapi import error_responses, json_response

_USAGE = {
    "type": "object",
    "properties": {
        name: {"type": "integer"}
        for name in ("prompt_tokens", "completion_tokens", "total_tokens")
    },
}

CHAT_RESPONSE: dict[str, Any] = {
    "type": "object",
    "description": "The response of topic vocoeng-responses.",
    "properties": {
        "message_id": {"type": "string", "description": "VocoEng's inbound id."},
        "external_message_id": {"type": "string"},
        "user_id": {"type": "string"},
        "original_message": {"type": "string"},
        "ai_response": {
            "type": "object",
            "properties": {
                "response": {"type": "string"},
                "model": {"type": "string"},
                "usage": _USAGE,
                "metadata": {"type": "object"},
            },
            "required": ["response", "model", "usage", "metadata"],
        },
        "processing_time_ms": {"type": "integer", "nullable": True},
        "timestamp": {"type": "string", "format": "date-time"},
        "metadata": {
            "type": "object",
            "properties": {"source": {"type": "string"}},
            "required": ["source"],
        },
    },
    "required": [
        "message_id",
        "external_message_id",
        "user_id",
        "original_message",
        "ai_response",
        "timestamp",
        "metadata",
    ],
}

PROCESS = {
    "post": {
        "operationId": "process",
        "summary": "Answer one message synchronously (testing and demos)",
        "description": (
            "Stores the inbound message and runs the reply path in-process. The "
            "same message_id again returns the stored response, without a new "
            "model call."
        ),
        "tags": ["process"],
        "security": [{}],
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"$ref": "#/components/schemas/InboundMessageRequest"}
                }
            },
        },
        "responses": {
            "200": json_response("The reply.", CHAT_RESPONSE),
            **error_responses(400, 409, 502, 503),
        },
    }
}
