"""Export Celery task metrics and queue depths for Prometheus.

Task metrics are counted by Celery signals in the process that runs the task
(a prefork child, or the one process of a thread-pool worker):

- ``vocoeng_celery_task_runtime_seconds{task}``: run time, prerun to postrun;
- ``vocoeng_celery_task_succeeded_total{task}``,
  ``vocoeng_celery_task_failed_total{task,exception}``,
  ``vocoeng_celery_task_retried_total{task}``.

A worker serves them on ``CELERY_METRICS_PORT`` (its main process, started
when the worker is ready). A prefork worker's tasks run in child processes, so
it needs ``PROMETHEUS_MULTIPROC_DIR`` (its own folder, emptied at start): the
children write their samples there and the port aggregates them. On one host,
the web and every worker may share one such folder instead, and the web's
``/metrics`` shows it all (README "Metrics").

Queue depth (``vocoeng_celery_queue_depth{queue}``, one per vocoeng.queues
Queue) is read from the broker by :class:`QueueDepthCollector` on the web's
``/metrics``, at most once per ``CELERY_METRICS_QUEUE_CACHE_SECONDS``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

from celery import Celery
from celery.signals import (
    task_failure,
    task_postrun,
    task_prerun,
    task_retry,
    task_success,
    worker_process_shutdown,
    worker_ready,
)
from kombu.exceptions import ChannelError
from kombu.transport import virtual
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from .queues import Queue

logger = logging.getLogger(__name__)

# Model calls take seconds; a pipeline step may take minutes.
_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

TASK_RUNTIME = Histogram(
    "vocoeng_celery_task_runtime_seconds",
    "Time a Celery task ran (each attempt), by task name.",
    ["task"],
    buckets=_BUCKETS,
)
TASK_SUCCEEDED = Counter(
    "vocoeng_celery_task_succeeded",
    "Celery task runs that succeeded, by task name.",
    ["task"],
)
TASK_FAILED = Counter(
    "vocoeng_celery_task_failed",
    "Celery task runs that failed for good, by task name and exception type.",
    ["task", "exception"],
)
TASK_RETRIED = Counter(
    "vocoeng_celery_task_retried",
    "Celery task runs that asked to be retried, by task name.",
    ["task"],
)

# task id -> perf_counter at prerun. Thread pools run many tasks at once; a
# dict's single-key operations are atomic under the GIL.
_started: dict[str, float] = {}


def _name(task: Any) -> str:
    return getattr(task, "name", None) or "unknown"


@task_prerun.connect(dispatch_uid="vocoeng.celery_metrics.prerun")
def _on_prerun(task_id: str, **_: Any) -> None:
    _started[task_id] = time.perf_counter()


@task_postrun.connect(dispatch_uid="vocoeng.celery_metrics.postrun")
def _on_postrun(task_id: str, task: Any = None, **_: Any) -> None:
    started = _started.pop(task_id, None)
    if started is not None:
        TASK_RUNTIME.labels(task=_name(task)).observe(time.perf_counter() - started)


@task_success.connect(dispatch_uid="vocoeng.celery_metrics.success")
def _on_success(sender: Any = None, **_: Any) -> None:
    TASK_SUCCEEDED.labels(task=_name(sender)).inc()


@task_failure.connect(dispatch_uid="vocoeng.celery_metrics.failure")
def _on_failure(sender: Any = None, exception: BaseException | None = None, **_: Any):
    kind = type(exception).__name__ if exception is not None else "unknown"
    TASK_FAILED.labels(task=_name(sender), exception=kind).inc()


@task_retry.connect(dispatch_uid="vocoeng.celery_metrics.retry")
def _on_retry(sender: Any = None, **_: Any) -> None:
    TASK_RETRIED.labels(task=_name(sender)).inc()


def registry() -> CollectorRegistry:
    """Return what this process should expose: its own or all processes' samples."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not path:
        return REGISTRY
    aggregated = CollectorRegistry()
    MultiProcessCollector(aggregated, path=path)
    return aggregated


@worker_ready.connect(dispatch_uid="vocoeng.celery_metrics.serve")
def _serve(sender: Any = None, **_: Any) -> None:
    from django.conf import settings
    from prometheus_client import start_http_server

    port = settings.CELERY_METRICS_PORT
    if not port:
        return
    pool = type(getattr(sender, "pool", None)).__module__
    if "prefork" in pool and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # The children's counters would be invisible from this process.
        logger.warning(
            "celery_metrics prefork pool without PROMETHEUS_MULTIPROC_DIR: "
            "task metrics of child processes are not exported on port %s",
            port,
        )
    try:
        start_http_server(port, addr=settings.CELERY_METRICS_ADDR, registry=registry())
    except OSError as exc:  # port taken: run without metrics, say so
        logger.error("celery_metrics_port_failed port=%s error=%s", port, exc)
        return
    logger.info("celery_metrics_serving port=%s", port)


@worker_process_shutdown.connect(dispatch_uid="vocoeng.celery_metrics.dead")
def _child_exit(pid: int | None = None, **_: Any) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        mark_process_dead(pid or os.getpid())


def queue_depths(*, app: Celery) -> dict[str, int]:
    """Return the number of messages waiting in each queue of the broker.

    Virtual transports count their own storage: LLEN of the queue's keys on
    Redis (all priority levels, with the transport's ``global_keyprefix``),
    files on the filesystem transport. AMQP brokers answer a passive
    ``queue_declare`` with the count. A queue the broker does not know yet
    has no messages.
    """
    depths: dict[str, int] = {}
    with app.connection_for_read() as conn:
        channel = conn.channel()
        try:
            for queue in Queue:
                if isinstance(channel, virtual.Channel):
                    # Not a passive declare: kombu's Redis check for it sends
                    # EXISTS without the key prefix, so it misses every queue
                    # when CELERY_REDIS_KEY_PREFIX is set.
                    depths[queue.value] = channel._size(queue.value)
                    continue
                try:
                    depths[queue.value] = channel.queue_declare(
                        queue=queue.value, passive=True
                    ).message_count
                except (ChannelError, *conn.channel_errors):
                    depths[queue.value] = 0
                    # AMQP closes a channel on NOT_FOUND; take a fresh one.
                    channel = conn.channel()
        finally:
            channel.close()
    return depths


class QueueDepthCollector:
    """Collect queue depths from the broker, cached for a few seconds.

    Scrapes stay cheap (one broker round trip per queue per period, whatever
    the number of scrapers) and a broker outage shows as
    ``vocoeng_celery_broker_up 0`` instead of a failed scrape.
    """

    def __init__(self, *, app: Celery | None = None) -> None:
        self._app = app  # None: the project's app, imported when first read
        self._lock = threading.Lock()
        self._read_at = float("-inf")
        self._depths: dict[str, int] = {}
        self._up = False

    def cache_clear(self) -> None:
        """Forget the last reading (the next scrape asks the broker)."""
        with self._lock:
            self._read_at = float("-inf")

    def _read(self) -> tuple[dict[str, int], bool]:
        from django.conf import settings

        if self._app is None:
            from .celery import app

            self._app = app
        with self._lock:
            ttl = settings.CELERY_METRICS_QUEUE_CACHE_SECONDS
            if time.monotonic() - self._read_at >= ttl:
                try:
                    self._depths, self._up = queue_depths(app=self._app), True
                except Exception as exc:  # broker down: report it, keep serving
                    logger.warning("celery_queue_depth_failed error=%s", exc)
                    self._depths, self._up = {}, False
                self._read_at = time.monotonic()
            return self._depths, self._up

    def collect(self) -> Iterator[Metric]:
        depths, up = self._read()
        depth = GaugeMetricFamily(
            "vocoeng_celery_queue_depth",
            "Messages waiting in a Celery queue of the broker.",
            labels=["queue"],
        )
        for queue, count in sorted(depths.items()):
            depth.add_metric([queue], count)
        yield depth
        yield GaugeMetricFamily(
            "vocoeng_celery_broker_up",
            "1 when the last queue depth reading reached the broker.",
            value=1 if up else 0,
        )


QUEUE_DEPTH = QueueDepthCollector()
