"""Celery tasks of the consensus pipeline: thin wrappers around the services.

expand → chord(review per persona, aggregate). Each task claims its step, so a
redelivered or duplicate task never recomputes a finished one. A review's
final failure is recorded and returned as a marker, never raised, so the
chord always reaches aggregate.
"""

from __future__ import annotations

from typing import Any

from celery import shared_task
from django.conf import settings

from vocoeng.queues import Queue

from . import services, steps


def _run_step(task: Any, run_id: str, name: str, failures: int) -> dict[str, Any]:
    outcome = steps.step_execute(run_id=run_id, name=name, failures=failures)
    if outcome.action == "wait":
        raise task.retry(countdown=settings.PIPELINE_WAIT_SECONDS)
    if outcome.action == "retry":
        raise task.retry(
            kwargs={"run_id": run_id, "name": name, "failures": failures + 1},
            countdown=outcome.countdown,
        )
    return outcome.marker(name)


# max_retries=None: the retry budget is MAX_RETRIES_PER_PERSONA, counted in the
# ``failures`` argument, because "wait" retries (a step held elsewhere) must
# not use it up. Time limits are set per call by services.run_canvas.
_STEP_OPTIONS: dict[str, Any] = {
    "bind": True,
    "acks_late": True,
    "reject_on_worker_lost": True,
    "route": Queue.AI,
    "max_retries": None,
}


# Only the chord's header (the reviews) needs its results stored: the chord
# counts them. expand and aggregate are read from StepProgress, never from the
# result backend, so storing theirs would be two wasted writes per run.
@shared_task(name="pipeline.expand", ignore_result=True, **_STEP_OPTIONS)
def expand(self, run_id: str, name: str = "expand", failures: int = 0) -> dict:
    """Expand the run's idea into a brief."""
    return _run_step(self, run_id, name, failures)


@shared_task(name="pipeline.review", **_STEP_OPTIONS)
def review(self, run_id: str, name: str, failures: int = 0) -> dict:
    """Review the brief as one persona; a final failure returns a marker."""
    return _run_step(self, run_id, name, failures)


@shared_task(name="pipeline.aggregate", ignore_result=True, **_STEP_OPTIONS)
def aggregate(self, run_id: str, name: str = "aggregate", failures: int = 0) -> dict:
    """Merge the reviews into the consensus and finish the run."""
    return _run_step(self, run_id, name, failures)


@shared_task(name="pipeline.reap", acks_late=True, route=Queue.DEFAULT)
def reap() -> dict[str, int]:
    """Time out overdue runs and requeue abandoned steps (celery beat)."""
    return services.runs_reap()
