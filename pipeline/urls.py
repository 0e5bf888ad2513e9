"""Routes of the pipeline API (mounted by vocoeng.urls)."""

from __future__ import annotations

from rest_framework.routers import BaseRouter

urlpatterns: list = []


def register(router: BaseRouter) -> None:
    """Register this app's viewsets on the project's /api/v1/ router."""
    from .api import RunViewSet

    router.register("runs", RunViewSet, basename="run")
