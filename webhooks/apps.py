from __future__ import annotations

from django.apps import AppConfig


class WebhooksConfig(AppConfig):
    name = "webhooks"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        """Register the channel delivery adapters of the reply path."""
        from conversations.delivery import register_adapter

        from .delivery import AiSensyDelivery, WhatsAppDelivery

        register_adapter("whatsapp", WhatsAppDelivery())
        register_adapter("aisensy", AiSensyDelivery())
