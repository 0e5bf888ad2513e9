"""Route a pipeline job (kind ``pipeline_job``) to the run's Celery canvas.

``{"run_id": "<uuid>"}`` starts (or nudges) a run created by the API;
``{"idea", "personas"?, "idempotency_key"?}`` creates one, once per key (the
``idempotency_key`` attribute when the body has none).
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from celery.canvas import Signature

from vocoeng.api import errors_text
from vocoeng.models import Tenant
from vocoeng.routing import PermanentMessageError
from vocoeng.services import tenant_get_default

from .models import Run
from .serializers import RunCreateSerializer
from .services import run_canvas, run_create

logger = logging.getLogger(__name__)


def _existing(run: Run) -> Signature | None:
    if run.status in Run.FINISHED:
        logger.info("idempotent_skip run=%s status=%s", run.pk, run.status)
        return None
    if run.status == Run.Status.RUNNING:
        # Its canvas is in flight; the reaper requeues abandoned steps.
        logger.info("idempotent_skip run=%s status=running", run.pk)
        return None
    # Still queued: the first enqueue may have been lost; the step claims make
    # a second canvas harmless.
    return run_canvas(run_id=run.pk)


def pipeline_job(*, data: Any, attributes: dict[str, str]) -> Signature | None:
    """Validate a job, create its run once, and return the canvas to enqueue."""
    if not isinstance(data, dict):
        raise PermanentMessageError("a pipeline job must be a JSON object")
    if "run_id" in data:
        try:
            run_id = uuid.UUID(str(data["run_id"]))
        except ValueError as exc:
            raise PermanentMessageError("run_id is not a UUID") from exc
        run = Run.objects.filter(pk=run_id).first()
        if run is None:
            raise PermanentMessageError(f"unknown run {run_id}")
        return _existing(run)
    payload = dict(data)
    if "idempotency_key" not in payload and attributes.get("idempotency_key"):
        payload["idempotency_key"] = attributes["idempotency_key"]
    serializer = RunCreateSerializer(data=payload)
    if not serializer.is_valid():
        raise PermanentMessageError(errors_text(serializer.errors))
    valid = serializer.validated_data
    tenant = tenant_get_default()
    if slug := attributes.get("tenant"):
        tenant = Tenant.objects.filter(slug=slug).first()
        if tenant is None:
            raise PermanentMessageError(f"unknown tenant {slug!r}")
    run, created = run_create(
        tenant=tenant,
        idea=valid["idea"],
        personas=valid.get("personas"),
        idempotency_key=valid.get("idempotency_key"),
    )
    if not created:
        return _existing(run)
    logger.info("enqueued run=%s reason=job", run.pk)
    return run_canvas(run_id=run.pk, new=run)
