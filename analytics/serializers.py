"""Shape analytics requests and responses (validation of events is in schemas)."""

from __future__ import annotations

from django.conf import settings
from drf_spectacular.utils import extend_schema_serializer
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


# Response shapes of the API, for the OpenAPI schema (the views return dicts).
class IngestErrorSerializer(serializers.Serializer):
    index = serializers.IntegerField()
    event_id = serializers.CharField(allow_null=True)
    reason = serializers.CharField()


class IngestResultSerializer(serializers.Serializer):
    accepted = serializers.IntegerField()
    rejected = serializers.IntegerField()
    errors = IngestErrorSerializer(many=True)


class TypeTotalSerializer(serializers.Serializer):
    count = serializers.IntegerField()
    avg_sentiment = serializers.FloatField(allow_null=True)


class DailyRowSerializer(TypeTotalSerializer):
    date = serializers.DateField()
    event_type = serializers.CharField()


class QosSerializer(serializers.Serializer):
    p50 = serializers.FloatField(allow_null=True)
    p95 = serializers.FloatField(allow_null=True)


@extend_schema_serializer(many=False)  # one summary, though served by ``list``
class SummarySerializer(serializers.Serializer):
    tenant_id = serializers.CharField(allow_null=True)
    days = serializers.IntegerField()
    by_type = serializers.DictField(child=TypeTotalSerializer())
    daily = DailyRowSerializer(many=True)
    qos = serializers.DictField(child=QosSerializer())
