"""Run ``manage.py pubsub_bridge`` as a child process (tests and benches)."""

from __future__ import annotations

import signal
import sys
from typing import Any

from celery.canvas import Signature

from vocoeng.testing.process import ChildProcess


class BridgeProcess(ChildProcess):
    """Start the bridge the way users do and collect its output."""

    ready_marker = "bridge pulling"

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        # One bridge process unless a test asks for more (--processes, or
        # PUBSUB_BRIDGE_PROCESSES in env): its default is one per CPU.
        super().__init__(env={"PUBSUB_BRIDGE_PROCESSES": "1", **(env or {})})
        self.args = list(args)

    def command(self) -> list[str]:
        return [sys.executable, "manage.py", "pubsub_bridge", *self.args]

    def count(self, event: str) -> int:
        """Return how many per-message log lines report ``event``."""
        with self._lock:
            return sum(f"event={event} " in line for line in self.lines)

    def terminate(self) -> None:
        """Send SIGTERM (a graceful stop)."""
        self.send(signal.SIGTERM)


def noop_route(*, data: Any, attributes: dict[str, str]) -> Signature:
    """Return a no-op task for the message, for measuring the bridge alone.

    Benches point ``BUS_ROUTES`` at it; nothing is stored and no worker needs
    to know the task (the signature is only queued).
    """
    from vocoeng.celery import app

    message_id = data.get("message_id") if isinstance(data, dict) else None
    return app.signature("bench.noop", args=(message_id,), queue="ai")


noop_route.batch = lambda *, items: [  # type: ignore[attr-defined]
    noop_route(data=data, attributes=attributes) for data, attributes in items
]
