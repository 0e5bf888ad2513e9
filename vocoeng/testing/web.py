"""Run the Procfile's ``web`` line (gunicorn) as a child process, for tests."""

from __future__ import annotations

import re
import shlex
import sys

from .process import ROOT, ChildProcess, free_port


def procfile_argv(name: str) -> list[str]:
    """Return the Procfile's ``name`` line as argv (``${VAR:-x}`` read as x)."""
    procfile = (ROOT / "Procfile").read_text().splitlines()
    line = next(row for row in procfile if row.startswith(f"{name}:"))
    return shlex.split(re.sub(r"\$\{(\w+):-([^}]*)\}", r"\2", line.partition(":")[2]))


class WebProcess(ChildProcess):
    """Run the Procfile's ``web`` line on a free loopback port, one worker.

    Ready once the worker boots: a request sent before it has loaded the app
    waits in the listen backlog.
    """

    ready_marker = "Booting worker"

    def __init__(self, *, env: dict[str, str] | None = None) -> None:
        super().__init__(env=env)
        self.port = free_port()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        argv = procfile_argv("web")
        argv[argv.index("--bind") + 1] = f"127.0.0.1:{self.port}"
        argv[argv.index("--workers") + 1] = "1"
        return [sys.executable, "-m", *argv]
