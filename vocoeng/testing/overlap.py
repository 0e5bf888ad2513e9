"""Run two database transactions at once, as two processes would, for lock tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any


def transactions_at_once(
    work: Callable[[Any], None], inputs: Sequence[Any], *, hold_seconds: float = 0.3
) -> list[BaseException]:
    """Run ``work(input)`` for each input, each on its own thread and connection.

    All start together; each runs in a transaction kept open ``hold_seconds``
    after its work (as a batch holds its rows until it commits), so their
    statements overlap. Returns what they raised (PostgreSQL's "deadlock
    detected", say); an empty list when all committed.
    """
    from django.db import connection, transaction

    start = threading.Barrier(len(inputs))
    failures: list[BaseException] = []

    def run(item: Any) -> None:
        try:
            start.wait()
            with transaction.atomic():
                work(item)
                time.sleep(hold_seconds)
        except BaseException as exc:  # the caller asserts on them
            failures.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(item,)) for item in inputs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return failures
