"""Serve the fake model API from one asyncio loop, for benchmarks.

The threaded :class:`~vocoeng.testing.fake_ai.FakeModelServer` spends a thread
per keep-alive connection; at 100+ concurrent one-second requests on a 2-core
machine its own CPU use competes with what a benchmark measures. This server
answers the same requests (the same ``respond()`` code builds every reply)
from a single event loop and sleeps the latency with ``asyncio.sleep``.
Faults that sleep inside ``respond()`` ("hang") would block the loop: use the
threaded server for fault tests.

    python -m vocoeng.testing.fake_ai_async --port 8099 --latency 1.0
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
from http import HTTPStatus

from .fake_ai import FakeModelServer, Reply


class AsyncFakeModelServer:
    """Answer OpenAI/Anthropic requests on ``host:port`` after ``latency`` s."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, latency: float = 0.0):
        self.host, self.port, self.latency = host, port, latency
        # Used only to build replies; it is never started.
        self._replies = FakeModelServer(host, 0, latency=0.0)

    async def _handle(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        name, value = line.split(":", 1)
                        headers[name.strip().lower()] = value.strip()
                raw = await reader.readexactly(int(headers.get("content-length", 0)))
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = None
                path = target.split("?", 1)[0]
                reply: Reply = self._replies.respond(method, path, headers, body)
                if reply.status < 400 and self.latency > 0:
                    await asyncio.sleep(self.latency)
                payload = json.dumps(reply.body).encode()
                status = HTTPStatus(reply.status)
                extra = "".join(f"{k}: {v}\r\n" for k, v in reply.headers.items())
                writer.write(
                    (
                        f"HTTP/1.1 {status.value} {status.phrase}\r\n"
                        "Content-Type: application/json\r\n"
                        f"Content-Length: {len(payload)}\r\n{extra}\r\n"
                    ).encode()
                    + payload
                )
                await writer.drain()
                if headers.get("connection", "").lower() == "close":
                    break
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def serve(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set."""
        server = await asyncio.start_server(
            self._handle, self.host, self.port, backlog=2048
        )
        self.port = server.sockets[0].getsockname()[1]
        print(
            f"AsyncFakeModelServer listening on http://{self.host}:{self.port}",
            flush=True,
        )
        async with server:
            await stop.wait()


def main() -> None:
    """Run the server in the foreground until SIGINT or SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8099)
    parser.add_argument("--latency", type=float, default=0.0)
    args = parser.parse_args()

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await AsyncFakeModelServer(args.host, args.port, args.latency).serve(stop)

    asyncio.run(run())


if __name__ == "__main__":
    main()
