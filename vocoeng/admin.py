from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import flatten_fieldsets
from django.db import models

from .claims_redis import redis_store
from .models import (
    ApiKey,
    BusMessage,
    Channel,
    DeadLetter,
    ProcessedMessage,
    Tenant,
)


class HttpsUrlFieldsAdminMixin:
    """Read a URL typed without a scheme as https (Django 6's default, now)."""

    def formfield_for_dbfield(self, db_field: Any, request: Any, **kwargs: Any):
        if isinstance(db_field, models.URLField):
            kwargs.setdefault("assume_scheme", "https")
        return super().formfield_for_dbfield(db_field, request, **kwargs)


class SecretFieldsAdminMixin:
    """Take secrets in the admin without ever showing them again.

    Each field named in ``secret_fields`` (an EncryptedTextField) is a password
    input that renders empty; leaving it empty keeps the stored value, and the
    help text says whether one is set. Tick "clear" to remove it.
    """

    secret_fields: tuple[str, ...] = ()

    def get_form(self, request: Any, obj: Any = None, change: bool = False, **kwargs):
        # The "clear" boxes are form-only fields the model form must not see.
        fields = kwargs.get("fields")
        if fields is None and (self.fieldsets or self.fields):
            fields = flatten_fieldsets(self.get_fieldsets(request, obj))
        if fields is not None:
            kwargs["fields"] = [f for f in fields if not f.endswith("__clear")]
        form = super().get_form(request, obj, change=change, **kwargs)
        for name in self.secret_fields:
            if name not in form.base_fields:
                continue
            stored = bool(obj is not None and getattr(obj, name))
            label = form.base_fields[name].label
            form.base_fields[name] = forms.CharField(
                label=label,
                required=False,
                strip=True,
                widget=forms.PasswordInput(
                    render_value=False, attrs={"autocomplete": "new-password"}
                ),
                help_text=(
                    "A value is stored (encrypted, never shown). Leave empty to "
                    "keep it."
                    if stored
                    else "Not set. Stored encrypted; never shown again."
                ),
            )
            if stored:
                form.base_fields[f"{name}__clear"] = forms.BooleanField(
                    label=f"Clear {label}", required=False
                )
        return form

    def get_fieldsets(self, request: Any, obj: Any = None):
        fieldsets = super().get_fieldsets(request, obj)
        if obj is None:
            return fieldsets
        present = set(flatten_fieldsets(fieldsets))
        extra = [
            f"{name}__clear"
            for name in self.secret_fields
            if getattr(obj, name) and f"{name}__clear" not in present
        ]
        if not extra:
            return fieldsets
        return [*fieldsets, ("Clear stored secrets", {"fields": extra})]

    def save_model(self, request: Any, obj: Any, form: Any, change: bool) -> None:
        if change and obj.pk is not None:
            stored = type(obj).objects.filter(pk=obj.pk).first()
            for name in self.secret_fields:
                if form.cleaned_data.get(f"{name}__clear"):
                    setattr(obj, name, "")
                elif not form.cleaned_data.get(name) and stored is not None:
                    setattr(obj, name, getattr(stored, name))
        super().save_model(request, obj, form, change)


class ApiKeyInline(admin.TabularInline):
    model = ApiKey
    extra = 0
    fields = ("name", "prefix", "is_active", "created_at", "last_used_at")
    readonly_fields = ("prefix", "created_at", "last_used_at")

    def has_add_permission(self, request: Any, obj: Any = None) -> bool:
        # As on ApiKeyAdmin: a key made here would have no prefix and no hash
        # (unusable, and a second one broke the unique prefix: a 500). Keys
        # come from ``manage.py create_api_key``, which prints the secret once.
        return False


class ChannelInline(admin.TabularInline):
    """List a tenant's channels; secrets are edited on the channel's own page."""

    model = Channel
    extra = 0
    can_delete = False
    fields = ("name", "kind", "phone_number_id", "is_active")
    readonly_fields = fields
    show_change_link = True

    def has_add_permission(self, request: Any, obj: Any = None) -> bool:
        return False


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    list_display = ("slug", "name", "monthly_budget", "spend_this_month", "created_at")
    search_fields = ("slug", "name")
    fields = (
        "slug",
        "name",
        "monthly_budget",
        "spend_this_month",
        "daily_token_cap",
        "over_budget_text",
        "created_at",
    )
    readonly_fields = ("spend_this_month", "created_at")
    inlines = [ChannelInline, ApiKeyInline]

    @admin.display(description="AI spend this month")
    def spend_this_month(self, obj: Tenant) -> str:
        # Ledger totals live in conversations; the admin may read across apps.
        from conversations.budget import tenant_month_spend

        if obj.pk is None:
            return "-"
        return str(tenant_month_spend(tenant_id=obj.pk))


@admin.register(Channel)
class ChannelAdmin(HttpsUrlFieldsAdminMixin, SecretFieldsAdminMixin, admin.ModelAdmin):
    """Channels with their credentials (write-only) and agent settings."""

    secret_fields = (
        "access_token",
        "app_secret",
        "verify_token",
        "aisensy_webhook_secret",
        "aisensy_api_key",
    )
    list_display = ("name", "tenant", "kind", "phone_number_id", "is_active")
    list_filter = ("kind", "is_active", "tenant")

    search_fields = ("name", "phone_number_id", "tenant__slug")
    readonly_fields = ("created_at", "updated_at")
    fieldsets = (
        (None, {"fields": ("tenant", "name", "kind", "is_active")}),
        (
            "WhatsApp Cloud API",
            {
                "fields": (
                    "phone_number_id",
                    "access_token",
                    "app_secret",
                    "verify_token",
                ),
            },
        ),
        ("AiSensy", {"fields": ("aisensy_webhook_secret", "aisensy_api_key")}),
        ("Outbound API", {"fields": ("api_base",)}),
        (
            "Agent",
            {
                "fields": (
                    "system_prompt",
                    "providers",
                    "provider_models",
                    "history_length",
                    "tools",
                    "rate_limit",
                ),
            },
        ),
        (None, {"fields": ("created_at", "updated_at")}),
    )


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    """Show keys without their secret: create them with ``create_api_key``."""

    list_display = ("prefix", "tenant", "name", "is_active", "last_used_at")
    list_filter = ("is_active", "tenant")
    fields = ("tenant", "name", "prefix", "is_active", "created_at", "last_used_at")
    readonly_fields = ("prefix", "created_at", "last_used_at")

    def has_add_permission(self, request) -> bool:
        return False


@admin.register(BusMessage)
class BusMessageAdmin(admin.ModelAdmin):
    list_display = ("created_at", "topic", "key", "pubsub_message_id")
    list_filter = ("topic",)
    search_fields = ("key", "pubsub_message_id")
    readonly_fields = ("created_at",)


@admin.register(DeadLetter)
class DeadLetterAdmin(admin.ModelAdmin):
    """List messages that could never succeed, with a replay action."""

    list_display = (
        "created_at",
        "source",
        "kind",
        "subscription",
        "message_id",
        "reason",
        "replayed_at",
    )
    list_filter = ("source", "kind", "subscription")
    search_fields = ("message_id", "reason")
    readonly_fields = (
        "source",
        "subscription",
        "message_id",
        "kind",
        "data_preview",
        "attributes",
        "reason",
        "created_at",
        "replayed_at",
    )
    exclude = ("data",)
    actions = ["replay"]

    def has_add_permission(self, request) -> bool:
        return False

    @admin.display(description="data")
    def data_preview(self, obj: DeadLetter) -> str:
        text = bytes(obj.data).decode("utf-8", errors="replace")
        return text if len(text) <= 2000 else text[:2000] + "…"

    @admin.action(description="Replay: route again and enqueue the chain")
    def replay(self, request, queryset) -> None:
        from .deadletters import dead_letter_replay
        from .routing import PermanentMessageError

        for letter in queryset:
            try:
                enqueued = dead_letter_replay(letter=letter)
            except PermanentMessageError as exc:
                self.message_user(
                    request,
                    f"{letter.message_id}: still fails: {exc.reason}",
                    messages.ERROR,
                )
            else:
                outcome = "enqueued" if enqueued else "nothing to do (duplicate)"
                self.message_user(request, f"{letter.message_id}: {outcome}")


@admin.register(ProcessedMessage)
class ProcessedMessageAdmin(admin.ModelAdmin):
    list_display = ("created_at", "kind", "key", "message_id", "state")
    list_filter = ("kind", "state")
    search_fields = ("key", "message_id")

    def changelist_view(self, request, extra_context=None):
        if (store := redis_store()) is not None:
            self.message_user(
                request,
                "The bus's dedup claims are kept in Redis now "
                f"(PUBSUB_BRIDGE_DEDUP=redis, keys {store.prefix}<kind>:<key>); "
                "this table lists only claims kept in the database before.",
                level=messages.INFO,
            )
        return super().changelist_view(request, extra_context)
