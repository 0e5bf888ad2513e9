"""Run a VocoEng command as a child process and collect its output.

Tests and benches start workers and the bridge the way users do; this is the
part they share: a process group of its own, output pumped into memory, a wait
for the line that says the process is ready, and stopping with a signal.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """Return a loopback port nothing listens on now (for a child to bind,
    or to be refused on)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ChildProcess:
    """Start ``command()`` in the repository root; subclasses name it."""

    #: Text in a line of output that means the process is ready.
    ready_marker = ""
    #: Signal and grace period of :meth:`stop`.
    stop_signal = signal.SIGTERM
    stop_timeout = 30.0

    def __init__(self, *, env: dict[str, str] | None = None) -> None:
        self.extra_env = env or {}
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        self._ready = threading.Event()
        self._lock = threading.Lock()

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        return {**os.environ, "PYTHONUNBUFFERED": "1", **self.extra_env}

    def start(self, timeout: float = 60, wait: bool = True) -> ChildProcess:
        """Start the process; with ``wait``, return once it printed its marker."""
        self.proc = subprocess.Popen(
            self.command(),
            cwd=ROOT,
            env=self.environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        threading.Thread(target=self._pump, daemon=True).start()
        if wait and not self._ready.wait(timeout):
            self.stop()
            raise RuntimeError(
                f"{type(self).__name__} did not start:\n" + self.output()
            )
        return self

    def _pump(self) -> None:
        assert self.proc and self.proc.stdout
        for line in self.proc.stdout:
            with self._lock:
                self.lines.append(line)
            if self.ready_marker in line:
                self._ready.set()

    def output(self) -> str:
        with self._lock:
            return "".join(self.lines)

    def wait(self, timeout: float = 60) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def send(self, sig: int) -> None:
        """Send ``sig`` to the process group while the process runs."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        """Kill the process with SIGKILL, as the OOM killer would."""
        self.send(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(10)

    def stop(self) -> int | None:
        """Stop with ``stop_signal``; SIGKILL after ``stop_timeout``."""
        if self.proc is None:
            return None
        self.send(self.stop_signal)
        try:
            return self.proc.wait(self.stop_timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.proc.returncode
