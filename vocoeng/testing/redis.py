"""The local Redis the tests that need one use (database 15, apart from queues)."""

from __future__ import annotations

import socket

import pytest

URL = "redis://127.0.0.1:6379/15"


def redis_up() -> bool:
    """Say whether a Redis server listens on 127.0.0.1:6379."""
    try:
        socket.create_connection(("127.0.0.1", 6379), 0.5).close()
    except OSError:
        return False
    return True


# Redis runs on the CI machine (and on every machine of this kind); without
# it the code under test has no server to talk to.
needs_redis = pytest.mark.skipif(
    not redis_up(), reason="needs a Redis server on 127.0.0.1:6379"
)
