"""Record every inbound webhook delivery, raw, so it can be audited and replayed."""

from __future__ import annotations

from django.db import models
from django.utils import timezone

from conversations.models import Message
from vocoeng.ids import uuid7


class WebhookDelivery(models.Model):
    """Keep one HTTP delivery as received, with what became of it."""

    class Source(models.TextChoices):
        WHATSAPP = "whatsapp"
        AISENSY = "aisensy"
        API = "api"
        PUBSUB = "pubsub"

    class Verdict(models.TextChoices):
        RECEIVED = "received"  # recorded, not processed yet
        PROCESSED = "processed"  # acted on (some parts may have been ignored)
        IGNORED = "ignored"  # well-formed, nothing VocoEng acts on
        REJECTED = "rejected"  # malformed or invalid: answered 4xx / dead-lettered
        UNAUTHORIZED = "unauthorized"  # bad or missing signature / credentials
        FAILED = "failed"  # our side failed (DB, broker): answered 5xx, retried

    # Time-ordered: new rows go to the right edge of the index (vocoeng.ids).
    id = models.UUIDField(primary_key=True, default=uuid7, editable=False)
    source = models.CharField(max_length=16, choices=Source.choices)
    # Set by the caller (not auto_now_add): the messages a delivery holds carry
    # the same received_at, written in the same transaction.
    received_at = models.DateTimeField(
        default=timezone.now, editable=False, db_index=True
    )
    headers = models.JSONField(default=dict, blank=True)
    body = models.TextField(blank=True)
    # Indexed in Meta (the admin's filter of failed or rejected ones, the
    # sweep's of those still received): db_index on PostgreSQL adds a second,
    # pattern-ops index for LIKE, which no query of verdict uses and which
    # cost every delivery's INSERT and its processing's UPDATE one more entry.
    verdict = models.CharField(
        max_length=16, choices=Verdict.choices, default=Verdict.RECEIVED
    )
    error = models.TextField(blank=True)
    summary = models.JSONField(default=dict, blank=True)
    processed_at = models.DateTimeField(null=True, blank=True)
    replays = models.PositiveIntegerField(default=0)

    class Meta:
        verbose_name_plural = "webhook deliveries"
        ordering = ["-received_at"]
        indexes = [
            models.Index(fields=["source", "verdict"]),
            models.Index(fields=["verdict"], name="webhookdelivery_verdict"),
        ]

    def __str__(self) -> str:
        return f"{self.source} {self.received_at:%Y-%m-%d %H:%M:%S} {self.verdict}"


class InboundMessage(Message):
    """Show users' messages in the admin (a proxy of conversations.Message)."""

    class Meta:
        proxy = True
        verbose_name = "inbound message"


class OutboundMessage(Message):
    """Show replies and their delivery status in the admin (a proxy)."""

    class Meta:
        proxy = True
        verbose_name = "outbound message"
