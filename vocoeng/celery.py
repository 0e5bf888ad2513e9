"""Create the Celery app, configured from Django settings (CELERY_ namespace)."""

from __future__ import annotations

import gc
import logging.config
import os
from collections.abc import Iterator, Mapping
from typing import Any

from celery import Celery
from celery.signals import (
    beat_init,
    setup_logging,
    task_postrun,
    worker_init,
    worker_process_init,
    worker_ready,
)
from kombu import Queue as KombuQueue

from .queues import Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "vocoeng.settings")


class _CelerySettings(Mapping[str, Any]):
    """The ``CELERY_*`` Django settings, as Celery reads its configuration.

    ``config_from_object("django.conf:settings")`` looks every key up on
    Django's settings object, and a key left at Celery's default misses there
    once for each spelling Celery tries, each miss an AttributeError:
    ~17 us a lookup (``task_send_sent_event``, read on every publish) against
    ~5 for a key that is set. Here they are read once, when Celery first
    loads its configuration (Django is configured by then), into a dict.
    Celery settings changed at run time go through ``app.conf``, as before.
    """

    def __init__(self) -> None:
        self._data: dict[str, Any] | None = None

    @property
    def data(self) -> dict[str, Any]:
        if self._data is None:
            from django.conf import settings

            self._data = {
                name: getattr(settings, name)
                for name in dir(settings)
                if name.startswith("CELERY_")
            }
        return self._data

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)


app = Celery("vocoeng")
app.config_from_object(_CelerySettings(), namespace="CELERY")
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


@task_postrun.connect(dispatch_uid="vocoeng.celery.db_release")
def _db_release(sender: Any = None, **_: Any) -> None:
    """Hand the task's database connection back (to the pool), or drop it if broken.

    What Django does at the end of a web request; Celery's own fixup would
    close the whole pool after every prefork task (CELERY_DB_REUSE_MAX). An
    eager task runs inside its caller's connection and transaction: left alone.
    """
    if getattr(getattr(sender, "request", None), "is_eager", False):
        return
    from django.db import close_old_connections

    close_old_connections()


@worker_ready.connect(dispatch_uid="vocoeng.celery.gc_freeze")
@worker_process_init.connect(dispatch_uid="vocoeng.celery.gc_freeze_child")
def gc_freeze(**_: Any) -> None:
    """Put what start-up built out of the cyclic garbage collector's reach.

    Django, the apps, the SDK clients: ~160,000 objects that live as long as
    the process, which every full collection walked again, holding the GIL.
    Measured in the ``ai`` worker draining 500 replies (bench/ai_fanout.py):
    its one full collection stopped all 100 threads for 150 ms; frozen, 56 ms.
    (Sent in a thread pool's worker once it is ready, and in every prefork
    child once it has started; ``manage.py pubsub_bridge`` calls it before
    pulling.)
    """
    gc.collect()
    gc.freeze()
