"""Prometheus counters of the bridge, served on ``--metrics-port`` when given."""

from __future__ import annotations

from prometheus_client import Counter, start_http_server

MESSAGES = Counter(
    "vocoeng_bridge_messages",
    "Pub/Sub messages handled by the bridge, by subscription and event.",
    ["subscription", "event"],
)


def serve(port: int, addr: str = "0.0.0.0") -> None:  # noqa: S104 - scraped
    """Serve /metrics on ``port`` from a daemon thread."""
    start_http_server(port, addr=addr)
