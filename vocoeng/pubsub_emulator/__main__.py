"""Run the Pub/Sub emulator until interrupted."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from types import FrameType

from vocoeng.pubsub_emulator._server import PubSubEmulator

logger = logging.getLogger("vocoeng.pubsub_emulator")


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, serve, and shut down cleanly on SIGINT / SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="python -m vocoeng.pubsub_emulator",
        description="In-memory Google Cloud Pub/Sub emulator (gRPC).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8085)
    parser.add_argument(
        "--max-workers",
        type=int,
        default=128,
        help="server threads; each open StreamingPull holds one",
    )
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )

    emulator = PubSubEmulator(
        host=args.host, port=args.port, max_workers=args.max_workers
    )
    emulator.start()
    done = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    # Supervisors and scripts wait for this line before exporting the address.
    print(f"export PUBSUB_EMULATOR_HOST={emulator.address}", flush=True)
    # Event.wait with a timeout keeps the main thread responsive to signals.
    while not done.wait(1.0):
        pass
    logger.info("Shutting down")
    emulator.stop()


if __name__ == "__main__":
    main()
