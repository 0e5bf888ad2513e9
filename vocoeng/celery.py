"""Create the Celery app, configured from Django settings (CELERY_ namespace)."""

from __future__ import annotations

import logging.config
import os
from typing import Any

from celery import Celery
from celery.signals import beat_init, setup_logging, worker_init
from kombu import Queue as KombuQueue

from .queues import Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "vocoeng.settings")

app = Celery("vocoeng")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.task_queues = [KombuQueue(q.value, routing_key=q.value) for q in Queue]
app.autodiscover_tasks()

# Connect the task metrics signals in every process that runs tasks.
from . import celery_metrics  # noqa: E402, F401


@app.on_after_configure.connect
def _ensure_filesystem_broker_dirs(sender: Celery, **_: object) -> None:
    """Create the folders of the embedded filesystem broker before first use."""
    opts = sender.conf.broker_transport_options or {}
    for key in ("data_folder_in", "data_folder_out", "control_folder"):
        if opts.get(key):
            os.makedirs(opts[key], exist_ok=True)


@setup_logging.connect(dispatch_uid="vocoeng.celery.logging")
def _logging(**_: Any) -> None:
    """Log the way the web does (settings.LOGGING), not Celery's own way.

    Answering this signal stops Celery from adding its handlers and formats
    to the root logger (worker and beat, also in prefork children); the
    level is LOG_LEVEL, whatever ``-l`` says.
    """
    from django.conf import settings

    logging.config.dictConfig(settings.LOGGING)


@worker_init.connect(dispatch_uid="vocoeng.celery.role_worker")
def _role_worker(**_: Any) -> None:
    from .logging_setup import role_set

    role_set("worker")


@beat_init.connect(dispatch_uid="vocoeng.celery.role_beat")
def _role_beat(**_: Any) -> None:
    from .logging_setup import role_set

    role_set("beat")
