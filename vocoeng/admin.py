from __future__ import annotations

from django.contrib import admin

from .models import ApiKey, BusMessage, Tenant


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
