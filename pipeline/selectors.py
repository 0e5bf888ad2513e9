"""Read runs: progress, and the runs a caller may see."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet

from .models import Run, StepProgress


def run_progress(*, run: Run) -> dict[str, Any]:
    """Return finished steps / all steps (uses prefetched steps when present)."""
    steps = list(run.steps.all())
    done = sum(1 for s in steps if s.status in StepProgress.FINISHED)
    total = len(steps)
    return {
        "finished": done,
        "total": total,
        "percent": round(100 * done / total) if total else 0,
    }


def run_list(
    *, user: Any, status: str | None = None, idempotency_key: str | None = None
) -> QuerySet[Run]:
    """Return the runs ``user`` may see: its key's tenant's, or all for staff."""
    qs = Run.objects.select_related("tenant").prefetch_related("steps")
    tenant = getattr(user, "tenant", None)
    if tenant is not None:
        qs = qs.filter(tenant=tenant)
    elif not getattr(user, "is_staff", False):
        return qs.none()
    if status:
        qs = qs.filter(status=status)
    if idempotency_key:
        qs = qs.filter(idempotency_key=idempotency_key)
    return qs.order_by("-created_at")
