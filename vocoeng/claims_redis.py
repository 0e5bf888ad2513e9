"""Keep the bus's dedup claims in Redis (``PUBSUB_BRIDGE_DEDUP=redis``).

The same decisions as the database's claims (webhooks.bridge.dedup, the
ProcessedMessage table), in one Redis key per ``(kind, key)``:

- ``pending:<token>`` while a delivery enqueues the message's chain. The key
  expires after PUBSUB_BRIDGE_CLAIM_SECONDS: a bridge that died between claim
  and enqueue leaves a claim the next delivery takes over once it has expired,
  as the database's stale claims are taken over.
- ``done`` (or ``dead``) once the chain is in the broker (or the message is
  dead-lettered), kept PUBSUB_CLAIM_KEEP_DAYS: later deliveries are
  duplicates. Redis expires the keys itself; nothing needs pruning.

A batch's claims are one command: a server-side script sets each free key
(``SET NX PX``) and reads the value of each taken one, atomically, so two
bridges claiming the same key never both get it. Finishing or releasing a
batch is one more. Against the database's INSERT and UPDATE this saved
~14 µs of PostgreSQL CPU and ~8 µs of the bridge's per message
(bench/bridge.py).

Why the broker's Redis is the default home when the broker is Redis
(``auto``): a claim guards against a second chain in that broker. If that
Redis lost its data, it would lose the chains with the claims, so claims kept
there are as durable as what they guard, and they hold across bridge replicas
as the database's do. A release deletes only its own process's pending claim
(the token), never one another delivery took over.

An unreachable Redis raises :class:`ClaimStoreUnavailable`, a DatabaseError:
the callers treat it as they treat the database's refusal (nack, retry).
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from django.conf import settings
from django.db import DatabaseError

DONE = "done"
DEAD = "dead"
PENDING = "pending"

# KEYS: the claims; ARGV: the pending value, its lifetime (ms). Returns, per
# key, 1 if this call claimed it, else the value it holds.
_CLAIM = """
local out = {}
for i, k in ipairs(KEYS) do
  if redis.call('SET', k, ARGV[1], 'NX', 'PX', ARGV[2]) then
    out[i] = 1
  else
    out[i] = redis.call('GET', k)
  end
end
return out
"""
# KEYS: the claims; ARGV: their new value, its lifetime (ms).
_FINISH = """
for _, k in ipairs(KEYS) do
  redis.call('SET', k, ARGV[1], 'PX', ARGV[2])
end
return #KEYS
"""
# KEYS: the claims; ARGV: the pending value they must still hold.
_RELEASE = """
local n = 0
for _, k in ipairs(KEYS) do
  if redis.call('GET', k) == ARGV[1] then
    n = n + redis.call('DEL', k)
  end
end
return n
"""


class ClaimStoreUnavailable(DatabaseError):
    """Say the claim store (Redis) could not be reached or refused a command."""


class RedisClaims:
    """Claim, finish and release ``(kind, key)`` pairs in one Redis."""

    def __init__(self, url: str, *, prefix: str = "") -> None:
        import redis

        self.prefix = f"{prefix}vocoeng:claim:"
        self._client = redis.Redis.from_url(
            url, socket_connect_timeout=5, socket_timeout=30
        )
        self._errors = (redis.RedisError, OSError)
        self._claim = self._client.register_script(_CLAIM)
        self._finish = self._client.register_script(_FINISH)
        self._release = self._client.register_script(_RELEASE)
        self._pid = 0
        self._pending = ""

    def key(self, kind: str, key: str) -> str:
        """Return the Redis key of the claim of ``key`` of ``kind``."""
        return f"{self.prefix}{kind}:{key}"

    def pending_value(self) -> str:
        """Return this process's pending value (a fork gets its own)."""
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._pending = f"{PENDING}:{uuid.uuid4().hex}"
        return self._pending

    def claim_many(self, pairs: Sequence[tuple[str, str]]) -> list[str]:
        """Claim each distinct ``(kind, key)``; return, in order, ``claimed``,
        ``done``, ``dead`` or ``pending`` (another delivery holds it)."""
        if not pairs:
            return []
        ms = max(1, int(settings.PUBSUB_BRIDGE_CLAIM_SECONDS * 1000))
        found = self._call(
            self._claim,
            keys=[self.key(kind, key) for kind, key in pairs],
            args=[self.pending_value(), ms],
        )
        states = []
        for value in found:
            if value == 1:
                states.append("claimed")
            else:
                text = value.decode() if isinstance(value, bytes) else str(value)
                states.append(text.split(":", 1)[0])
        return states

    def finish_many(self, pairs: Iterable[tuple[str, str]], *, dead: bool) -> None:
        """Mark the claims done (or dead) for PUBSUB_CLAIM_KEEP_DAYS."""
        keys = [self.key(kind, key) for kind, key in pairs]
        if keys:
            keep = int(settings.PUBSUB_CLAIM_KEEP_DAYS * 86_400_000)
            self._call(self._finish, keys=keys, args=[DEAD if dead else DONE, keep])

    def release_many(self, pairs: Iterable[tuple[str, str]]) -> None:
        """Drop this process's pending claims, so redeliveries can claim again."""
        keys = [self.key(kind, key) for kind, key in pairs]
        if keys:
            self._call(self._release, keys=keys, args=[self.pending_value()])

    def clear(self) -> int:
        """Delete every claim under this store's prefix; return how many
        (tests and benchmarks; an operator leaving Redis for the database)."""
        return self._call(self._clear)

    def _clear(self) -> int:
        deleted = 0
        batch: list[bytes] = []
        for name in self._client.scan_iter(f"{self.prefix}*", count=5000):
            batch.append(name)
            if len(batch) >= 5000:
                deleted += self._client.delete(*batch)
                batch.clear()
        if batch:
            deleted += self._client.delete(*batch)
        return deleted

    def state(self, kind: str, key: str) -> str | None:
        """Return the claim's state (``pending``, ``done``, ``dead``) or None."""
        value = self._call(self._client.get, self.key(kind, key))
        return None if value is None else value.decode().split(":", 1)[0]

    def ttl(self, kind: str, key: str) -> float | None:
        """Return the seconds the claim has left, or None if there is none."""
        ms = self._call(self._client.pttl, self.key(kind, key))
        return None if ms < 0 else ms / 1000

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except self._errors as exc:
            raise ClaimStoreUnavailable(
                f"claim store (Redis) unavailable: {type(exc).__name__}: {exc}"
            ) from exc


_lock = threading.Lock()
_stores: dict[tuple[str, str], RedisClaims] = {}


def redis_store() -> RedisClaims | None:
    """Return the Redis claim store when the settings choose Redis, else None
    (the claims are rows of the database)."""
    if settings.PUBSUB_BRIDGE_DEDUP != "redis":
        return None
    url = settings.PUBSUB_BRIDGE_DEDUP_REDIS_URL
    prefix = settings.PUBSUB_BRIDGE_DEDUP_KEY_PREFIX
    store = _stores.get((url, prefix))
    if store is None:
        with _lock:
            store = _stores.get((url, prefix))
            if store is None:
                store = _stores[(url, prefix)] = RedisClaims(url, prefix=prefix)
    return store
