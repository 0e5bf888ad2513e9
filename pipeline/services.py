"""Create, start, aggregate, finish, cancel, resume and reap pipeline runs."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from celery import chain, chord
from celery.canvas import Signature
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone
from kombu.exceptions import OperationalError as BrokerError

from vocoeng.models import Tenant

from . import prompts, queries
from .models import Run, StepProgress
from .steps import (
    AGGREGATE,
    EXPAND,
    REVIEW_PREFIX,
    Outcome,
    _finish,
    min_reviews,
    step_hard_limit,
)
from .structured import generate_json

logger = logging.getLogger(__name__)


def step_names(personas: list[str]) -> list[str]:
    """Return the step names of a run with ``personas``, in order."""
    return [EXPAND, *(f"{REVIEW_PREFIX}{p}" for p in personas), AGGREGATE]


def run_create(
    *,
    tenant: Tenant,
    idea: str,
    personas: list[str] | None = None,
    idempotency_key: str | None = None,
    kind: str = "consensus",
) -> tuple[Run, bool]:
    """Create a run with its steps, once per idempotency key.

    Returns the run and whether it was created; the same key again returns
    the existing run (whatever its tenant asked the second time).
    """
    key = idempotency_key or None
    if key is not None:
        existing = Run.objects.filter(idempotency_key=key).first()
        if existing is not None:
            return existing, False
    personas = list(personas or settings.PIPELINE_DEFAULT_PERSONAS)
    try:
        with transaction.atomic():
            run = Run.objects.create(
                tenant=tenant,
                kind=kind,
                input={"idea": idea, "personas": personas},
                idempotency_key=key,
            )
            StepProgress.objects.bulk_create(
                StepProgress(run=run, name=name, position=i)
                for i, name in enumerate(step_names(personas))
            )
    except IntegrityError:
        # A concurrent request with the same key won the insert.
        existing = Run.objects.filter(idempotency_key=key).first()
        if existing is None:
            raise
        return existing, False
    return run, True


def run_canvas(*, run_id: Any, new: Run | None = None) -> Signature | None:
    """Return the Celery canvas from the run's first unfinished step.

    expand → chord(reviews, aggregate); finished steps are left out, so a
    resumed run never recomputes them. None when every step is finished.
    ``new``: the run, just created by run_create (every step pending), whose
    steps need not be read back.
    """
    from .tasks import aggregate, expand, review

    if new is not None:
        states = dict.fromkeys(
            step_names(new.input["personas"]), StepProgress.Status.PENDING
        )
    else:
        states = dict(
            StepProgress.objects.filter(run_id=run_id)
            .order_by("position")
            .values_list("name", "status")
        )
    if not states:
        return None
    timeout = settings.WORKER_STEP_TIMEOUT_SECONDS
    # Time limits are set per call (read lazily) and only bite in the prefork
    # pool; the thread pool ignores them, so steps also enforce a deadline.
    limits = {"soft_time_limit": timeout, "time_limit": step_hard_limit()}
    run = str(run_id)

    def unfinished(name: str) -> bool:
        return states[name] not in StepProgress.FINISHED

    reviews = [
        review.si(run_id=run, name=n).set(**limits)
        for n in states  # in position order
        if n.startswith(REVIEW_PREFIX) and unfinished(n)
    ]
    tail: Signature | None = None
    if unfinished(AGGREGATE) or reviews:
        body = aggregate.si(run_id=run, name=AGGREGATE).set(**limits)
        tail = chord(reviews, body) if reviews else body
    if unfinished(EXPAND):
        head = expand.si(run_id=run, name=EXPAND).set(**limits)
        return chain(head, tail) if tail is not None else head
    return tail


def run_enqueue(*, run: Run, reason: str = "created", new: bool = False) -> None:
    """Enqueue the run's canvas after the current transaction commits.

    ``new``: the run was just created by run_create (see run_canvas).
    """
    canvas = run_canvas(run_id=run.pk, new=run if new else None)
    if canvas is None:
        return
    transaction.on_commit(canvas.apply_async)
    logger.info("enqueued run=%s reason=%s", run.pk, reason)


def run_start(
    *,
    tenant: Tenant,
    idea: str,
    personas: list[str] | None = None,
    idempotency_key: str | None = None,
) -> tuple[Run, bool]:
    """Create the run (once per key) and enqueue it when it is new.

    The canvas goes out once the run is committed. When the broker refuses
    it, the new run is removed again (no worker can know it) and the broker's
    error propagates (the web answers 503, vocoeng.health): a retry with the
    same key starts afresh rather than finding a run nothing will ever
    execute. Inside a caller's transaction the enqueue happens at the
    caller's commit, as before.
    """
    outer = transaction.get_connection().in_atomic_block
    created = False
    try:
        with transaction.atomic():
            run, created = run_create(
                tenant=tenant,
                idea=idea,
                personas=personas,
                idempotency_key=idempotency_key,
            )
            if created:
                run_enqueue(run=run, new=True)
            else:
                logger.info("idempotent_skip run=%s reason=duplicate-key", run.pk)
    except BrokerError as exc:
        if not outer and created:
            Run.objects.filter(
                pk=run.pk, status=Run.Status.QUEUED, started_at__isnull=True
            ).delete()
            logger.error("run_not_enqueued run=%s error=%s", run.pk, exc)
        raise
    return run, created


def _reviews(steps: Iterable[StepProgress]) -> tuple[dict[str, Any], dict[str, str]]:
    ok: dict[str, Any] = {}
    failed: dict[str, str] = {}
    for step in steps:
        if not step.name.startswith(REVIEW_PREFIX):
            continue
        persona = step.name.removeprefix(REVIEW_PREFIX)
        if step.status == StepProgress.Status.SUCCEEDED:
            ok[persona] = step.output
        else:
            failed[persona] = step.error or step.status
    return ok, failed


def run_aggregate(
    *,
    run: Run,
    step: StepProgress,
    attempt: int,
    deadline: float,
    steps: dict[str, StepProgress],
    tenant: Tenant | None = None,
) -> Outcome:
    """Merge the succeeded reviews into the consensus and finish the run.

    ``steps`` are the run's steps as read before the claim (every review is
    finished by then). Goes ahead when at least ``min_reviews`` succeeded (the
    run is then ``partial`` if any failed); otherwise the run fails with the
    reasons. Raises StepError when the model call fails. ``tenant``: given
    when it has spend limits (its guard admits the model call).
    """
    ordered = sorted(
        (s for s in steps.values() if s.name.startswith(REVIEW_PREFIX)),
        key=lambda s: s.position,
    )
    ok, failed = _reviews(ordered)
    needed = min_reviews(len(ok) + len(failed))
    if len(ok) < needed:
        error = f"only {len(ok)} of {len(ok) + len(failed)} reviews succeeded"
        _finish(step, attempt, status=StepProgress.Status.SKIPPED, error=error)
        run_finish(
            run_id=run.pk,
            status=Run.Status.FAILED,
            error=f"{error}; {needed} required",
            context={"succeeded": sorted(ok), "required": needed, "failed": failed},
        )
        return Outcome("done", status=StepProgress.Status.SKIPPED, error=error)
    brief = steps[EXPAND].output
    answer = generate_json(
        prompt=prompts.aggregate_prompt(brief=brief, reviews=ok),
        schema=prompts.AGGREGATE_SCHEMA,
        step_id=step.pk,
        tenant_id=run.tenant_id,
        tenant=tenant,
        ref=f"run:{run.pk}:{AGGREGATE}",
        deadline=deadline,
    )
    result = {
        "consensus": answer.data,
        "brief": brief,
        "reviews": ok,
        "failed_reviews": failed,
    }
    # The step's outcome and the run's end together (one statement on
    # PostgreSQL): the run closes only if this attempt still held the step.
    if not _finish(
        step,
        attempt,
        status=StepProgress.Status.SUCCEEDED,
        output=answer.data,
        error="",
        provider=answer.provider,
        model=answer.model,
        close={
            "status": Run.Status.PARTIAL if failed else Run.Status.SUCCEEDED,
            "result": result,
            "error": f"{len(failed)} review(s) failed" if failed else "",
            "context": {"failed": failed} if failed else {},
        },
    ):
        logger.info(
            "idempotent_skip run=%s step=%s reason=claim-lost", run.pk, AGGREGATE
        )
        step.refresh_from_db()
        return Outcome("done", status=step.status)
    return Outcome("done", status=StepProgress.Status.SUCCEEDED, output=answer.data)


def run_finish(
    *,
    run_id: Any,
    status: str,
    result: Any = None,
    error: str = "",
    context: dict[str, Any] | None = None,
    step_error: str = "",
    running_to: str = StepProgress.Status.FAILED,
) -> bool:
    """Move an active run to a final ``status`` once; total its usage.

    Steps still pending are skipped; running ones are failed with
    ``step_error`` when given (the reaper), else left to their own fenced
    write. Returns whether this call finished the run.
    """
    now = timezone.now()
    with transaction.atomic():
        if not queries.run_close(
            run_id, finished=now, **run_close_values(status, result, error, context)
        ):
            return False
        queries.run_steps_close(
            run_id,
            from_status=StepProgress.Status.PENDING,
            to_status=StepProgress.Status.SKIPPED,
            error=f"run {status}",
            finished=now,
        )
        if step_error:
            queries.run_steps_close(
                run_id,
                from_status=StepProgress.Status.RUNNING,
                to_status=running_to,
                error=step_error,
                finished=now,
            )
    run_finished_log(run_id=run_id, status=status, error=error)
    return True


def run_close_values(
    status: str,
    result: Any = None,
    error: str = "",
    context: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Return what closing a run writes (queries.run_close's arguments)."""
    return {
        "status": status,
        "result": result,
        "error": error[:2000],
        "context": context or {},
    }


def run_finished_log(*, run_id: Any, status: str, error: str) -> None:
    """Log the end of a run: job_completed, or job_failed with its error."""
    if status in (Run.Status.SUCCEEDED, Run.Status.PARTIAL):
        logger.info("job_completed run=%s status=%s", run_id, status)
    else:
        logger.error("job_failed run=%s status=%s error=%s", run_id, status, error)


def run_cancel(*, run: Run) -> bool:
    """Cancel an active run; its tasks see the status and stop. Idempotent."""
    return run_finish(
        run_id=run.pk,
        status=Run.Status.CANCELLED,
        error="cancelled",
        step_error="cancelled",
        running_to=StepProgress.Status.SKIPPED,
    )


def run_resume(*, run_id: Any) -> Run | None:
    """Restart a run from its first unfinished step; finished steps stay.

    Failed, skipped and running steps go back to pending (a running step is
    assumed abandoned: call this after a worker died, or on a finished run),
    and so does the aggregate when any review does. Returns None for a run
    that succeeded (nothing to redo).
    """
    with transaction.atomic():
        run = Run.objects.select_for_update().filter(pk=run_id).first()
        if run is None or run.status == Run.Status.SUCCEEDED:
            return None
        steps = StepProgress.objects.filter(run=run)
        redo = steps.exclude(status=StepProgress.Status.SUCCEEDED)
        if redo.filter(name__startswith=REVIEW_PREFIX).exists():
            redo = redo | steps.filter(name=AGGREGATE)
        redo.update(
            status=StepProgress.Status.PENDING, finished_at=None, duration_ms=None
        )
        Run.objects.filter(pk=run.pk).update(
            status=Run.Status.QUEUED,
            result=None,
            error="",
            error_context={},
            started_at=timezone.now(),
            finished_at=None,
            attempts=run.attempts + 1,
        )
        run.refresh_from_db()
        run_enqueue(run=run, reason="resume")
    return run


def runs_reap(*, now: datetime | None = None) -> dict[str, int]:
    """Time out runs past WORKER_JOB_TIMEOUT_SECONDS; requeue abandoned steps.

    A step whose running claim is older than its hard limit belongs to a dead
    worker (on a broker that lost the message, nobody else will take it), so
    its run's canvas is enqueued again; the claims make that harmless.
    """
    now = now or timezone.now()
    cut = now - timedelta(seconds=settings.WORKER_JOB_TIMEOUT_SECONDS)
    overdue = Run.objects.filter(status__in=Run.ACTIVE).filter(
        Q(started_at__lt=cut) | Q(started_at__isnull=True, created_at__lt=cut)
    )
    timed_out = 0
    for run in overdue.only("pk", "started_at"):
        states = dict(
            StepProgress.objects.filter(run=run).values_list("name", "status")
        )
        if run_finish(
            run_id=run.pk,
            status=Run.Status.TIMED_OUT,
            error=f"job deadline of {settings.WORKER_JOB_TIMEOUT_SECONDS}s exceeded",
            context={
                "deadline_seconds": settings.WORKER_JOB_TIMEOUT_SECONDS,
                "steps": states,
            },
            step_error="job deadline exceeded",
        ):
            timed_out += 1
    stale = now - timedelta(seconds=step_hard_limit())
    requeued = 0
    abandoned = Run.objects.filter(
        status=Run.Status.RUNNING,
        steps__status=StepProgress.Status.RUNNING,
        steps__started_at__lt=stale,
    ).distinct()
    for run in abandoned:
        with transaction.atomic():
            run_enqueue(run=run, reason="abandoned-step")
        requeued += 1
    if timed_out or requeued:
        logger.warning("runs_reaped timed_out=%s requeued=%s", timed_out, requeued)
    return {"timed_out": timed_out, "requeued": requeued}
