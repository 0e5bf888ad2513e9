"""VOC events: one row per event_id, annotated with sentiment and topic."""

from __future__ import annotations

from django.db import models

from vocoeng.models import Tenant


class EventType(models.TextChoices):
    CALL = "call"
    AGENT_ACTION = "agent_action"
    TOOL_INVOCATION = "tool_invocation"
    QOS_METRIC = "qos_metric"


class VocEvent(models.Model):
    """Store a validated voice-of-customer event; ``event_id`` is its identity.

    ``metric`` and ``value`` are denormalised from a qos_metric payload so the
    percentiles of the summary are computed by the database on real columns.
    """

    event_id = models.UUIDField(unique=True)
    # No index of its own: (tenant, ts) and (tenant, event_type, ts) lead with
    # the tenant and serve every lookup by it; a third index would only cost
    # ingest throughput.
    tenant = models.ForeignKey(
        Tenant, on_delete=models.CASCADE, related_name="voc_events", db_index=False
    )
    event_type = models.CharField(max_length=32, choices=EventType.choices)
    ts = models.DateTimeField()
    payload = models.JSONField(default=dict)
    sentiment = models.FloatField(null=True, blank=True)
    # NULL: no topic / not a qos_metric, kept apart from a real "" value.
    topic = models.CharField(max_length=64, null=True, blank=True)  # noqa: DJ001
    metric = models.CharField(max_length=64, null=True, blank=True)  # noqa: DJ001
    value = models.FloatField(null=True, blank=True)
    processed_at = models.DateTimeField()

    class Meta:
        verbose_name = "VOC event"
        indexes = [
            models.Index(fields=["tenant", "ts"], name="vocevent_tenant_ts"),
            models.Index(
                fields=["tenant", "event_type", "ts"], name="vocevent_tenant_type_ts"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.event_type}:{self.event_id}"
