"""Execute one step of a run: claim it, call the model, record the outcome.

A step is claimed with a conditional update (pending → running, or a running
claim older than the step's hard limit, left by a dead worker). The claim's
attempt number fences the final write, so a worker that lost its claim (to a
stale retake, a cancel or the reaper) cannot overwrite the step. A finished
step is never recomputed: a redelivered task gets its stored output back.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import connection
from django.utils import timezone

from vocoeng.models import Tenant

from . import prompts, queries
from .models import Run, StepProgress
from .structured import StepError, generate_json

logger = logging.getLogger(__name__)

EXPAND = "expand"
AGGREGATE = "aggregate"
REVIEW_PREFIX = "review:"


@dataclass
class Outcome:
    """What a step task should do next.

    ``action``: ``done`` (return ``status``), ``retry`` (the same step again
    after ``countdown``, counting a failure) or ``wait`` (another worker holds
    a step this one depends on: look again shortly).
    """

    action: str
    status: str = ""
    output: Any = None
    error: str = ""
    countdown: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def marker(self, name: str) -> dict[str, Any]:
        """Return the JSON the task returns (a chord never sees an exception)."""
        return {"step": name, "status": self.status, "error": self.error}


def step_hard_limit() -> int:
    """Return the seconds after which a running claim counts as abandoned."""
    return settings.WORKER_STEP_TIMEOUT_SECONDS + settings.PIPELINE_STEP_GRACE_SECONDS


def retry_backoff(failures: int) -> float:
    """Return the jittered wait before the retry after ``failures`` failures."""
    base = settings.RETRY_INITIAL_BACKOFF_SECONDS * (
        settings.RETRY_BACKOFF_MULTIPLIER**failures
    )
    return random.uniform(base / 2, base)


def min_reviews(total: int) -> int:
    """Return how many reviews must succeed for aggregation to go ahead."""
    configured = settings.PIPELINE_MIN_REVIEWS
    if configured <= 0:  # default: all but one
        return max(1, total - 1)
    return min(configured, total)


def _claim_request(name: str) -> queries.Claim:
    """Return the claim of step ``name``, with what it needs (_dependency_state)."""
    now = timezone.now()
    stale = now - timedelta(seconds=step_hard_limit())
    if name.startswith(REVIEW_PREFIX):
        return queries.Claim(name, now, stale, succeeded=EXPAND)
    if name == AGGREGATE:
        return queries.Claim(name, now, stale, unfinished_prefix=REVIEW_PREFIX)
    return queries.Claim(name, now, stale)


def _claimed(step: StepProgress, attempt: int, now: datetime) -> None:
    step.attempts, step.status, step.started_at = (
        attempt,
        StepProgress.Status.RUNNING,
        now,
    )


def _claim(step: StepProgress) -> int | None:
    """Claim ``step`` and return the attempt number, or None when not claimable."""
    now = timezone.now()
    attempt = queries.step_claim(
        step.pk, now=now, stale=now - timedelta(seconds=step_hard_limit())
    )
    if attempt is not None:
        _claimed(step, attempt, now)
    return attempt


def _finish(
    step: StepProgress,
    attempt: int,
    *,
    status: str,
    close: dict[str, Any] | None = None,
    **fields: Any,
) -> bool:
    """Write the step's outcome if this attempt still holds the claim.

    ``close``: then also finish the run (services.run_finish's arguments), in
    the same statement on PostgreSQL.
    """
    from . import services

    now = timezone.now()
    started = step.started_at or now
    values = {
        "status": status,
        "finished": now,
        "duration_ms": int((now - started).total_seconds() * 1000),
        **fields,
    }
    if close is None:
        return queries.step_write(step.pk, attempt, **values)
    if connection.vendor != "postgresql":
        if not queries.step_write(step.pk, attempt, **values):
            return False
        _completed(step, attempt, status)
        services.run_finish(run_id=step.run_id, **close)
        return True
    written, closed = queries.step_write_run_close(
        step.pk,
        attempt,
        step=values,
        run={
            "run_id": step.run_id,
            "finished": now,
            **services.run_close_values(**close),
        },
    )
    if written:
        _completed(step, attempt, status)
    if closed:
        services.run_finished_log(
            run_id=step.run_id, status=close["status"], error=close["error"]
        )
    return written


def _completed(step: StepProgress, attempt: int, status: str) -> None:
    if status == StepProgress.Status.SUCCEEDED:
        logger.info(
            "step_completed run=%s step=%s attempt=%s", step.run_id, step.name, attempt
        )


def _mark_run_running(run: Run) -> None:
    if run.status == Run.Status.RUNNING:
        return  # the common case: no write
    if queries.run_mark_running(run.pk, now=timezone.now()):
        logger.info("job_started run=%s attempt=%s", run.pk, run.attempts)


def _dependency_state(name: str, steps: dict[str, StepProgress]) -> str:
    """Return ``ready``, ``wait`` or ``blocked`` for the steps ``name`` needs.

    queries.Claim states the same conditions in SQL (_claim_request).
    """
    if name == EXPAND:
        return "ready"
    if name.startswith(REVIEW_PREFIX):
        expand = steps.get(EXPAND)
        if expand is None:
            return "blocked"
        if expand.status == StepProgress.Status.SUCCEEDED:
            return "ready"
        return "blocked" if expand.status in StepProgress.FINISHED else "wait"
    unfinished = [
        s
        for n, s in steps.items()
        if n.startswith(REVIEW_PREFIX) and s.status not in StepProgress.FINISHED
    ]
    return "wait" if unfinished else "ready"


def _needs(name: str) -> list[str] | None:
    """Return the steps that step ``name`` reads (None: all of them)."""
    if name == EXPAND:
        return [EXPAND]
    if name.startswith(REVIEW_PREFIX):
        return [name, EXPAND]
    return None  # aggregate: the brief and every review


def _not_runnable(
    run_id: Any,
    name: str,
    run: Run | None,
    step: StepProgress | None,
    steps: dict[str, StepProgress],
) -> Outcome | None:
    """Return why step ``name`` is not to run now, as read; None: claim it."""
    if run is None:
        logger.warning(
            "idempotent_skip run=%s step=%s reason=no-such-run", run_id, name
        )
        return Outcome("done", status="skipped", error="no such run")
    if step is None:
        logger.warning(
            "idempotent_skip run=%s step=%s reason=no-such-step", run_id, name
        )
        return Outcome("done", status="skipped", error="no such step")
    if step.status in StepProgress.FINISHED:
        logger.info(
            "idempotent_skip run=%s step=%s status=%s", run.pk, name, step.status
        )
        return Outcome("done", status=step.status, output=step.output, error=step.error)
    if run.status in Run.FINISHED:
        logger.info(
            "idempotent_skip run=%s step=%s run_status=%s", run.pk, name, run.status
        )
        return Outcome("done", status="skipped", error=f"run is {run.status}")
    dependency = _dependency_state(name, steps)
    if dependency == "wait":
        return Outcome("wait")
    if dependency == "blocked":
        return Outcome("done", status="skipped", error="expand did not succeed")
    return None


def step_execute(*, run_id: Any, name: str, failures: int = 0) -> Outcome:
    """Run step ``name`` of run ``run_id`` once, unless it is done or held."""
    from . import services  # run-level writes; services imports this module

    # One query for the run, its tenant's limits, the step and what it reads;
    # on PostgreSQL the same statement claims the step when it may run.
    claim = _claim_request(name)
    run, limited, steps, claimed = queries.step_context(
        run_id, _needs(name), claim=claim
    )
    step = steps.get(name)
    if claimed is not None and run is not None and step is not None:
        attempt, started = claimed
        _claimed(step, attempt, claim.now)
        if started:
            logger.info("job_started run=%s attempt=%s", run.pk, run.attempts)
    else:
        outcome = _not_runnable(run_id, name, run, step, steps)
        if outcome is not None:
            return outcome
        assert run is not None and step is not None  # _not_runnable checked
        # Claimable as read: claim it now (SQLite; or, on PostgreSQL, the
        # step changed after the read).
        attempt = _claim(step)
        if attempt is None:
            step.refresh_from_db()
            if step.status in StepProgress.FINISHED:
                logger.info(
                    "idempotent_skip run=%s step=%s reason=finished-meanwhile",
                    run.pk,
                    name,
                )
                return Outcome("done", status=step.status, output=step.output)
            return Outcome("wait")  # held by another worker: look again later
        _mark_run_running(run)
    brief = steps[EXPAND].output if name.startswith(REVIEW_PREFIX) else None
    logger.info("step_started run=%s step=%s attempt=%s", run.pk, name, attempt)
    deadline = time.monotonic() + settings.WORKER_STEP_TIMEOUT_SECONDS
    # The tenant row only for a tenant with a budget or a cap (its spend guard).
    tenant = run.tenant if limited else None
    try:
        if name == AGGREGATE:
            return services.run_aggregate(
                run=run,
                step=step,
                attempt=attempt,
                deadline=deadline,
                steps=steps,
                tenant=tenant,
            )
        output, provider, model = _compute(run, step, deadline, brief, tenant)
    except (StepError, SoftTimeLimitExceeded) as exc:
        return _failed(run, step, attempt, exc, failures)
    if not _finish(
        step,
        attempt,
        status=StepProgress.Status.SUCCEEDED,
        output=output,
        error="",
        provider=provider,
        model=model,
    ):
        logger.info("idempotent_skip run=%s step=%s reason=claim-lost", run.pk, name)
        step.refresh_from_db()
        return Outcome("done", status=step.status, output=step.output)
    _completed(step, attempt, StepProgress.Status.SUCCEEDED)
    return Outcome("done", status=StepProgress.Status.SUCCEEDED, output=output)


def _compute(
    run: Run,
    step: StepProgress,
    deadline: float,
    brief: Any = None,
    tenant: Tenant | None = None,
) -> tuple[dict[str, Any], str, str]:
    ref = f"run:{run.pk}:{step.name}"
    if step.name == EXPAND:
        prompt = prompts.expand_prompt(idea=run.input["idea"])
        schema = prompts.EXPAND_SCHEMA
    else:
        if brief is None:
            brief = StepProgress.objects.get(run=run, name=EXPAND).output
        persona = step.name.removeprefix(REVIEW_PREFIX)
        prompt = prompts.review_prompt(persona=persona, brief=brief)
        schema = prompts.REVIEW_SCHEMA
    answer = generate_json(
        prompt=prompt,
        schema=schema,
        step_id=step.pk,
        tenant_id=run.tenant_id,
        tenant=tenant,
        ref=ref,
        deadline=deadline,
    )
    return answer.data, answer.provider, answer.model


def _failed(
    run: Run, step: StepProgress, attempt: int, exc: BaseException, failures: int
) -> Outcome:
    """Put the step back for a retry within budget, else record its failure."""
    from . import services

    error = (
        "step soft time limit exceeded"
        if isinstance(exc, SoftTimeLimitExceeded)
        else str(exc)
    )[:2000]
    retryable = getattr(exc, "retryable", True)
    if retryable and failures < settings.MAX_RETRIES_PER_PERSONA:
        released = StepProgress.objects.filter(
            pk=step.pk, status=StepProgress.Status.RUNNING, attempts=attempt
        ).update(status=StepProgress.Status.PENDING, error=error)
        if released:
            countdown = retry_backoff(failures)
            logger.warning(
                "step_retry run=%s step=%s attempt=%s countdown=%.2f error=%s",
                run.pk,
                step.name,
                attempt,
                countdown,
                error,
            )
            return Outcome("retry", countdown=countdown, error=error)
    if not _finish(step, attempt, status=StepProgress.Status.FAILED, error=error):
        step.refresh_from_db()
        return Outcome("done", status=step.status, error=step.error)
    logger.error(
        "step_failed run=%s step=%s attempt=%s error=%s",
        run.pk,
        step.name,
        attempt,
        error,
    )
    if step.name in (EXPAND, AGGREGATE):
        services.run_finish(
            run_id=run.pk,
            status=Run.Status.FAILED,
            error=f"{step.name} failed: {error}",
            context={"step": step.name, "error": error, "attempts": attempt},
        )
    return Outcome("done", status=StepProgress.Status.FAILED, error=error)
