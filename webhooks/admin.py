from __future__ import annotations

import logging

from django.contrib import admin, messages
from django.db import DatabaseError
from django.db.models import QuerySet
from django.http import HttpRequest

from conversations.models import Message

from . import services
from .models import InboundMessage, OutboundMessage, WebhookDelivery

logger = logging.getLogger(__name__)


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
        done = rejected = failed = 0
        unauthorized = WebhookDelivery.Verdict.UNAUTHORIZED
        # Their signature never checked out, so replaying them would act on
        # forged input: they are skipped, and the message says so.
        skipped = queryset.filter(verdict=unauthorized).count()
        for delivery in queryset.exclude(verdict=unauthorized):
            try:
                services.delivery_replay(delivery=delivery)
                done += 1
            except services.DeliveryRejected as exc:
                rejected += 1
                # Not "<pk>: ...": the admin capitalises a message's first letter,
                # which turned an id such as b2bf... into B2bf...
                self.message_user(
                    request,
                    f"Delivery {delivery.pk}: {exc.reason}",
                    level=messages.WARNING,
                )
            except Exception as exc:  # DB or broker down: recorded, not a 500
                failed += 1
                error = f"{type(exc).__name__}: {exc}"
                logger.exception("webhook_replay_failed delivery=%s", delivery.pk)
                try:
                    services.delivery_fail(delivery=delivery, error=error)
                except DatabaseError:
                    logger.exception("webhook_fail_unrecorded delivery=%s", delivery.pk)
                self.message_user(
                    request,
                    f"Delivery {delivery.pk} failed: {error}",
                    level=messages.ERROR,
                )
        self.message_user(
            request,
            f"Replayed {done} deliveries ({rejected} rejected, {failed} failed).",
        )
        if skipped:
            self.message_user(
                request,
                f"Skipped {skipped} unauthorized deliveries (never verified).",
                level=messages.WARNING,
            )

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
