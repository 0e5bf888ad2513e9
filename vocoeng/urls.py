"""Route the HTTP surface of ARCHITECTURE.md."""

from __future__ import annotations

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import (
    SpectacularAPIView,
    SpectacularRedocView,
    SpectacularSwaggerView,
)
from rest_framework.routers import DefaultRouter

import analytics.urls
import pipeline.urls
from conversations.api import ConversationViewSet, MessageViewSet
from conversations.views import process

from .api import ApiRootView
from .health import health, readyz
from .metrics import metrics

handler400 = "vocoeng.api.bad_request"
handler404 = "vocoeng.api.not_found"

router = DefaultRouter()
router.APIRootView = ApiRootView
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
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path(
        "api/schema/swagger-ui/",
        SpectacularSwaggerView.as_view(url_name="schema"),
        name="swagger-ui",
    ),
    path(
        "api/schema/redoc/",
        SpectacularRedocView.as_view(url_name="schema"),
        name="redoc",
    ),
    path("admin/", admin.site.urls),
]
