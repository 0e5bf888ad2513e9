"""Models every app depends on: tenants, their API keys, the bus record."""

from __future__ import annotations

import uuid

from django.core.exceptions import ValidationError
from django.db import models

from .fields import EncryptedTextField
from .limits import rate_limit_parse


class Tenant(models.Model):
    """Own channels, conversations, runs and events; API keys see one tenant."""

    slug = models.SlugField(unique=True)
    name = models.CharField(max_length=200)
    monthly_budget = models.DecimalField(
        max_digits=12,
        decimal_places=2,
        null=True,
        blank=True,
        help_text="AI spend allowed per calendar month (UTC), in the currency of "
        "AI_PRICES (USD by default). Empty: no limit.",
    )
    daily_token_cap = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Most model tokens one conversation may use per day (UTC). "
        "Empty: no cap.",
    )
    over_budget_text = models.TextField(
        blank=True,
        help_text="Sent instead of a model reply when the budget or the cap is "
        "used up. Empty: the message is stored and marked, nothing is sent.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.slug


class Channel(models.Model):
    """A tenant's WhatsApp number, AiSensy account or API source, with its agent.

    Secrets are stored encrypted (FIELD_ENCRYPTION_KEY). Empty agent settings
    fall back to the environment's (AI_SYSTEM_PROMPT, AI_PROVIDER, ...); the
    environment's ``WHATSAPP_*`` / ``AISENSY_*`` variables are the default
    channel of the default tenant, which needs no row here.
    """

    class Kind(models.TextChoices):
        WHATSAPP = "whatsapp", "WhatsApp Cloud API number"
        AISENSY = "aisensy", "AiSensy account"
        API = "api", "API source"

    tenant = models.ForeignKey(
        Tenant, on_delete=models.PROTECT, related_name="channels"
    )
    name = models.CharField(max_length=200)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    is_active = models.BooleanField(default=True)
    # WhatsApp Cloud API
    phone_number_id = models.CharField(  # NULL: unique only when set
        max_length=64,
        null=True,
        blank=True,
        unique=True,
        help_text="Meta's phone number id: deliveries are matched by "
        "metadata.phone_number_id.",
    )
    access_token = EncryptedTextField()
    app_secret = EncryptedTextField(
        help_text="Meta app secret: X-Hub-Signature-256 is checked with it."
    )
    verify_token = EncryptedTextField()
    # AiSensy
    aisensy_webhook_secret = EncryptedTextField(
        verbose_name="AiSensy webhook secret",
        help_text="Deliveries whose X-AiSensy-Secret equals it belong here.",
    )
    aisensy_api_key = EncryptedTextField(verbose_name="AiSensy API key")
    api_base = models.URLField(
        blank=True,
        help_text="Graph API / AiSensy API base URL; empty: the environment's.",
    )
    # Agent
    system_prompt = models.TextField(blank=True, help_text="Empty: AI_SYSTEM_PROMPT.")
    providers = models.JSONField(
        default=list,
        blank=True,
        help_text='Provider order, e.g. ["openai", "anthropic"]. Empty: '
        "AI_PROVIDER then AI_FALLBACK.",
    )
    provider_models = models.JSONField(
        default=dict,
        blank=True,
        help_text='Model per provider, e.g. {"openai": "gpt-4o-mini"}. Missing: '
        "OPENAI_MODEL / ANTHROPIC_MODEL.",
    )
    history_length = models.PositiveSmallIntegerField(
        null=True, blank=True, help_text="Empty: AI_HISTORY_MESSAGES."
    )
    tools = models.JSONField(
        default=list,
        blank=True,
        help_text='Names of the tools the agent may call, e.g. ["current_time"].',
    )
    rate_limit = models.CharField(
        max_length=32,
        blank=True,
        help_text='Messages per sender, like "20/min" or "off". Empty: '
        "AI_USER_RATE_LIMIT.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["tenant_id", "id"]

    def __str__(self) -> str:
        return f"{self.tenant.slug}/{self.name} ({self.kind})"

    def clean(self) -> None:
        errors: dict[str, str] = {}
        if self.phone_number_id == "":
            self.phone_number_id = None
        if self.kind == self.Kind.WHATSAPP:
            if not self.phone_number_id:
                errors["phone_number_id"] = "A WhatsApp channel needs its number id."
            if not self.app_secret and not self.pk:
                errors["app_secret"] = "Needed to verify Meta's signatures."  # noqa: S105
        elif self.phone_number_id:
            errors["phone_number_id"] = "Only WhatsApp channels have a number id."
        if self.kind == self.Kind.AISENSY and not self.aisensy_webhook_secret:
            if not self.pk:
                errors["aisensy_webhook_secret"] = "Needed to match deliveries."  # noqa: S105
        if not isinstance(self.providers, list) or not all(
            isinstance(p, str) and p in ("openai", "anthropic", "echo")
            for p in self.providers
        ):
            errors["providers"] = 'A list of "openai", "anthropic", "echo".'
        if not isinstance(self.provider_models, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and v
            for k, v in self.provider_models.items()
        ):
            errors["provider_models"] = 'An object like {"openai": "gpt-4o-mini"}.'
        if not isinstance(self.tools, list) or not all(
            isinstance(t, str) and t for t in self.tools
        ):
            errors["tools"] = "A list of tool names."
        try:
            rate_limit_parse(self.rate_limit)
        except ValueError:
            errors["rate_limit"] = 'Like "20/min", "100/hour" or "off".'
        if errors:
            raise ValidationError(errors)


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
