"""Validate inbound chat messages and shape conversations for the API."""

from __future__ import annotations

from rest_framework import serializers

from vocoeng.api import StrictCharField

from .models import Conversation, Message

SOURCES = ("whatsapp", "aisensy", "api", "telegram")


class InboundMessageSerializer(serializers.Serializer):
    """The inbound chat message of ARCHITECTURE.md (topic vocoeng-messages)."""

    source = serializers.ChoiceField(choices=SOURCES, default="api")
    user_id = StrictCharField(max_length=128)
    message = StrictCharField(max_length=8192, trim_whitespace=False)
    timestamp = serializers.DateTimeField(required=False)
    message_id = StrictCharField(max_length=255, required=False)
    metadata = serializers.DictField(required=False, default=dict)

    def validate_message(self, value: str) -> str:
        if not value.strip():
            raise serializers.ValidationError("message is blank")
        return value


class MessageSerializer(serializers.ModelSerializer):
    class Meta:
        model = Message
        fields = [
            "id",
            "conversation",
            "channel",
            "role",
            "content",
            "external_id",
            "status",
            "reply_to",
            "provider",
            "model",
            "prompt_tokens",
            "completion_tokens",
            "total_tokens",
            "cost",
            "processing_time_ms",
            "error",
            "metadata",
            "created_at",
            "updated_at",
        ]


class ConversationSerializer(serializers.ModelSerializer):
    tenant = serializers.SlugRelatedField(slug_field="slug", read_only=True)

    class Meta:
        model = Conversation
        fields = [
            "id",
            "tenant",
            "channel",
            "external_user_id",
            "message_count",
            "last_message",
            "last_response",
            "last_activity",
            "created_at",
        ]
