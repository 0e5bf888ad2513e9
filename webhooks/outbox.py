"""Queue the tasks of recorded deliveries from a thread of the web process.

A webhook is answered once its delivery is committed (webhooks.handoff): the
row is what nothing may lose. Its ``webhooks.deliveries_process`` task is
then published from here, by one thread per process, for every delivery
committed since the last publish at once: one broker round trip and one task
message for many requests, none of them waiting for it.

Nothing is lost when the broker is down or the process dies first: a
delivery stays ``received`` until a worker processes it, and the sweep
(``webhooks.services.deliveries_sweep``, a beat task) queues again any that
is still ``received`` after WEBHOOK_SWEEP_AFTER_SECONDS. Meanwhile the
thread keeps what it could not publish and tries again, backing off from
0.5 s to 30 s, so a short outage costs no sweep; it keeps at most
``MAX_HELD`` deliveries (the oldest beyond are left to the sweep), and on
the way out (``atexit``: gunicorn's workers exit through it) it publishes
what is left, for up to ``EXIT_SECONDS``.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

logger = logging.getLogger(__name__)

Item = tuple[str, str | None]  # (delivery id, correlation id)


class Outbox:
    """Publish queued items in batches from a thread of their own.

    ``publish(items)`` sends one batch (at most ``max_batch`` items) and
    raises if the broker refused it. ``linger``: seconds the thread waits,
    once an item is queued, before it takes the batch, so that the items of
    the requests that follow go with it (one publish instead of several).
    The thread starts with the first item (in each process: a forked child
    starts its own and drops what its parent held, which the parent
    publishes).
    """

    MAX_HELD = 100_000
    EXIT_SECONDS = 5.0
    BACKOFF = (0.5, 30.0)

    def __init__(
        self,
        publish: Callable[[Sequence[Item]], object],
        *,
        max_batch: int = 200,
        linger: float = 0.0,
    ) -> None:
        self.publish = publish
        self.max_batch = max_batch
        self.linger = linger
        self.cond = threading.Condition()
        self.items: deque[Item] = deque()
        self._in_flight = 0  # items taken from ``items``, being published
        self.failures = 0  # publishes refused in a row
        self.pid: int | None = None
        self._retry = threading.Event()  # ends the wait between two tries

    def put(self, items: Sequence[Item]) -> None:
        """Queue ``items`` for the next publish; never blocks on the broker."""
        with self.cond:
            if self.pid != os.getpid():
                self._start()
            self.items.extend(items)
            if (excess := len(self.items) - self.MAX_HELD) > 0:
                for _ in range(excess):
                    self.items.popleft()
                logger.warning(
                    "webhook_outbox_full dropped=%d (left to the sweep)", excess
                )
            self.cond.notify()

    @property
    def busy(self) -> bool:
        """Say whether a batch taken from ``items`` is being published."""
        return self._in_flight > 0

    def pending(self) -> int:
        """Return how many items wait for a publish (in flight included)."""
        with self.cond:
            return len(self.items) + self._in_flight

    def flush(self, timeout: float) -> bool:
        """Wait until every queued item is published; say whether they were."""
        deadline = time.monotonic() + timeout
        with self.cond:
            if self.pid != os.getpid():
                return not self.items  # no thread here: nothing of ours queued
            while self.items or self.busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(left)
            return True

    def settle(self, timeout: float) -> None:
        """Try at once to publish what is held; drop what is still not
        published after ``timeout`` (tests: nothing spills into the next)."""
        self._retry.set()
        if not self.flush(timeout):
            with self.cond:
                self.items.clear()

    def close(self) -> None:
        """Publish what is left before the process exits (``atexit``)."""
        if self.pid != os.getpid() or not self.pending():
            return
        if not self.flush(self.EXIT_SECONDS):
            logger.warning(
                "webhook_outbox_unpublished deliveries=%d (left to the sweep)",
                self.pending(),
            )

    def _start(self) -> None:
        # Called with the lock held, in a new process or the first time.
        self.items.clear()  # a parent's items: the parent publishes them
        self.failures, self._in_flight = 0, 0
        self.pid = os.getpid()
        thread = threading.Thread(target=self._run, name="webhook-outbox", daemon=True)
        thread.start()

    def _run(self) -> None:
        while True:
            with self.cond:
                while not self.items:
                    self.cond.wait()
                linger = self.linger and len(self.items) < self.max_batch
            if linger:  # let the items of the next few requests join
                time.sleep(self.linger)
            with self.cond:
                n = min(len(self.items), self.max_batch)
                if not n:  # dropped meanwhile (settle)
                    continue
                batch = [self.items.popleft() for _ in range(n)]
                self._in_flight = n
            try:
                self.publish(batch)
            except Exception as exc:  # broker down: kept, tried again
                with self.cond:
                    self.items.extendleft(reversed(batch))
                    self._in_flight = 0
                    self.failures += 1
                    failures = self.failures
                    self.cond.notify_all()
                if failures == 1 or failures % 20 == 0:
                    logger.warning(
                        "webhook_outbox_refused deliveries=%d tries=%d error=%s",
                        self.pending(),
                        failures,
                        f"{type(exc).__name__}: {exc}"[:200],
                        exc_info=failures == 1,
                    )
                low, high = self.BACKOFF
                self._retry.wait(min(high, low * 2 ** min(failures - 1, 16)))
                self._retry.clear()
                continue
            with self.cond:
                if self.failures:
                    logger.warning(
                        "webhook_outbox_recovered after=%d tries", self.failures
                    )
                self._in_flight, self.failures = 0, 0
                self.cond.notify_all()


def outbox(publish: Callable[[Sequence[Item]], object], **kwargs: float) -> Outbox:
    """Return a new Outbox that publishes what it holds at the process's exit."""
    box = Outbox(publish, **kwargs)
    atexit.register(box.close)
    return box
