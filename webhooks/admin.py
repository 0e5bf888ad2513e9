from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from conversations.models import Message

from . import services
from .models import InboundMessage, OutboundMessage, WebhookDelivery


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(admin.ModelAdmin):
    list_display = ("received_at", "source", "verdict", "error", "replays")
    list_filter = ("source", "verdict")
    search_fields = ("body", "error")
    readonly_fields = [f.name for f in WebhookDelivery._meta.fields]
    date_hierarchy = "received_at"
    actions = ["replay"]

    @admin.action(description="Replay the selected deliveries")
    def replay(self, request: HttpRequest, queryset: QuerySet) -> None:
        done = failed = 0
        for delivery in queryset.exclude(verdict=WebhookDelivery.Verdict.UNAUTHORIZED):
            try:
                services.delivery_replay(delivery=delivery)
                done += 1
            except services.DeliveryRejected as exc:
                failed += 1
                self.message_user(
                    request, f"{delivery.pk}: {exc.reason}", level=messages.WARNING
                )
        self.message_user(request, f"Replayed {done} deliveries ({failed} rejected).")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


class _ChannelMessageAdmin(admin.ModelAdmin):
    role = ""
    list_display = (
        "created_at",
        "channel",
        "conversation",
        "status",
        "content",
        "external_id",
        "error",
    )
    list_filter = ("status", "channel")
    search_fields = ("external_id", "conversation__external_user_id")
    raw_id_fields = ("conversation", "reply_to")
    readonly_fields = ("created_at", "updated_at")
    date_hierarchy = "created_at"

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).filter(role=self.role)


@admin.register(InboundMessage)
class InboundMessageAdmin(_ChannelMessageAdmin):
    role = Message.Role.USER


@admin.register(OutboundMessage)
class OutboundMessageAdmin(_ChannelMessageAdmin):
    role = Message.Role.ASSISTANT
