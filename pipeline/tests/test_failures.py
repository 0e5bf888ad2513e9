"""Limits and crashes through real workers: step timeout, job deadline, SIGKILL."""

from __future__ import annotations

import pytest
from django.conf import settings

from conftest import wait_for
from conversations.models import AICall
from pipeline import services
from pipeline.models import Run, StepProgress
from vocoeng.services import tenant_get_default

from .conftest import worker_env

pytestmark = [pytest.mark.timeout(150)]

PERSONAS = ["optimist", "skeptic", "engineer"]


def _start(idea: str = "Floating gardens") -> Run:
    run, _ = services.run_start(
        tenant=tenant_get_default(), idea=idea, personas=PERSONAS
    )
    return run


def _status(run_id, name: str) -> str:
    return StepProgress.objects.get(run_id=run_id, name=name).status


def _finished(run_id, timeout: float = 60) -> Run:
    return wait_for(
        lambda: Run.objects.filter(pk=run_id, status__in=Run.FINISHED).first(),
        timeout=timeout,
    )


def test_a_hanging_step_is_failed_by_its_time_limit(
    celery_worker_factory, fake_ai_server, scripted
) -> None:
    model = scripted(hold={"review:skeptic"})
    celery_worker_factory(
        env=worker_env(
            fake_ai_server, WORKER_STEP_TIMEOUT_SECONDS=8, MAX_RETRIES_PER_PERSONA=0
        )
    )
    try:
        run = _finished(_start().pk)
    finally:
        model.release.set()
    assert run.status == Run.Status.PARTIAL, (run.error, run.error_context)
    step = run.steps.get(name="review:skeptic")
    assert step.status == StepProgress.Status.FAILED
    assert "time limit exceeded" in step.error
    assert run.result["failed_reviews"] == {"skeptic": step.error}


def test_the_job_deadline_holds_while_a_step_hangs(
    celery_worker_factory, fake_ai_server, scripted, settings
) -> None:
    model = scripted(hold={"expand"})
    worker = celery_worker_factory(env=worker_env(fake_ai_server))
    run = _start()
    wait_for(lambda: _status(run.pk, "expand") == "running")
    settings.WORKER_JOB_TIMEOUT_SECONDS = 1  # the reaper's view, in this process
    wait_for(lambda: services.runs_reap()["timed_out"], timeout=10, interval=0.3)
    run.refresh_from_db()
    assert run.status == Run.Status.TIMED_OUT
    assert _status(run.pk, "expand") == "failed"
    model.release.set()
    # The hung call answers at last; its late write must not revive the run.
    wait_for(lambda: f"idempotent_skip run={run.pk} step=review:" in worker.output())
    assert AICall.objects.filter(ref=f"run:{run.pk}:expand").exists()
    run.refresh_from_db()
    assert run.status == Run.Status.TIMED_OUT
    assert _status(run.pk, "expand") == "failed"
    assert model.count("review:optimist") == 0


def test_a_worker_killed_during_the_reviews_is_recovered_without_redoing_steps(
    celery_worker_factory, fake_ai_server, scripted
) -> None:
    model = scripted(hold={"review:skeptic", "review:engineer"})
    first = celery_worker_factory(env=worker_env(fake_ai_server))
    run = _start()
    wait_for(lambda: _status(run.pk, "review:optimist") == "succeeded")
    wait_for(lambda: model.count("review:skeptic") and model.count("review:engineer"))
    first.kill()
    model.hold.clear()
    model.release.set()
    # A restarted worker treats a claim older than its hard limit (8 + 1 s)
    # as abandoned; the visibility timeout stays above it. (8 s, not less: a
    # fresh worker's first call imports the SDK, seconds on a loaded machine.)
    quick = {
        "WORKER_STEP_TIMEOUT_SECONDS": 8,
        "PIPELINE_STEP_GRACE_SECONDS": 1,
        "CELERY_VISIBILITY_TIMEOUT": 10,
    }
    celery_worker_factory(env=worker_env(fake_ai_server, **quick))
    if not settings.CELERY_BROKER_URL.startswith("redis"):
        # The filesystem broker loses what a killed worker had taken: the
        # operator (or the reaper, once the claims are stale) resumes the run.
        assert services.run_resume(run_id=run.pk) is not None
    run = _finished(run.pk, timeout=90)
    assert run.status == Run.Status.SUCCEEDED, (run.error, run.error_context)
    assert model.count("expand") == 1
    assert model.count("review:optimist") == 1
    assert model.count("aggregate") == 1
    for persona in ("skeptic", "engineer"):
        assert model.count(f"review:{persona}") == 2  # the lost call, then one
    assert run.steps.get(name="expand").attempts == 1
    assert run.steps.get(name="review:optimist").attempts == 1
