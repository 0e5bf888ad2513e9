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


def test_celery_reads_the_celery_settings_of_django_from_one_dict() -> None:
    """``app.conf`` sees the ``CELERY_*`` Django settings, Celery's defaults
    for the others, and what is set on it at run time (vocoeng.celery)."""
    from django.conf import settings

    from vocoeng.celery import _CelerySettings, app

    source = app._config_source
    assert isinstance(source, _CelerySettings)
    assert source["CELERY_TASK_ACKS_LATE"] == settings.CELERY_TASK_ACKS_LATE
    assert "CELERY_TASK_SEND_SENT_EVENT" not in source  # left at Celery's default
    assert app.conf.task_acks_late == settings.CELERY_TASK_ACKS_LATE
    assert app.conf.broker_url == settings.CELERY_BROKER_URL
    assert app.conf.task_send_sent_event is False
    saved = app.conf.task_always_eager
    app.conf.task_always_eager = not saved
    try:
        assert app.conf.task_always_eager is (not saved)
    finally:
        app.conf.task_always_eager = saved
