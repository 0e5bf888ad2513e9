"""Make gunicorn log like the app: ``gunicorn -c python:vocoeng.logging_gunicorn``.

gunicorn configures its own loggers (``gunicorn.error``, ``gunicorn.access``)
with plain-text handlers; this config gives them the handler of
``settings.LOGGING`` instead, so with ``LOG_FORMAT=json`` the web process
writes JSON lines only. Access lines name the path without its query string
(Meta's verify handshake sends the verify token there) and carry the
correlation id the app answered with (``X-Request-ID``).
"""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "vocoeng.settings")

from django.conf import settings

_handler = {"handlers": ["console"], "level": "INFO", "propagate": False}

logconfig_dict = {
    **settings.LOGGING,
    "filters": {
        **settings.LOGGING["filters"],
        "access": {"()": "vocoeng.logging_setup.AccessLogFilter"},
    },
    "loggers": {
        "gunicorn.error": _handler,
        "gunicorn.access": {**_handler, "filters": ["access"]},
    },
}
access_log_format = (
    '%(h)s "%(m)s %(U)s %(H)s" %(s)s %(b)s %(M)sms "%(a)s" cid=%({x-request-id}o)s'
)


def post_worker_init(worker: object) -> None:
    """Freeze what loading the app built, once a worker has loaded it.

    gunicorn's workers load the app after the fork: Django, the apps and
    their clients are then ~100,000 objects that live as long as the worker,
    which every full collection of the cyclic garbage collector walked again
    while holding the GIL (as in the Celery workers: vocoeng.celery.gc_freeze).
    """
    from vocoeng.celery import gc_freeze

    gc_freeze()
