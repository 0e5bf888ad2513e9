"""How many bridge processes ``manage.py pubsub_bridge`` starts by default.

One per CPU this process may run on, as ``celery worker`` starts one child
per CPU: a bridge process is one Python interpreter, and its GIL caps it
at about one core (bench/bridge.py: one process kept 1.35 of 2 cores busy,
two kept 1.9). At most :data:`AUTO_MAX`: the CPU count of a container is
often the host's, and each process holds its own streams, database
connections (``--batch-workers`` + 1) and ~100 MB.
"""

from __future__ import annotations

import os

AUTO_MAX = 4


def usable_cpus() -> int:
    """Return the number of CPUs this process may be scheduled on."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def processes_from(value: str) -> int:
    """Return the process count that ``PUBSUB_BRIDGE_PROCESSES=value`` means.

    ``auto`` (the default): the usable CPUs, at most :data:`AUTO_MAX`; else a
    positive whole number. Raises ValueError with the reason otherwise.
    """
    text = value.strip().lower()
    if text in ("", "auto"):
        return max(1, min(usable_cpus(), AUTO_MAX))
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise ValueError(
            f"PUBSUB_BRIDGE_PROCESSES must be 'auto' or a whole number >= 1, "
            f"not {value!r}"
        )
    return count
