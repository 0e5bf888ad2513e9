from __future__ import annotations

from django.apps import AppConfig


class VocoengConfig(AppConfig):
    """Hold the cross-app models: tenants, API keys, the bus outbox."""

    name = "vocoeng"
    verbose_name = "VocoEng"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Connect the Celery signals that carry correlation ids (web, worker,
        # bridge) and register the OpenAPI extension of the API key auth.
        from . import correlation, openapi  # noqa: F401
