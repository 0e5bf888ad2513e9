"""The pipeline through a real ``celery worker`` process and the fake model."""

from __future__ import annotations

import pytest

from conftest import wait_for
from conversations.models import AICall
from pipeline import services
from pipeline.models import Run, StepProgress
from pipeline.routes import pipeline_job
from pipeline.selectors import run_progress
from vocoeng.services import tenant_get_default

from .conftest import worker_env

pytestmark = [pytest.mark.timeout(120)]

PERSONAS = ["optimist", "skeptic", "engineer"]


def _finished(run_id):
    return wait_for(
        lambda: Run.objects.filter(pk=run_id, status__in=Run.FINISHED).first(),
        timeout=60,
    )


def test_a_run_succeeds_with_every_step_and_the_consensus(
    celery_worker_factory, fake_ai_server, scripted
) -> None:
    model = scripted()
    worker = celery_worker_factory(env=worker_env(fake_ai_server))
    run, created = services.run_start(
        tenant=tenant_get_default(), idea="A bakery on the moon", personas=PERSONAS
    )
    assert created
    run = _finished(run.pk)
    assert run.status == Run.Status.SUCCEEDED, (run.error, worker.output()[-3000:])
    assert run_progress(run=run)["percent"] == 100
    assert run.result["consensus"]["verdict"] == "approve"
    assert set(run.result["reviews"]) == set(PERSONAS)
    assert run.result["failed_reviews"] == {}
    steps = {s.name: s for s in run.steps.all()}
    assert all(s.status == StepProgress.Status.SUCCEEDED for s in steps.values())
    assert all(s.attempts == 1 and s.total_tokens > 0 for s in steps.values())
    assert run.total_tokens == sum(s.total_tokens for s in steps.values())
    # One model call per step, each in the ledger under the run's ref.
    for name in steps:
        assert model.count(name) == 1
        assert AICall.objects.filter(ref=f"run:{run.pk}:{name}").count() == 1
    out = worker.output()
    for event in ("job_started", "step_started", "step_completed", "job_completed"):
        assert f"{event} run={run.pk}" in out
    # Only the chord's header stores results (the chord counts them).
    from django_celery_results.models import TaskResult

    stored = TaskResult.objects.values_list("task_name", flat=True)
    assert sorted(stored) == ["pipeline.review"] * len(PERSONAS)


def test_one_persona_failing_every_time_makes_the_run_partial(
    celery_worker_factory, fake_ai_server, scripted
) -> None:
    scripted(fail={"review:skeptic"})
    celery_worker_factory(env=worker_env(fake_ai_server))
    run, _ = services.run_start(
        tenant=tenant_get_default(), idea="Solar kettles", personas=PERSONAS
    )
    run = _finished(run.pk)
    assert run.status == Run.Status.PARTIAL
    failed = run.steps.get(name="review:skeptic")
    assert failed.status == StepProgress.Status.FAILED
    assert "500" in failed.error
    assert failed.attempts == 2  # the first try + MAX_RETRIES_PER_PERSONA=1
    assert run.result["failed_reviews"] == {"skeptic": failed.error}
    assert set(run.result["reviews"]) == {"optimist", "engineer"}
    assert run.steps.get(name="aggregate").status == StepProgress.Status.SUCCEEDED


def test_every_persona_failing_fails_the_run_with_context(
    celery_worker_factory, fake_ai_server, scripted
) -> None:
    scripted(garbage={f"review:{p}" for p in PERSONAS})
    worker = celery_worker_factory(env=worker_env(fake_ai_server))
    run, _ = services.run_start(
        tenant=tenant_get_default(), idea="Ice hotels", personas=PERSONAS
    )
    run = _finished(run.pk)
    assert run.status == Run.Status.FAILED
    assert run.error.startswith("only 0 of 3 reviews succeeded")
    assert run.error_context["required"] == 2
    assert set(run.error_context["failed"]) == set(PERSONAS)
    assert (
        "not the expected JSON after one repair"
        in (run.error_context["failed"]["skeptic"])
    )
    assert run.steps.get(name="aggregate").status == StepProgress.Status.SKIPPED
    assert f"job_failed run={run.pk}" in worker.output()


def test_duplicate_job_deliveries_yield_one_run_computed_once(
    celery_worker_factory, fake_ai_server, scripted
) -> None:
    model = scripted()
    worker = celery_worker_factory(env=worker_env(fake_ai_server))
    job = {"idea": "Dog yoga", "personas": PERSONAS, "idempotency_key": "job-1"}
    # Two deliveries before the worker picked either up: both enqueue a canvas.
    first = pipeline_job(data=job, attributes={})
    second = pipeline_job(data=job, attributes={})
    assert first is not None and second is not None
    first.apply_async()
    second.apply_async()
    run = Run.objects.get(idempotency_key="job-1")
    run = _finished(run.pk)
    assert run.status == Run.Status.SUCCEEDED
    assert Run.objects.count() == 1
    for step in run.steps.all():
        assert model.count(step.name) == 1, step.name
        assert step.attempts == 1
    # A delivery for the finished run: skipped, nothing enqueued.
    assert pipeline_job(data=job, attributes={}) is None
    assert pipeline_job(data={"run_id": str(run.pk)}, attributes={}) is None
    # The second canvas may still be draining when the first finishes the run:
    # wait for its skips, then check it made no model call of its own.
    wait_for(lambda: "idempotent_skip" in worker.output(), timeout=30)
    assert len(fake_ai_server.calls()) == len(model.seen) == 5
