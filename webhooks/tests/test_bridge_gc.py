"""The bridge collects its youngest generation less often than CPython would."""

from __future__ import annotations

import gc

from webhooks.management.commands.pubsub_bridge import gc_young_threshold_raise


def _young_collections(allocations: int) -> int:
    """Count the collections of the youngest generation while a batch of
    ``allocations`` containers is built (a batch's rows, alive until it is
    done; CPython counts allocations net of deallocations)."""
    seen = []

    def count(phase: str, info: dict) -> None:
        if phase == "start" and info["generation"] == 0:
            seen.append(1)

    gc.callbacks.append(count)
    try:
        batch = [[i] for i in range(allocations)]
        del batch
    finally:
        gc.callbacks.remove(count)
    return len(seen)


def test_a_batch_of_objects_no_longer_triggers_dozens_of_collections() -> None:
    saved = gc.get_threshold()
    try:
        gc.set_threshold(700, *saved[1:])  # CPython's default
        before = _young_collections(50_000)
        gc_young_threshold_raise()
        after = _young_collections(50_000)
        assert gc.get_threshold()[1:] == saved[1:]  # the older ones kept
    finally:
        gc.set_threshold(*saved)
    assert before >= 50  # ~one per 700 allocations
    assert after <= 6
