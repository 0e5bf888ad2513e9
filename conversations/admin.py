from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path

from vocoeng.admin import HttpsUrlFieldsAdminMixin, SecretFieldsAdminMixin
from vocoeng.models import Tenant

from .models import AICall, Conversation, HttpTool, KnowledgeEntry, Message
from .selectors import spend_by_tenant_month_model


class MessageInline(admin.TabularInline):
    model = Message
    fk_name = "conversation"
    extra = 0
    can_delete = False
    fields = (
        "created_at",
        "role",
        "status",
        "content",
        "model",
        "total_tokens",
        "cost",
    )
    readonly_fields = fields
    ordering = ("created_at",)
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        # Messages come from the channels; every column here is read-only, so
        # "Add another Message" only offered an empty row with nothing to fill.
        return False


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    list_display = (
        "external_user_id",
        "channel",
        "account",
        "tenant",
        "message_count",
        "last_activity",
    )
    list_filter = ("channel", "tenant", "account")
    search_fields = ("external_user_id", "last_message")
    readonly_fields = ("created_at",)
    inlines = [MessageInline]


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "created_at",
        "channel",
        "role",
        "status",
        "provider",
        "model",
        "total_tokens",
        "cost",
    )
    list_filter = ("status", "role", "channel", "provider")
    search_fields = ("conversation__external_user_id", "external_id", "content")
    raw_id_fields = ("conversation", "reply_to")
    readonly_fields = ("created_at", "updated_at")
    date_hierarchy = "created_at"


@admin.register(AICall)
class AICallAdmin(admin.ModelAdmin):
    list_display = (
        "created_at",
        "provider",
        "model",
        "attempt",
        "status",
        "http_status",
        "total_tokens",
        "cost",
        "latency_ms",
    )
    list_filter = ("status", "tenant", "provider", "model")
    search_fields = ("ref",)
    raw_id_fields = ("message",)
    date_hierarchy = "created_at"

    def get_urls(self) -> list[URLPattern]:
        spend = path(
            "spend/",
            self.admin_site.admin_view(self.spend_view),
            name="conversations_aicall_spend",
        )
        return [spend, *super().get_urls()]

    def spend_view(self, request: HttpRequest) -> HttpResponse:
        """Show AI spend per tenant per month per model, with the budgets."""
        budgets = dict(Tenant.objects.values_list("slug", "monthly_budget"))
        rows = spend_by_tenant_month_model()
        for row in rows:
            row["budget"] = budgets.get(row["tenant__slug"])
        context = {
            **self.admin_site.each_context(request),
            "title": "AI spend per tenant and month",
            "opts": self.model._meta,
            "rows": rows,
        }
        return TemplateResponse(
            request, "admin/conversations/aicall/spend.html", context
        )


@admin.register(HttpTool)
class HttpToolAdmin(HttpsUrlFieldsAdminMixin, SecretFieldsAdminMixin, admin.ModelAdmin):
    """Configure HTTP endpoints the model may call; the auth secret is write-only."""

    secret_fields = ("auth_secret",)
    list_display = ("name", "method", "url", "timeout_seconds", "enabled")
    list_filter = ("enabled", "method")
    search_fields = ("name", "description", "url")
    fields = (
        "name",
        "description",
        "enabled",
        "method",
        "url",
        "parameters",
        "timeout_seconds",
        "auth_header",
        "auth_secret",
    )


@admin.register(KnowledgeEntry)
class KnowledgeEntryAdmin(admin.ModelAdmin):
    """Keep each tenant's FAQ, which the faq_lookup tool searches."""

    list_display = ("question", "tenant", "keywords", "enabled", "updated_at")
    list_filter = ("enabled", "tenant")
    search_fields = ("question", "answer", "keywords")
    fields = ("tenant", "question", "answer", "keywords", "enabled")
