"""Shape analytics requests and responses (validation of events is in schemas)."""

from __future__ import annotations

from django.conf import settings
from rest_framework import serializers

from .models import VocEvent


class EventBatchSerializer(serializers.Serializer):
    """The body of ``POST /api/v1/analytics/events/``: ``{"events": [...]}``."""

    events = serializers.ListField(child=serializers.JSONField(), allow_empty=False)

    def validate_events(self, value: list) -> list:
        limit = settings.VOC_MAX_BATCH
        if len(value) > limit:
            raise serializers.ValidationError(
                f"at most {limit} events per request (got {len(value)})"
            )
        return value


class SummaryQuerySerializer(serializers.Serializer):
    days = serializers.IntegerField(min_value=1, max_value=366, default=7)
    tenant_id = serializers.CharField(required=False, max_length=50)


class VocEventSerializer(serializers.ModelSerializer):
    tenant_id = serializers.SlugRelatedField(
        source="tenant", slug_field="slug", read_only=True
    )
    timestamp = serializers.DateTimeField(source="ts", read_only=True)

    class Meta:
        model = VocEvent
        fields = [
            "event_id",
            "tenant_id",
            "event_type",
            "timestamp",
            "payload",
            "sentiment",
            "topic",
            "processed_at",
        ]
        read_only_fields = fields
