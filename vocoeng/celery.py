"""Create the Celery app, configured from Django settings (CELERY_ namespace)."""

from __future__ import annotations

import os

from celery import Celery
from kombu import Queue as KombuQueue

from .queues import Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "vocoeng.settings")

app = Celery("vocoeng")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.task_queues = [KombuQueue(q.value, routing_key=q.value) for q in Queue]
app.autodiscover_tasks()


@app.on_after_configure.connect
def _ensure_filesystem_broker_dirs(sender: Celery, **_: object) -> None:
    """Create the folders of the embedded filesystem broker before first use."""
    opts = sender.conf.broker_transport_options or {}
    for key in ("data_folder_in", "data_folder_out", "control_folder"):
        if opts.get(key):
            os.makedirs(opts[key], exist_ok=True)
