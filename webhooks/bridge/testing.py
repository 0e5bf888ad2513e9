"""Run ``manage.py pubsub_bridge`` as a child process (tests and benches)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from celery.canvas import Signature

ROOT = Path(__file__).resolve().parents[2]


class BridgeProcess:
    """Start the bridge the way users do and collect its output."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.args = list(args)
        self.extra_env = env or {}
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        self._ready = threading.Event()
        self._lock = threading.Lock()

    def start(self, timeout: float = 60, wait: bool = True) -> BridgeProcess:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.extra_env}
        self.proc = subprocess.Popen(
            [sys.executable, "manage.py", "pubsub_bridge", *self.args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        threading.Thread(target=self._pump, daemon=True).start()
        if wait and not self._ready.wait(timeout):
            self.stop()
            raise RuntimeError("bridge did not start:\n" + self.output())
        return self

    def _pump(self) -> None:
        assert self.proc and self.proc.stdout
        for line in self.proc.stdout:
            with self._lock:
                self.lines.append(line)
            if line.startswith("bridge pulling"):
                self._ready.set()

    def output(self) -> str:
        with self._lock:
            return "".join(self.lines)

    def count(self, event: str) -> int:
        """Return how many per-message log lines report ``event``."""
        with self._lock:
            return sum(f"event={event} " in line for line in self.lines)

    def wait(self, timeout: float = 60) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def terminate(self) -> None:
        """Send SIGTERM (a graceful stop)."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)

    def stop(self, timeout: float = 30) -> int | None:
        if self.proc is None:
            return None
        self.terminate()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait(10)


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
