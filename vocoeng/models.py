"""Models every app depends on: tenants, their API keys, the bus record."""

from __future__ import annotations

import uuid

from django.db import models


class Tenant(models.Model):
    """Own channels, conversations, runs and events; API keys see one tenant."""

    slug = models.SlugField(unique=True)
    name = models.CharField(max_length=200)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.slug


class ApiKey(models.Model):
    """Authenticate a machine client for one tenant; only a hash is stored."""

    tenant = models.ForeignKey(
        Tenant, on_delete=models.CASCADE, related_name="api_keys"
    )
    name = models.CharField(max_length=200, blank=True)
    prefix = models.CharField(max_length=16, unique=True)
    key_hash = models.CharField(max_length=64)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.tenant.slug}:{self.prefix} ({self.name or 'unnamed'})"


class BusMessage(models.Model):
    """Record a message published on the bus, keyed so a retry publishes once.

    With BUS=direct this table is where responses go (the durable record a
    consumer can read); with BUS=pubsub it also keeps the Pub/Sub message id.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    topic = models.CharField(max_length=255)
    key = models.CharField(max_length=255)
    payload = models.JSONField()
    attributes = models.JSONField(default=dict, blank=True)
    pubsub_message_id = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["topic", "key"], name="busmessage_topic_key"
            )
        ]

    def __str__(self) -> str:
        return f"{self.topic}:{self.key}"


class DeadLetter(models.Model):
    """Record a bus message that can never succeed, with the reason.

    The bridge (and the push endpoint) ack such a message after recording it
    here and publishing it to the dead-letter topic; the admin can replay it.
    """

    source = models.CharField(max_length=32, default="bridge")
    subscription = models.CharField(max_length=255, blank=True)
    message_id = models.CharField(max_length=255)
    kind = models.CharField(max_length=64, blank=True)
    data = models.BinaryField()
    attributes = models.JSONField(default=dict, blank=True)
    reason = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    replayed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["source", "subscription", "message_id"],
                name="deadletter_source_message",
            )
        ]

    def __str__(self) -> str:
        return f"{self.source}:{self.subscription}:{self.message_id}"


class ProcessedMessage(models.Model):
    """Claim a bus message by its dedup key, durably, across bridge replicas.

    The key is the ``idempotency_key`` attribute, else the Pub/Sub message id.
    A claim is ``pending`` while its chain is being enqueued, then ``done`` (or
    ``dead`` when dead-lettered); a second delivery of a done key is a duplicate.
    """

    class State(models.TextChoices):
        PENDING = "pending"
        DONE = "done"
        DEAD = "dead"

    kind = models.CharField(max_length=64)
    key = models.CharField(max_length=255)
    message_id = models.CharField(max_length=255, blank=True)
    state = models.CharField(
        max_length=16, choices=State.choices, default=State.PENDING
    )
    claimed_at = models.DateTimeField()
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["kind", "key"], name="processedmessage_kind_key"
            )
        ]

    def __str__(self) -> str:
        return f"{self.kind}:{self.key} ({self.state})"
