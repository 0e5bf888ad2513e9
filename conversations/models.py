"""Conversations, their messages, and the ledger of every AI call attempt."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models

from vocoeng.fields import EncryptedTextField
from vocoeng.ids import uuid7
from vocoeng.models import Channel, Tenant


class Conversation(models.Model):
    """Group the messages of one external user on one channel of a tenant."""

    tenant = models.ForeignKey(
        Tenant, on_delete=models.PROTECT, related_name="conversations"
    )
    channel = models.CharField(max_length=32)
    # The tenant's channel (number, account, API source) the user talks to;
    # NULL: the environment's default channel.
    account = models.ForeignKey(
        Channel,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="conversations",
        verbose_name="channel account",
    )
    external_user_id = models.CharField(max_length=128)
    message_count = models.PositiveIntegerField(default=0)
    last_message = models.TextField(blank=True)
    last_response = models.TextField(blank=True)
    # Not indexed: every message moves it, and an index on it made each of
    # those updates a new row version in every index of the table (no HOT
    # update): ~20% of PostgreSQL's CPU on the bridge's chat route. The
    # conversations API sorts a tenant's rows by it instead.
    last_activity = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            # One conversation per user on the default channel of a tenant, and
            # one per user on each channel account.
            models.UniqueConstraint(
                fields=["tenant", "channel", "external_user_id"],
                condition=models.Q(account__isnull=True),
                name="conversation_unique_user",
            ),
            models.UniqueConstraint(
                fields=["account", "external_user_id"],
                condition=models.Q(account__isnull=False),
                name="conversation_unique_account_user",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.channel}:{self.external_user_id}"


class Message(models.Model):
    """Store one inbound (user) or outbound (assistant) message."""

    class Role(models.TextChoices):
        USER = "user"
        ASSISTANT = "assistant"

    class Status(models.TextChoices):
        # inbound
        RECEIVED = "received"
        PROCESSING = "processing"
        REPLIED = "replied"
        FAILED = "failed"
        RATE_LIMITED = "rate_limited"
        OVER_BUDGET = "over_budget"
        IGNORED = "ignored"
        # outbound
        PENDING = "pending"
        SENDING = "sending"
        SENT = "sent"
        DELIVERED = "delivered"
        READ = "read"
        LOGGED = "logged"

    # Time-ordered: new rows go to the right edge of the index (vocoeng.ids).
    id = models.UUIDField(primary_key=True, default=uuid7, editable=False)
    # No index of its own: the (conversation, created_at) index below serves
    # every lookup by conversation, and each index costs every message insert.
    conversation = models.ForeignKey(
        Conversation, on_delete=models.CASCADE, related_name="messages", db_index=False
    )
    channel = models.CharField(max_length=32)
    role = models.CharField(max_length=16, choices=Role.choices)
    content = models.TextField(blank=True)
    # NULL, not "", for messages without a channel id: the unique constraint
    # on (channel, external_id) must not treat them as equal.
    external_id = models.CharField(max_length=255, null=True, blank=True)  # noqa: DJ001
    # Indexed in Meta: db_index on PostgreSQL adds a second, pattern-ops
    # index for LIKE, which no query of status uses.
    status = models.CharField(max_length=16, choices=Status.choices)
    reply_to = models.OneToOneField(
        "self",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="reply",
    )
    provider = models.CharField(max_length=32, blank=True)
    model = models.CharField(max_length=128, blank=True)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    total_tokens = models.PositiveIntegerField(default=0)
    cost = models.DecimalField(max_digits=12, decimal_places=6, default=0)
    processing_time_ms = models.PositiveIntegerField(null=True, blank=True)
    error = models.TextField(blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    processing_started_at = models.DateTimeField(null=True, blank=True)
    published_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["created_at"]
        indexes = [
            models.Index(fields=["conversation", "created_at"]),
            models.Index(fields=["status"], name="message_status"),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["channel", "external_id"],
                condition=models.Q(external_id__isnull=False),
                name="message_unique_external_id",
            )
        ]

    def __str__(self) -> str:
        return f"{self.role} {self.id}"


class AICall(models.Model):
    """Record one attempt at a model call: the usage and spend ledger."""

    class Status(models.TextChoices):
        STARTED = "started"  # admitted by the spend guard, outcome not yet known
        SUCCEEDED = "succeeded"
        FAILED = "failed"

    tenant = models.ForeignKey(
        Tenant, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    message = models.ForeignKey(
        Message,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="ai_calls",
    )
    ref = models.CharField(max_length=255, blank=True, db_index=True)
    provider = models.CharField(max_length=32)
    model = models.CharField(max_length=128)
    attempt = models.PositiveSmallIntegerField()
    status = models.CharField(max_length=16, choices=Status.choices)
    transient = models.BooleanField(null=True, blank=True)
    http_status = models.PositiveSmallIntegerField(null=True, blank=True)
    error = models.TextField(blank=True)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    total_tokens = models.PositiveIntegerField(default=0)
    cost = models.DecimalField(max_digits=12, decimal_places=6, default=0)
    latency_ms = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        verbose_name = "AI call"
        # The spend guard sums a tenant's month.
        indexes = [models.Index(fields=["tenant", "created_at"])]

    def __str__(self) -> str:
        return f"{self.provider}/{self.model} #{self.attempt} {self.status}"


def _empty_object_schema() -> dict:
    return {"type": "object", "properties": {}}


class HttpTool(models.Model):
    """A tool the model may call that is an HTTP endpoint, configured in the admin.

    The arguments the model sends are checked against ``parameters`` (a JSON
    Schema) before the request: GET sends them as the query string, the other
    methods as a JSON body. ``auth_secret`` goes in the ``auth_header`` header.
    """

    class Method(models.TextChoices):
        GET = "GET"
        POST = "POST"
        PUT = "PUT"
        PATCH = "PATCH"

    # The providers' own limit on function names.
    name = models.CharField(
        max_length=64,
        unique=True,
        validators=[
            RegexValidator(
                r"^[a-zA-Z0-9_-]+$", "Letters, digits, _ and - only (as models need)."
            )
        ],
    )
    description = models.TextField(
        help_text="What the tool does and when to use it; the model reads this."
    )
    url = models.URLField(max_length=1000)
    method = models.CharField(max_length=8, choices=Method.choices, default="POST")
    parameters = models.JSONField(
        default=_empty_object_schema,
        help_text="JSON Schema of the arguments (an object schema).",
    )
    timeout_seconds = models.FloatField(
        default=10.0, validators=[MinValueValidator(0.1), MaxValueValidator(120.0)]
    )
    auth_header = models.CharField(
        max_length=100, blank=True, help_text="e.g. Authorization or X-Api-Key"
    )
    auth_secret = EncryptedTextField(blank=True)
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "HTTP tool"

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        from .tools import python_tool_names
        from .tools.schema import schema_problem

        errors = {}
        if self.name in python_tool_names():
            errors["name"] = "A built-in tool already has this name."
        problem = schema_problem(self.parameters)
        if problem:
            errors["parameters"] = problem
        if errors:
            raise ValidationError(errors)


class KnowledgeEntry(models.Model):
    """One question and answer of a tenant's FAQ, found by the faq_lookup tool."""

    tenant = models.ForeignKey(
        Tenant, on_delete=models.CASCADE, related_name="knowledge_entries"
    )
    question = models.CharField(max_length=500)
    answer = models.TextField()
    keywords = models.CharField(
        max_length=500, blank=True, help_text="Comma-separated words that match it."
    )
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "knowledge entry"
        verbose_name_plural = "knowledge entries"

    def __str__(self) -> str:
        return self.question[:80]
