"""Routes of the analytics API (mounted by vocoeng.urls).

The viewsets go on the project's /api/v1/ router (so the browsable API root
lists them); ``summary`` without a trailing slash is also answered here, as
ARCHITECTURE.md spells it.
"""

from __future__ import annotations

from django.urls import path
from rest_framework.routers import BaseRouter

from .api import SummaryViewSet, VocEventViewSet

urlpatterns = [
    path(
        "summary",
        SummaryViewSet.as_view({"get": "list"}),
        name="voc-summary-noslash",
    ),
]


def register(router: BaseRouter) -> None:
    """Register this app's viewsets on the project's /api/v1/ router."""
    router.register("analytics/events", VocEventViewSet, basename="voc-event")
    router.register("analytics/summary", SummaryViewSet, basename="voc-summary")
