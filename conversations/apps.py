from __future__ import annotations

from django.apps import AppConfig


class ConversationsConfig(AppConfig):
    """Hold conversations, messages, AI providers, stores and the reply chain."""

    name = "conversations"
    default_auto_field = "django.db.models.BigAutoField"
