"""What vocoeng/celery.py adds to a Celery worker."""

from __future__ import annotations

import gc

from celery.signals import worker_process_init, worker_ready

from vocoeng.celery import gc_freeze


def test_a_ready_worker_keeps_its_start_up_objects_out_of_the_gc() -> None:
    receivers = [r() for _, r in worker_ready.receivers]
    assert gc_freeze in receivers
    assert gc_freeze in [r() for _, r in worker_process_init.receivers]
    gc.unfreeze()
    try:
        assert gc.get_freeze_count() == 0
        gc_freeze()
        frozen = gc.get_freeze_count()
        assert frozen > 10_000  # Django, the apps, the SDKs, pytest
        # What is frozen is not walked again: a full collection now sees
        # only what was made since.
        assert len(gc.get_objects()) < frozen
    finally:
        gc.unfreeze()
