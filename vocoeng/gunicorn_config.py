"""The web process's gunicorn config (the Procfile's ``web`` line).

    gunicorn vocoeng.wsgi -c python:vocoeng.gunicorn_config

It picks the worker class (``WEB_WORKER_CLASS``) and gives gunicorn's own
loggers the app's handler (vocoeng.logging_gunicorn).

``gevent`` (the default on PostgreSQL): each request runs in a greenlet, and
a request that waits (on PostgreSQL, Redis, the broker, Pub/Sub) lets the
others run without an OS thread switch or a fight for the GIL. Measured with
``bench/webhooks.py`` (2 workers, 2 cores, PostgreSQL and Redis on the same
host): the signed webhook went from 1,349 req/s and 1.09 ms of server CPU a
request with ``gthread`` (8 threads a worker) to 2,069 req/s and 0.79 ms, the
Django no-op view from 3,127 to 3,500 req/s. Most of the webhook's cost under
threads was blocking and waking around its database commit.

gevent must patch the standard library before anything else is imported:
gunicorn's master loads this file, and the logging config below imports
Django (``django.db`` included), whose per-thread connection holder, made
before the patch, would be one object shared by every greenlet. So the patch
comes first here, in the master, not in the worker after the fork. gRPC (the
Pub/Sub publisher of ``BUS=pubsub``, the Firestore store) is made to
cooperate in each worker (``post_fork``); psycopg sees the patch on import
and waits through gevent instead of in C.

``gthread`` (the default on SQLite, or set it): ``WEB_THREADS`` threads per
worker (8). sqlite3 waits for the database's write lock in C, which under
gevent would stop every request of the worker, the one holding the lock
included, until the busy timeout.

Set the worker class here (``WEB_WORKER_CLASS``), not with ``-k``: the
patch is decided when this file loads, and a worker class given on the
command line that disagrees with it stops gunicorn at start with the reason.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from urllib.parse import urlsplit

WORKER_CLASSES = ("gevent", "gthread")


def chosen_worker_class(environ: Mapping[str, str]) -> str:
    """Return the worker class ``WEB_WORKER_CLASS`` names (``auto``: gevent
    on PostgreSQL, gthread otherwise); raise ValueError for another value."""
    value = environ.get("WEB_WORKER_CLASS", "auto").strip().lower() or "auto"
    if value == "auto":
        scheme = urlsplit(environ.get("DATABASE_URL", "")).scheme
        postgres = scheme.partition("+")[0] in (
            "postgres", "postgresql", "pgsql", "postgis",
        )  # fmt: skip
        return "gevent" if postgres else "gthread"
    if value not in WORKER_CLASSES:
        raise ValueError(
            f"WEB_WORKER_CLASS={value!r}: use auto, {' or '.join(WORKER_CLASSES)}"
        )
    return value


def _positive_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    try:
        value = int(raw) if raw else default
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{name}={raw!r}: a whole number of at least 1")
    return value


worker_class = chosen_worker_class(os.environ)
if worker_class == "gevent":
    from gevent import monkey

    monkey.patch_all()

# Concurrent requests a gevent worker takes; beyond them, connections wait in
# the listen backlog. Requests that use the database share the worker's pool
# (DB_POOL_MAX_SIZE connections) and wait for one cooperatively.
worker_connections = _positive_int("WEB_WORKER_CONNECTIONS", 100)
threads = _positive_int("WEB_THREADS", 8)  # gthread only

# After the patch: these import Django. gunicorn reads its settings and
# hooks from this module's names, these three included.
from vocoeng.logging_gunicorn import (  # noqa: E402,F401
    access_log_format,
    logconfig_dict,
    post_worker_init,
)


def _is_gevent(worker_cls: type) -> bool:
    return worker_cls.__module__ == "gunicorn.workers.ggevent"


def on_starting(server: object) -> None:
    """Stop at start when the command line's worker class disagrees with
    the one this file prepared the process for."""
    wanted = worker_class == "gevent"
    given = server.cfg.worker_class  # type: ignore[attr-defined]
    if _is_gevent(given) != wanted:
        raise SystemExit(
            f"gunicorn: the worker class is {given.__name__}, but WEB_WORKER_CLASS"
            f" prepared this process for {worker_class}. Set WEB_WORKER_CLASS"
            " (auto, gevent or gthread) instead of -k/--worker-class."
        )


def post_fork(server: object, worker: object) -> None:
    """Make gRPC cooperate with gevent in this worker, before it loads the app."""
    if worker_class == "gevent":
        from grpc.experimental import gevent as grpc_gevent

        grpc_gevent.init_gevent()
