"""Services in-process: JSON repair, claims, aggregation, cancel, reaper, resume."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta

import pytest
from django.utils import timezone

from conversations.models import AICall
from pipeline import services, steps
from pipeline.models import Run
from pipeline.prompts import REVIEW_SCHEMA
from pipeline.structured import StepError, generate_json, parse_json
from vocoeng.services import tenant_get_default

pytestmark = [pytest.mark.django_db, pytest.mark.timeout(60)]

PERSONAS = ["optimist", "skeptic", "engineer"]


@pytest.fixture(autouse=True)
def _fast(settings):
    settings.MAX_RETRIES_PER_PERSONA = 0
    settings.AI_MAX_RETRIES = 0


def _run(**kwargs) -> Run:
    run, created = services.run_create(
        tenant=tenant_get_default(), idea="Tea robots", personas=PERSONAS, **kwargs
    )
    assert created
    return run


def _all_steps(run: Run) -> dict[str, str]:
    for name in services.step_names(PERSONAS):
        steps.step_execute(run_id=run.pk, name=name)
    return dict(run.steps.values_list("name", "status"))


def test_parse_json_accepts_fenced_json_and_explains_what_is_wrong() -> None:
    good = (
        '```json\n{"verdict": "revise", "score": 4, "strengths": [], "risks": []}\n```'
    )
    assert parse_json(good, REVIEW_SCHEMA)["score"] == 4
    with pytest.raises(ValueError, match="no JSON object"):
        parse_json("no idea", REVIEW_SCHEMA)
    with pytest.raises(ValueError, match="score"):
        parse_json(
            '{"verdict": "revise", "score": 11, "strengths": [], "risks": []}',
            REVIEW_SCHEMA,
        )


def test_invalid_json_is_repaired_once_by_a_follow_up_call(scripted) -> None:
    model = scripted(garbage_once={"review:skeptic"})
    run = _run()
    step = run.steps.get(name="review:skeptic")
    answer = generate_json(
        prompt="TASK: review\nPERSONA: skeptic\n",
        schema=REVIEW_SCHEMA,
        step_id=step.pk,
        tenant_id=run.tenant_id,
        ref=f"run:{run.pk}:review:skeptic",
        deadline=time.monotonic() + 10,
    )
    assert answer.data["verdict"] == "approve"
    assert model.count("review:skeptic") == 2
    calls = AICall.objects.filter(ref=f"run:{run.pk}:review:skeptic")
    assert calls.count() == 2
    step.refresh_from_db()
    assert step.total_tokens == sum(c.total_tokens for c in calls) > 0


def test_output_still_invalid_after_the_repair_is_a_step_error(scripted) -> None:
    model = scripted(garbage={"review:skeptic"})
    run = _run()
    step = run.steps.get(name="review:skeptic")
    with pytest.raises(StepError, match="after one repair"):
        generate_json(
            prompt="TASK: review\nPERSONA: skeptic\n",
            schema=REVIEW_SCHEMA,
            step_id=step.pk,
            tenant_id=run.tenant_id,
            ref="r",
            deadline=time.monotonic() + 10,
        )
    assert model.count("review:skeptic") == 2


def test_a_finished_step_is_not_recomputed(scripted) -> None:
    model = scripted()
    run = _run()
    first = steps.step_execute(run_id=run.pk, name="expand")
    again = steps.step_execute(run_id=run.pk, name="expand")
    assert first.status == again.status == "succeeded"
    assert again.output == first.output
    assert model.count("expand") == 1
    assert run.steps.get(name="expand").attempts == 1


def test_a_step_held_by_a_live_worker_waits_and_a_stale_claim_is_retaken(
    scripted, settings
) -> None:
    scripted()
    run = _run()
    now = timezone.now()
    run.steps.filter(name="expand").update(status="running", started_at=now, attempts=1)
    assert steps.step_execute(run_id=run.pk, name="expand").action == "wait"
    stale = now - timedelta(seconds=steps.step_hard_limit() + 1)
    run.steps.filter(name="expand").update(started_at=stale)
    outcome = steps.step_execute(run_id=run.pk, name="expand")
    assert outcome.status == "succeeded"
    assert run.steps.get(name="expand").attempts == 2


def test_a_review_before_its_brief_waits(scripted) -> None:
    model = scripted()
    run = _run()
    assert steps.step_execute(run_id=run.pk, name="review:optimist").action == "wait"
    assert model.seen == []


def test_a_step_that_must_wait_or_cannot_run_is_not_claimed(scripted) -> None:
    scripted(garbage={"expand"})
    run = _run()

    def untouched(name: str) -> bool:
        step = run.steps.get(name=name)
        return step.status == "pending" and step.attempts == 0

    assert steps.step_execute(run_id=run.pk, name="review:optimist").action == "wait"
    assert steps.step_execute(run_id=run.pk, name="aggregate").action == "wait"
    assert untouched("review:optimist") and untouched("aggregate")
    run.refresh_from_db()
    assert run.status == Run.Status.QUEUED and run.started_at is None
    assert steps.step_execute(run_id=run.pk, name="expand").status == "failed"
    blocked = steps.step_execute(run_id=run.pk, name="review:optimist")
    assert blocked.status == "skipped"
    assert run.steps.get(name="review:optimist").attempts == 0


def test_the_first_claimed_step_starts_the_run(scripted) -> None:
    scripted()
    run = _run()
    assert steps.step_execute(run_id=run.pk, name="expand").status == "succeeded"
    run.refresh_from_db()
    assert run.status == Run.Status.RUNNING and run.started_at is not None
    started = run.started_at
    steps.step_execute(run_id=run.pk, name="review:optimist")
    run.refresh_from_db()
    assert run.started_at == started


def test_a_failed_model_attempt_is_in_the_ledger_without_usage(scripted) -> None:
    scripted(fail={"expand"})
    run = _run()
    assert steps.step_execute(run_id=run.pk, name="expand").status == "failed"
    calls = AICall.objects.filter(ref=f"run:{run.pk}:expand")
    assert calls.exists()  # each provider's attempt (the fallback's too)
    for call in calls:
        assert call.status == AICall.Status.FAILED
        assert call.tenant_id == run.tenant_id and call.http_status == 500
        assert call.total_tokens == 0 and call.created_at is not None
    step = run.steps.get(name="expand")
    assert (step.total_tokens, step.cost) == (0, 0)


def test_an_aggregate_that_lost_its_claim_does_not_finish_the_run(scripted) -> None:
    scripted()
    run = _run()
    for name in services.step_names(PERSONAS)[:-1]:
        steps.step_execute(run_id=run.pk, name=name)
    aggregate = run.steps.get(name="aggregate")
    # Claimed by attempt 1, then retaken by attempt 2 (a stale claim).
    run.steps.filter(pk=aggregate.pk).update(status="running", attempts=2)
    close = {"status": Run.Status.SUCCEEDED, "result": {"x": 1}, "error": ""}
    assert not steps._finish(
        aggregate, 1, status="succeeded", output={"x": 1}, close=close
    )
    run.refresh_from_db()
    assert run.status == Run.Status.RUNNING and run.result is None
    assert run.steps.get(name="aggregate").status == "running"
    assert steps._finish(aggregate, 2, status="succeeded", output={"x": 1}, close=close)
    run.refresh_from_db()
    assert run.status == Run.Status.SUCCEEDED and run.result == {"x": 1}
    assert run.finished_at is not None
    assert run.total_tokens == sum(s.total_tokens for s in run.steps.all()) > 0


def test_all_but_one_review_is_enough_and_the_run_is_partial(scripted) -> None:
    scripted(garbage={"review:engineer"})
    run = _run()
    states = _all_steps(run)
    run.refresh_from_db()
    assert run.status == Run.Status.PARTIAL
    assert states["review:engineer"] == "failed"
    assert states["aggregate"] == "succeeded"
    assert run.result["failed_reviews"].keys() == {"engineer"}


def test_too_few_reviews_fail_the_run_with_the_reasons(scripted, settings) -> None:
    settings.PIPELINE_MIN_REVIEWS = 3
    model = scripted(garbage={"review:engineer"})
    run = _run()
    states = _all_steps(run)
    run.refresh_from_db()
    assert run.status == Run.Status.FAILED
    assert states["aggregate"] == "skipped"
    assert run.error_context["required"] == 3
    assert "engineer" in run.error_context["failed"]
    assert model.count("aggregate") == 0


def test_a_transient_failure_within_budget_asks_for_a_retry(scripted, settings) -> None:
    settings.MAX_RETRIES_PER_PERSONA = 2
    scripted(fail={"expand"})
    run = _run()
    outcome = steps.step_execute(run_id=run.pk, name="expand", failures=0)
    assert outcome.action == "retry" and outcome.countdown > 0
    assert run.steps.get(name="expand").status == "pending"
    last = steps.step_execute(run_id=run.pk, name="expand", failures=2)
    assert last.action == "done" and last.status == "failed"
    run.refresh_from_db()
    assert run.status == Run.Status.FAILED
    assert run.error_context["step"] == "expand"


def test_a_cancelled_run_does_no_more_work(scripted) -> None:
    model = scripted()
    run = _run()
    assert services.run_cancel(run=run)
    assert not services.run_cancel(run=run)  # once
    outcome = steps.step_execute(run_id=run.pk, name="expand")
    assert outcome.status == "skipped"
    assert model.seen == []
    run.refresh_from_db()
    assert run.status == Run.Status.CANCELLED
    assert set(run.steps.values_list("status", flat=True)) == {"skipped"}


def test_the_reaper_times_out_overdue_runs_and_fails_their_running_steps(
    settings,
) -> None:
    settings.WORKER_JOB_TIMEOUT_SECONDS = 60
    run = _run()
    fresh = _run()
    long_ago = timezone.now() - timedelta(seconds=61)
    Run.objects.filter(pk=run.pk).update(status="running", started_at=long_ago)
    run.steps.filter(name="expand").update(
        status="running", started_at=long_ago, attempts=1
    )
    assert services.runs_reap()["timed_out"] == 1
    run.refresh_from_db()
    assert run.status == Run.Status.TIMED_OUT
    assert run.error_context["deadline_seconds"] == 60
    expand = run.steps.get(name="expand")
    assert expand.status == "failed" and expand.error == "job deadline exceeded"
    fresh.refresh_from_db()
    assert fresh.status == Run.Status.QUEUED
    assert services.runs_reap()["timed_out"] == 0


def test_resume_redoes_only_the_unfinished_steps(scripted) -> None:
    model = scripted(garbage={"review:engineer"})
    run = _run()
    _all_steps(run)
    run.refresh_from_db()
    assert run.status == Run.Status.PARTIAL
    model.garbage.clear()
    resumed = services.run_resume(run_id=run.pk)
    assert resumed is not None and resumed.attempts == 2
    assert resumed.status == Run.Status.QUEUED
    _all_steps(run)
    run.refresh_from_db()
    assert run.status == Run.Status.SUCCEEDED
    assert model.count("expand") == 1
    assert model.count("review:optimist") == 1
    assert model.count("review:engineer") == 3  # answer + repair, then one
    assert model.count("aggregate") == 2
    assert services.run_resume(run_id=run.pk) is None  # succeeded: nothing to redo


def test_an_exhausted_tenant_budget_fails_the_step_without_a_model_call(
    scripted, settings
) -> None:
    settings.MAX_RETRIES_PER_PERSONA = 3  # not retried all the same
    model = scripted()
    tenant = tenant_get_default()
    tenant.monthly_budget = 0
    tenant.save()
    run = _run()
    outcome = steps.step_execute(run_id=run.pk, name="expand", failures=0)
    assert outcome.action == "done" and outcome.status == "failed"
    step = run.steps.get(name="expand")
    assert "monthly AI budget" in step.error
    assert model.count("expand") == 0
    assert not AICall.objects.exists()


def test_a_tenant_with_a_budget_runs_every_step_through_its_spend_guard(
    scripted,
) -> None:
    scripted()
    tenant = tenant_get_default()
    tenant.monthly_budget = 100
    tenant.save()
    run = _run()
    assert set(_all_steps(run).values()) == {"succeeded"}
    run.refresh_from_db()
    assert run.status == Run.Status.SUCCEEDED
    calls = AICall.objects.filter(tenant=tenant, ref__startswith=f"run:{run.pk}:")
    # The guard admitted each call with a started row, then completed it.
    assert calls.count() == len(services.step_names(PERSONAS))
    assert set(calls.values_list("status", flat=True)) == {AICall.Status.SUCCEEDED}
    for step in run.steps.all():
        ledger = calls.filter(ref=f"run:{run.pk}:{step.name}").get()
        assert (step.prompt_tokens, step.completion_tokens, step.cost) == (
            ledger.prompt_tokens,
            ledger.completion_tokens,
            ledger.cost,
        )
    assert run.total_tokens == sum(s.total_tokens for s in run.steps.all()) > 0
    assert run.cost == sum(s.cost for s in run.steps.all())


def _claim_expand(run: Run) -> Callable[[], bool]:
    return lambda: (
        steps.step_execute(run_id=run.pk, name="expand").status == "succeeded"
    )


def _finish_aggregate(run: Run) -> Callable[[], bool]:
    for name in services.step_names(PERSONAS)[:-1]:
        steps.step_execute(run_id=run.pk, name=name)
    aggregate = run.steps.get(name="aggregate")
    run.steps.filter(pk=aggregate.pk).update(status="running", attempts=1)
    close = {"status": Run.Status.SUCCEEDED, "result": {"x": 1}}
    return lambda: steps._finish(aggregate, 1, status="succeeded", close=close)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("prepare", [_claim_expand, _finish_aggregate])
def test_a_folded_write_waits_for_a_run_being_cancelled_without_deadlock(
    scripted, prepare
) -> None:
    """A folded statement locks the run's row before its steps', as cancel does."""
    import threading

    import psycopg
    from django.db import connection

    from conftest import database_url, wait_for

    if connection.vendor != "postgresql":
        pytest.skip("the folded statements are PostgreSQL's; SQLite has one writer")
    scripted()
    run = _run()
    write = prepare(run)  # everything before the write, committed
    done = []

    def in_worker() -> None:
        try:
            done.append(write())
        finally:
            connection.close()

    with psycopg.connect(database_url()) as cancel:
        # run_finish's order for a cancel: the run, then its steps.
        cancel.execute(
            "UPDATE pipeline_run SET status = 'cancelled' WHERE id = %s", [run.pk]
        )
        worker = threading.Thread(target=in_worker)
        worker.start()
        wait_for(
            lambda: cancel.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            ).fetchone()[0]
        )
        cancel.execute(
            "UPDATE pipeline_stepprogress SET status = 'skipped'"
            " WHERE run_id = %s AND status IN ('pending', 'running')",
            [run.pk],
        )
        cancel.commit()
        worker.join(30)
    assert done == [False]  # the cancel won; the late write changed nothing
    run.refresh_from_db()
    assert run.status == Run.Status.CANCELLED and run.result is None


def test_offline_echo_provider_runs_the_whole_pipeline(settings) -> None:
    """`make run`'s default provider: every step gets a valid, marked answer."""
    settings.AI_PROVIDER, settings.AI_FALLBACK = "echo", []
    run = _run()
    assert set(_all_steps(run).values()) == {"succeeded"}
    run.refresh_from_db()
    assert run.status == "succeeded"
    assert run.result["consensus"]["verdict"] in ("approve", "revise", "reject")
    brief = run.steps.get(name="expand").output
    assert brief["title"].startswith("(offline echo)")
    # one model call a step: no repair was needed
    assert AICall.objects.filter(provider="echo").count() == len(run.steps.all())


def test_offline_instances_are_valid_against_every_step_schema() -> None:
    import jsonschema

    from conversations.providers.echo import offline_instance
    from pipeline.prompts import AGGREGATE_SCHEMA, EXPAND_SCHEMA

    for schema in (EXPAND_SCHEMA, REVIEW_SCHEMA, AGGREGATE_SCHEMA):
        jsonschema.validate(offline_instance(schema), schema)
