from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import flatten_fieldsets

from .models import ApiKey, BusMessage, DeadLetter, ProcessedMessage, Tenant


class SecretFieldsAdminMixin:
    """Take secrets in the admin without ever showing them again.

    Each field named in ``secret_fields`` (an EncryptedTextField) is a password
    input that renders empty; leaving it empty keeps the stored value, and the
    help text says whether one is set. Tick "clear" to remove it.
    """

    secret_fields: tuple[str, ...] = ()

    def get_form(self, request: Any, obj: Any = None, change: bool = False, **kwargs):
        if kwargs.get("fields") is None and (self.fieldsets or self.fields):
            # The "clear" boxes are form-only fields the model form must not see.
            kwargs["fields"] = [
                f
                for f in flatten_fieldsets(self.get_fieldsets(request, obj))
                if not f.endswith("__clear")
            ]
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


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    list_display = ("slug", "name", "created_at")
    search_fields = ("slug", "name")
    inlines = [ApiKeyInline]


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
