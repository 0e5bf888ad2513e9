"""In-repository Google Cloud Pub/Sub emulator speaking the real gRPC API.

Run ``python -m vocoeng.pubsub_emulator --port 8085`` and export
``PUBSUB_EMULATOR_HOST=127.0.0.1:8085``, or embed :class:`PubSubEmulator`::

    with PubSubEmulator() as emulator:
        os.environ["PUBSUB_EMULATOR_HOST"] = emulator.address
"""

from __future__ import annotations

from vocoeng.pubsub_emulator._server import PubSubEmulator

__all__ = ["PubSubEmulator"]
