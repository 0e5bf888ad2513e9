from __future__ import annotations

from django.contrib import admin, messages

from .models import ApiKey, BusMessage, DeadLetter, ProcessedMessage, Tenant


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
