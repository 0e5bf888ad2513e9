"""CPU slots: admit a few threads at a time into the CPU-bound parts of a task.

The ``ai`` worker runs ~100 threads (Procfile) that spend nearly all their
time waiting on model calls, and one GIL. When many replies come back at
once (they do: a batch of messages goes out together and a model answers in
about the same time), every thread that has a reply wants the CPU for its
database work, and the GIL hands it round: each of them gets a slice, so all
of them finish late, together, and send their next model calls together, and
the burst comes back a model latency later, as wide as before. The waiting
threads also fight over the GIL in the HTTP client's send and receive paths,
which made each 1 s model call take 1.1-1.3 s in the worker (measured per
call in bench/ai_fanout.py: the server answered every request in 1.00 s).

A slot is a place in a small semaphore (``AI_WORKER_CPU_SLOTS``, default 1):
the reply task holds one while it claims the message and reads its history,
gives it back for the model call, and takes one again to store the reply. The
threads of a burst then go through one after the other; the first ones send
their next model calls early, so bursts spread out instead of repeating, and
threads waiting for a slot sleep instead of contending for the GIL. Measured
in bench/ai_fanout.py (500 messages, 100 threads, 1 s model): the model call
1.11-1.22 s → 1.01 s per message as the worker sees it.

A thread that already holds a slot does not take a second one (nested use
cannot deadlock), and one that has to wait for a slot gives its pooled
database connection back first (the holders may need one; inside a
transaction it cannot). The model SDKs' HTTP transport gives the slot back
while a request is on the network (conversations/providers/base.py), so a
slot covers the SDK's own CPU too: building the request and reading the
reply. ``AI_WORKER_CPU_SLOTS=0`` turns the slots off.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from django.conf import settings

from .sql import connection_release

_local = threading.local()
_guard = threading.Lock()
_semaphore: threading.BoundedSemaphore | None = None
_size: int | None = None


def _slots() -> threading.BoundedSemaphore | None:
    """Return the process's semaphore, sized by the current setting."""
    global _semaphore, _size
    size = int(getattr(settings, "AI_WORKER_CPU_SLOTS", 0) or 0)
    if size != _size:
        with _guard:
            if size != _size:
                _semaphore = threading.BoundedSemaphore(size) if size > 0 else None
                _size = size
    return _semaphore


@contextmanager
def cpu_slot() -> Iterator[None]:
    """Hold a CPU slot for the block (at once if this thread holds one)."""
    if getattr(_local, "held", None) is not None:
        yield
        return
    semaphore = _slots()
    if semaphore is None:
        yield
        return
    if not semaphore.acquire(blocking=False):
        # Never wait holding a pooled connection: the slot's holders may
        # need one (a reply's claim or write) and the pool is small.
        connection_release()
        semaphore.acquire()
    _local.held = semaphore
    try:
        yield
    finally:
        _local.held = None
        semaphore.release()


@contextmanager
def cpu_slot_released() -> Iterator[None]:
    """Give this thread's slot back for the block (a network wait), then
    queue for one again; nothing when the thread holds none."""
    semaphore = getattr(_local, "held", None)
    if semaphore is None:
        yield
        return
    _local.held = None
    semaphore.release()
    try:
        yield
    finally:
        semaphore.acquire()
        _local.held = semaphore
