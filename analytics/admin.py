"""Admin for VOC events and the staff-only analytics dashboard."""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path
from django.utils.safestring import mark_safe

from .charts import lines, stacked_bars
from .models import VocEvent
from .selectors import dashboard_series

DASHBOARD_DAYS = 14


@admin.register(VocEvent)
class VocEventAdmin(admin.ModelAdmin):
    """Staff see every tenant's events; the dashboard is linked from the list."""

    change_list_template = "admin/analytics/vocevent/change_list.html"
    list_display = ("ts", "tenant", "event_type", "sentiment", "topic", "metric")
    list_filter = ("event_type", "tenant", "topic")
    search_fields = ("=event_id",)
    date_hierarchy = "ts"
    list_select_related = ("tenant",)
    readonly_fields = [f.name for f in VocEvent._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def get_urls(self) -> list[URLPattern]:
        dashboard = path(
            "dashboard/",
            self.admin_site.admin_view(self.dashboard_view),
            name="analytics_dashboard",
        )
        return [dashboard, *super().get_urls()]

    def dashboard_view(self, request: HttpRequest) -> HttpResponse:
        """Render volume per type per day and sentiment per tenant as SVG."""
        data = dashboard_series(days=DASHBOARD_DAYS)
        dates = data["dates"]
        position = {d: i for i, d in enumerate(dates)}
        volume: dict[str, list[int]] = {}
        for day, event_type, count in data["volume"]:
            volume.setdefault(event_type, [0] * len(dates))[position[day]] = count
        trend: dict[str, list[float | None]] = {}
        for day, slug, avg in data["sentiment"]:
            trend.setdefault(slug, [None] * len(dates))[position[day]] = avg
        context = {
            **self.admin_site.each_context(request),
            "title": f"VOC dashboard (last {DASHBOARD_DAYS} days)",
            "opts": self.model._meta,
            # The charts escape every label they draw (analytics/charts.py).
            "volume_svg": mark_safe(  # noqa: S308
                stacked_bars(
                    dates=dates, series=volume, title="Events per type per day"
                )
            ),
            "sentiment_svg": mark_safe(  # noqa: S308
                lines(dates=dates, series=trend, title="Average sentiment per tenant")
            ),
            "has_volume": bool(volume),
            "has_sentiment": bool(trend),
        }
        return TemplateResponse(
            request, "admin/analytics/vocevent/dashboard.html", context
        )
