"""Runs of the consensus pipeline and the progress of each of their steps."""

from __future__ import annotations

import uuid

from django.db import models

from vocoeng.models import Tenant


class Run(models.Model):
    """Record one pipeline job: its input, status, result, usage and cost."""

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        PARTIAL = "partial"
        FAILED = "failed"
        CANCELLED = "cancelled"
        TIMED_OUT = "timed_out"

    ACTIVE = (Status.QUEUED, Status.RUNNING)
    FINISHED = (
        Status.SUCCEEDED,
        Status.PARTIAL,
        Status.FAILED,
        Status.CANCELLED,
        Status.TIMED_OUT,
    )

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="runs")
    kind = models.CharField(max_length=32, default="consensus")
    status = models.CharField(
        max_length=16, choices=Status.choices, default=Status.QUEUED, db_index=True
    )
    input = models.JSONField(default=dict)
    result = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True)
    error_context = models.JSONField(default=dict, blank=True)
    # NULL when the client gave none: the unique constraint ignores NULLs.
    idempotency_key = models.CharField(
        max_length=255, null=True, blank=True, unique=True
    )
    attempts = models.PositiveIntegerField(default=1)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    total_tokens = models.PositiveIntegerField(default=0)
    cost = models.DecimalField(max_digits=12, decimal_places=6, default=0)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.kind} {self.id} ({self.status})"


class StepProgress(models.Model):
    """Record one step of a run: claim, attempts, timings, output or error."""

    class Status(models.TextChoices):
        PENDING = "pending"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        SKIPPED = "skipped"

    FINISHED = (Status.SUCCEEDED, Status.FAILED, Status.SKIPPED)

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="steps")
    name = models.CharField(max_length=96)
    position = models.PositiveSmallIntegerField()
    status = models.CharField(
        max_length=16, choices=Status.choices, default=Status.PENDING
    )
    attempts = models.PositiveSmallIntegerField(default=0)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    duration_ms = models.PositiveIntegerField(null=True, blank=True)
    output = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True)
    provider = models.CharField(max_length=32, blank=True)
    model = models.CharField(max_length=128, blank=True)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    total_tokens = models.PositiveIntegerField(default=0)
    cost = models.DecimalField(max_digits=12, decimal_places=6, default=0)

    class Meta:
        ordering = ["run", "position"]
        verbose_name = "step progress"
        verbose_name_plural = "step progress"
        constraints = [
            models.UniqueConstraint(fields=["run", "name"], name="step_run_name")
        ]
        indexes = [models.Index(fields=["status", "started_at"])]

    def __str__(self) -> str:
        return f"{self.name} ({self.status})"
