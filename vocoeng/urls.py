"""Route the HTTP surface of ARCHITECTURE.md."""

from __future__ import annotations

from django.contrib import admin
from django.urls import include, path
from rest_framework.routers import DefaultRouter

import analytics.urls
import pipeline.urls
from conversations.api import ConversationViewSet, MessageViewSet
from conversations.views import process

from .health import health, readyz
from .metrics import metrics

router = DefaultRouter()
router.register("conversations", ConversationViewSet, basename="conversation")
router.register("messages", MessageViewSet, basename="message")
pipeline.urls.register(router)
analytics.urls.register(router)

urlpatterns = [
    path("health", health, name="health"),
    path("readyz", readyz, name="readyz"),
    path("metrics", metrics, name="metrics"),
    path("process", process, name="process"),
    path("webhooks/", include("webhooks.urls")),
    path("api/v1/analytics/", include("analytics.urls")),
    path("api/v1/", include(router.urls)),
    path("api-auth/", include("rest_framework.urls")),
    path("admin/", admin.site.urls),
]
