"""Expose Prometheus metrics (``GET /metrics``) and count HTTP requests.

Under gunicorn with several workers (and for Celery workers on the same host)
set ``PROMETHEUS_MULTIPROC_DIR`` to a folder emptied at start: prometheus_client
then writes each process's samples there and this view aggregates them. The
view adds the depth of each Celery queue, read from the broker
(vocoeng/celery_metrics.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_GET
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import Metric

from .celery_metrics import QUEUE_DEPTH

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

HTTP_REQUESTS = Counter(
    "vocoeng_http_requests",
    "HTTP requests answered, by method and status code.",
    ["method", "status"],
)
HTTP_LATENCY = Histogram(
    "vocoeng_http_request_duration_seconds",
    "Time to answer an HTTP request, by method.",
    ["method"],
)


class RequestMetricsMiddleware:
    """Count every request by method and status and time it."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        response = self.get_response(request)
        # Unknown methods share one label so clients cannot blow up cardinality.
        method = request.method if request.method in METHODS else "other"
        HTTP_LATENCY.labels(method=method).observe(time.perf_counter() - started)
        HTTP_REQUESTS.labels(method=method, status=str(response.status_code)).inc()
        return response


class _Exposition:
    """Expose several collectors as one registry (generate_latest calls collect)."""

    def __init__(self, *collectors: Any) -> None:
        self.collectors = collectors

    def collect(self) -> Iterator[Metric]:
        for collector in self.collectors:
            yield from collector.collect()


def _registry() -> CollectorRegistry:
    if settings.PROMETHEUS_MULTIPROC_DIR:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry
    return REGISTRY


@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    """Render the process's (or all processes') metrics and the queue depths."""
    exposition = _Exposition(_registry(), QUEUE_DEPTH)
    return HttpResponse(generate_latest(exposition), content_type=CONTENT_TYPE_LATEST)
