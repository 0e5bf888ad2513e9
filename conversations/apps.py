from __future__ import annotations

from typing import Any

from django.apps import AppConfig


class ConversationsConfig(AppConfig):
    """Hold conversations, messages, AI providers, stores and the reply chain."""

    name = "conversations"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from celery.signals import worker_process_init, worker_ready

        # Build the provider clients before the first task: importing an SDK
        # takes seconds, and a 100-thread ai worker would otherwise queue
        # every thread behind the first one's import.
        worker_ready.connect(_warm_up, dispatch_uid="conversations.warm_up", weak=False)
        worker_process_init.connect(
            _warm_up, dispatch_uid="conversations.warm_up_child", weak=False
        )


def _warm_up(**_: Any) -> None:
    from .providers import warm_up

    warm_up()
