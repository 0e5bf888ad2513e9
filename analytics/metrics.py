"""Prometheus metrics of the analytics pipeline (exposed by ``GET /metrics``)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

EVENTS_CONSUMED = Counter(
    "vocoeng_voc_events_consumed",
    "VOC events received (API and bus), before validation.",
    ["source"],
)
EVENTS_REJECTED = Counter(
    "vocoeng_voc_events_rejected",
    "VOC events rejected by validation or tenancy.",
    ["source"],
)
EVENTS_PROCESSED = Counter(
    "vocoeng_voc_events_processed",
    "VOC events annotated and written (duplicates included, inserted once).",
)
BATCH_DURATION = Histogram(
    "vocoeng_voc_batch_duration_seconds",
    "Time to annotate and bulk-insert one batch of VOC events.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
