"""Redis transport for Celery that reuses its Redis client.

kombu's Redis channel builds a new ``redis.Redis`` object for every
synchronous operation (each delivered message's unacked bookkeeping, each
ack, each publish). With redis-py 8 building one costs more than the command
it sends: profiling the ``ai`` worker (``py-spy --gil``) put ~10% of its GIL
time in ``Redis.__init__``. A ``redis.Redis`` client is thread-safe (every
command takes a connection from the channel's pool), so one per channel is
enough. Selected by ``vocoeng.settings`` for ``redis://`` and ``rediss://``
broker URLs.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):
    """Create the synchronous client once per channel and pool."""

    _sync_client: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)
        client = self._sync_client
        if client is None or client.connection_pool is not self.pool:
            client = self._sync_client = super()._create_client()
        return client


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with :class:`Channel`."""

    Channel = Channel
